#!/bin/bash
# A GPU session's Wan check in one call: `python -m benchmarks.gpu.wan_gpu` (Flow-GRPO's Wan2.1 structure, the
# official DGPO structure and dgpo's Trainer on configs/wan21_1.3b_ocr.yaml, each with its peak memory) under a
# time budget, the JSON and log in $OUT. Wheels as benchmarks/gpu/sd35m_gpu.sh: on a machine without diffusers
# or peft, put them in .whl/ first and carry .whl along; they go into $SITE for this run only.
#
# Run from the repository root.
# Usage: OUT=/some/dir bash benchmarks/gpu/wan_gpu.sh      (estimated 6-8 minutes on an H100 / H200: never run yet)
#        ARMS=official_flow_grpo,dgpo_bf16_compile_rb bash benchmarks/gpu/wan_gpu.sh
#        PY=.venv/bin/python EXTRA=--tiny bash benchmarks/gpu/wan_gpu.sh      (CPU smoke run)
set -euo pipefail
OUT=${OUT:-bench_results}
SITE=${SITE:-/tmp/dgpo-site}
BUDGET=${BUDGET:-420}     # seconds: arms that would start later are skipped (keep BUDGET + 180 under the call's limit)
PY=${PY:-python}
mkdir -p "$OUT"
if ! "$PY" -c "import diffusers, peft" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no diffusers/peft here and no wheels in .whl/" >&2; exit 2; }
  "$PY" -m pip install -q --no-deps --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null || true
select=()
[ -n "${ARMS:-}" ] && select=(--arms "$ARMS")
"$PY" -m benchmarks.gpu.wan_gpu "${select[@]}" ${EXTRA:-} --budget-s "$BUDGET" --out "$OUT/wan_gpu.json" 2>&1 | tee "$OUT/wan_gpu.log"
