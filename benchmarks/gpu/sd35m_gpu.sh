#!/bin/bash
# A GPU session's whole check in one call: `python -m benchmarks.gpu.sd35m_gpu --compare` (official
# structures beside dgpo's options, FP8 included) under a time budget, the JSON and log in $OUT, and for the
# two first compiled dgpo arms one more epoch under torch.profiler (the GPU's busy share of an iteration;
# top kernels in $OUT/sd35m_gpu.<arm>.profile.txt).
#
# On a GPU machine without a package index that has torch and transformers but not diffusers, peft or
# torchao, put their wheels in .whl/ first (on a machine with a package index:
#   pip download --no-deps -d .whl diffusers==0.42.1 peft==0.21.2 torchao==0.18.0 importlib_metadata
# ) and carry .whl along; they are installed into $SITE for this run only.
#
# Run from the repository root.
# Usage: OUT=/some/dir bash benchmarks/gpu/sd35m_gpu.sh
#          (about 7-9 minutes on an H200, most of it compiling; official_flow_grpo comes last and is
#          usually skipped: its ratio to DGPO was measured in Nov 2026)
#        ARMS=official_dgpo,dgpo_fp8_compile bash benchmarks/gpu/sd35m_gpu.sh
#        PY=.venv/bin/python EXTRA=--tiny ARMS=official_dgpo,dgpo_fp8 bash benchmarks/gpu/sd35m_gpu.sh
#          (CPU smoke run)
set -euo pipefail
OUT=${OUT:-bench_results}
SITE=${SITE:-/tmp/dgpo-site}
BUDGET=${BUDGET:-360}     # seconds: arms that would start later are skipped (a compiled arm with its profile
                          # takes about 4 minutes: keep BUDGET + 240 under the call's limit)
PROFILE=${PROFILE-dgpo_bf16_compile_rb,dgpo_fp8_compile_rb}    # one more epoch each under torch.profiler ('' : none)
PY=${PY:-python}
mkdir -p "$OUT"
if ! "$PY" -c "import diffusers, peft, torchao" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no diffusers/peft/torchao here and no wheels in .whl/" >&2; exit 2; }
  "$PY" -m pip install -q --no-deps --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null || true
select=(--compare)
[ -n "${ARMS:-}" ] && select=(--arms "$ARMS")
"$PY" -m benchmarks.gpu.sd35m_gpu "${select[@]}" ${EXTRA:-} --budget-s "$BUDGET" --profile "$PROFILE" --out "$OUT/sd35m_gpu.json" 2>&1 | tee "$OUT/sd35m_gpu.log"
