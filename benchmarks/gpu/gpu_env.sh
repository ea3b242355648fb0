# Sourced by the GPU session scripts (run from the repository root): diffusers and torchao (and peft)
# from wheels in .whl/ where the machine lacks them, installed into $SITE for this run only; src/ on
# PYTHONPATH; the card's name, memory and driver in $OUT/gpu.txt.
#
# The GPU machines here have torch, transformers, accelerate and peft but not diffusers or torchao. On a
# machine with a package index (Python 3.12 wheels for the GPU machine's python3):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 peft==0.21.2 torchao==0.18.0 importlib_metadata
# and carry .whl along (keep it out of git: echo /.whl/ >> .git/info/exclude).
SITE=${SITE:-/tmp/dgpo-site}
PY=${PY:-python3}
mkdir -p "$OUT"
if ! "$PY" -c "import diffusers, peft, torchao" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no diffusers/peft/torchao here and no wheels in .whl/" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null || true
