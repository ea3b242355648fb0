#!/bin/bash
# DGPO vs Flow-GRPO on the toy world on one GPU: `dgpo bench` with a GPU-sized batch.
#
# On 2 CPU cores Flow-GRPO never reaches DGPO's held-out level within 3x DGPO's time (docs/bench/report.md),
# so the time ratio there is a bound. The toy network is small enough that a GPU should run a larger batch
# for little more time per epoch (not yet measured: the raw results record steps and images), so here every
# arm gets 4x the demo's images per epoch (16 prompts x 16 images), where Flow-GRPO's policy gradient is less
# noisy; both arms see the same images per epoch, as in the CPU bench. The raw results record the GPU's
# name; report.md, the curves and raw JSON land in $OUT/race.
#
# Run from the repository root.
# Usage: bash benchmarks/gpu/toy_race_gpu.sh
#          (2 seeds x (30 + 90) s of training plus evals and start-up per run)
#        BUDGET=2 SEEDS=1 EVAL_EVERY=1 PER_CAT=2 bash benchmarks/gpu/toy_race_gpu.sh
#          (CPU smoke run, about 1 min on 2 cores)
# A killed run loses nothing finished: rerun the same command and `dgpo bench` resumes from $OUT/race/raw.
set -euo pipefail
OUT=${OUT:-runs/toy_race_gpu}
BUDGET=${BUDGET:-30}          # DGPO's training seconds per run; Flow-GRPO trains 3x as long
SEEDS=${SEEDS:-2}
EVAL_EVERY=${EVAL_EVERY:-4}
PER_CAT=${PER_CAT:-24}        # eval prompts (and at least as many images) per category
PY=${PY:-python}              # the Python that has dgpo installed (e.g. .venv/bin/python)
mkdir -p "$OUT"
# the full log (progress bars included) goes to $OUT/bench.log; the console gets everything but the bars
"$PY" -m dgpo.cli bench --out "$OUT/race" --arms dgpo,flow_grpo --seeds "$SEEDS" --budget-s "$BUDGET" \
  --eval-every-s "$EVAL_EVERY" --eval-per-category "$PER_CAT" \
  --set train.prompts_per_epoch=16 --set train.group_size=16 --set train.batch_size=256 \
  --set train.rollout_batch_size=256 2>&1 | tee "$OUT/bench.log" | tr '\r' '\n' | grep -v -e "epoch \[" -e "batch\]" || true
test -f "$OUT/race/report.md"
