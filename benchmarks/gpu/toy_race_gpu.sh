#!/bin/bash
# DGPO vs Flow-GRPO (its official loop, and at its better learning rate 1e-4) on the toy world on one GPU:
# `dgpo bench` with a GPU-sized batch, >= 2 seeds.
#
# On 2 CPU cores Flow-GRPO never reaches DGPO's held-out level within 3x DGPO's time (docs/bench/report.md),
# so the time ratio there is a bound. The toy network is small enough that a GPU runs a larger batch for
# little more time per epoch, so here every arm gets 4x the demo's images per epoch (16 prompts x 16
# images), where Flow-GRPO's policy gradient is less noisy; all arms see the same images per epoch, as in
# the CPU bench, and Flow-GRPO trains 3x DGPO's budget. The report ($OUT/race/report.md) gives the time
# ratio at the level Flow-GRPO ends at (which both reach if DGPO passes it) with its 10th-90th percentile
# interval over seed bootstraps, per Flow-GRPO arm; the raw results record the GPU's name.
#
# Run from the repository root.
# Usage: bash benchmarks/gpu/toy_race_gpu.sh
#          (2 seeds x (30 + 90 + 90) s of training plus evals and start-up per run: about 8 minutes)
#        BUDGET=12 bash benchmarks/gpu/toy_race_gpu.sh      (about 4 minutes: run_all_gpu.sh's part)
#        BUDGET=2 SEEDS=1 EVAL_EVERY=1 PER_CAT=2 PROMPTS=2 GROUP=4 ARMS=dgpo,flow_grpo PY=.venv/bin/python \
#          bash benchmarks/gpu/toy_race_gpu.sh    (CPU smoke run, about 1 min on 2 cores)
# A killed run loses nothing finished: rerun the same command and `dgpo bench` resumes from $OUT/race/raw.
set -euo pipefail
OUT=${OUT:-runs/toy_race_gpu}
ARMS=${ARMS:-dgpo,flow_grpo,flow_grpo_lr1e-4}
BUDGET=${BUDGET:-30}          # DGPO's training seconds per run; the Flow-GRPO arms train 3x as long
SEEDS=${SEEDS:-2}
EVAL_EVERY=${EVAL_EVERY:-4}
PER_CAT=${PER_CAT:-24}        # eval prompts (and at least as many images) per category
PROMPTS=${PROMPTS:-16}        # prompts x images per prompt per epoch, all in one rollout and training batch
GROUP=${GROUP:-16}
PY=${PY:-python3}             # the Python that has dgpo installed (or src/ on PYTHONPATH, e.g. .venv/bin/python)
mkdir -p "$OUT"
# the full log (progress bars included) goes to $OUT/bench.log; the console gets everything but the bars
"$PY" -m dgpo.cli bench --out "$OUT/race" --arms "$ARMS" --seeds "$SEEDS" --budget-s "$BUDGET" \
  --eval-every-s "$EVAL_EVERY" --eval-per-category "$PER_CAT" \
  --set train.prompts_per_epoch="$PROMPTS" --set train.group_size="$GROUP" --set train.batch_size=$((PROMPTS * GROUP)) \
  --set train.rollout_batch_size=$((PROMPTS * GROUP)) 2>&1 | tee "$OUT/bench.log" | tr '\r' '\n' \
  | grep --line-buffered -v -e "epoch \[" -e "batch\]" || true
test -f "$OUT/race/report.md"
