#!/bin/bash
# A GPU session's whole check, each part under its own time limit, everything in $OUT (flat: the device
# tool brings back 8 files, 2 folders deep at most):
#   levers  benchmarks/gpu/levers_gpu.py: official DGPO structure vs dgpo vs dgpo + each speed lever (CUDA
#           graphs, FP8 attention, cast-once FP8, per-call FP8, all together, max-autotune last), seconds
#           per sample, ratios, peak memory  -> levers.json, levers.log
#   race    benchmarks/gpu/toy_race_gpu.sh: DGPO vs Flow-GRPO (and at lr 1e-4) on the toy, GPU-sized batches,
#           2 seeds, time ratio with its bootstrap interval  -> race_report.md, race_raw.tar.gz, race.log
#   wan     benchmarks/gpu/wan_gpu.py (where it exists): DGPO iterations on a Wan2.1-1.3B-sized transformer
#           -> wan.json, wan.log
#   summary.txt: the card (nvidia-smi), each part's exit status and seconds (124: hit its limit; what it
#           wrote before stays).
#
# About 12.5 minutes in all on an H100 / H200 (LEVERS_S + RACE_S + WAN_S). A device call may run 10 minutes,
# so run it as two calls, the second right after the first (a machine stays warm for 30 s):
#   PARTS=levers bash benchmarks/gpu/run_all_gpu.sh          (7.5 minutes)
#   PARTS=race,wan bash benchmarks/gpu/run_all_gpu.sh        (5 minutes)
# LEVER_ARMS=a,b picks the levers' arms (default: levers_gpu.py's order; the later ones are skipped when
# the part's budget runs out: run them in a later call with PARTS=levers LEVER_ARMS=dgpo,...).
# Wheels the machine lacks (diffusers, torchao) come from .whl/: benchmarks/gpu/gpu_env.sh says how.
# CPU smoke run (about 3 minutes on 2 cores):
#   PY=.venv/bin/python TINY=1 OUT=/tmp/all bash benchmarks/gpu/run_all_gpu.sh
set -uo pipefail              # not -e: a part that fails or hits its limit must not stop the others
OUT=${OUT:-bench_results/gpu_all}
PARTS=${PARTS:-levers,race,wan}
LEVERS_S=${LEVERS_S:-450}     # each part's wall-clock limit (seconds)
RACE_S=${RACE_S:-200}
WAN_S=${WAN_S:-100}
RACE_BUDGET=${RACE_BUDGET:-10}  # DGPO's training seconds per race run (Flow-GRPO's arms: 3x)
LEVER_ARMS=${LEVER_ARMS:-}
TINY=${TINY:-}
source benchmarks/gpu/gpu_env.sh
tiny=(); [ -n "$TINY" ] && tiny=(--tiny --epochs 2 --iters 1)
arms=(); [ -n "$LEVER_ARMS" ] && arms=(--arms "$LEVER_ARMS")
{ cat "$OUT/gpu.txt" 2>/dev/null; rm -f "$OUT/gpu.txt"; echo "parts: $PARTS"; } >> "$OUT/summary.txt"

part() {  # name limit_s command...: run it under its limit, log to $OUT/<name>.log, note the outcome
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit} s)"
  timeout -k 15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -n 12 "$OUT/$name.log"
}

case ",$PARTS," in *,levers,*)
  # an arm that starts after the budget is skipped: a compiled SD3.5-M arm takes 2-4 minutes (an FP8 one
  # ~200 s of compiling), so the budget leaves it that much of the part's limit
  part levers "$LEVERS_S" "$PY" -m benchmarks.gpu.levers_gpu "${tiny[@]}" "${arms[@]}" \
    --budget-s $((LEVERS_S - 190)) --out "$OUT/levers.json";;
esac
case ",$PARTS," in *,race,*)
  race=${RACE_DIR:-/tmp/dgpo_race_gpu}
  if [ -n "$TINY" ]; then
    part race "$RACE_S" env OUT="$race" PY="$PY" BUDGET=2 SEEDS=1 EVAL_EVERY=1 PER_CAT=2 PROMPTS=2 GROUP=4 \
      ARMS=dgpo,flow_grpo bash benchmarks/gpu/toy_race_gpu.sh
  else
    part race "$RACE_S" env OUT="$race" PY="$PY" BUDGET="$RACE_BUDGET" bash benchmarks/gpu/toy_race_gpu.sh
  fi
  cp "$race/race/report.md" "$OUT/race_report.md" 2>/dev/null
  tar -czf "$OUT/race_raw.tar.gz" -C "$race/race" raw 2>/dev/null;;
esac
case ",$PARTS," in *,wan,*)
  if [ -f benchmarks/gpu/wan_gpu.py ]; then
    part wan "$WAN_S" "$PY" -m benchmarks.gpu.wan_gpu "${tiny[@]:0:1}" --budget-s $((WAN_S * 2 / 3)) \
      --out "$OUT/wan.json"
  else
    echo "wan: benchmarks/gpu/wan_gpu.py not here, skipped" | tee -a "$OUT/summary.txt"
  fi;;
esac
cat "$OUT/summary.txt"
