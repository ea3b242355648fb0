#!/bin/bash
# A GPU session's whole check in one call: `python -m benchmarks.gpu.sd35m_gpu --compare` (official
# structures beside dgpo's options, FP8 included) under a time budget, the JSON and log in $OUT, and for the
# two first compiled dgpo arms one more epoch under torch.profiler (the GPU's busy share of an iteration;
# top kernels in $OUT/sd35m_gpu.<arm>.profile.txt).
#
# Wheels the machine lacks (diffusers, torchao) come from .whl/: benchmarks/gpu/gpu_env.sh says how.
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
BUDGET=${BUDGET:-360}     # seconds: arms that would start later are skipped (a compiled arm with its profile
                          # takes about 4 minutes: keep BUDGET + 240 under the call's limit)
PROFILE=${PROFILE-dgpo_bf16_compile_rb,dgpo_fp8_compile_rb}    # one more epoch each under torch.profiler ('' : none)
source benchmarks/gpu/gpu_env.sh
select=(--compare)
[ -n "${ARMS:-}" ] && select=(--arms "$ARMS")
"$PY" -m benchmarks.gpu.sd35m_gpu "${select[@]}" ${EXTRA:-} --budget-s "$BUDGET" --profile "$PROFILE" --out "$OUT/sd35m_gpu.json" 2>&1 | tee "$OUT/sd35m_gpu.log"
