#!/usr/bin/env bash
# The whole comparison, end to end: prepare -> pre-train the Post-LN baseline, Pre-LN (no PLD) and
# PLD, each over several seeds -> fine-tune each run -> report (means and spread over seeds).
# Rerunning reuses every finished stage; an interrupted pre-training run resumes from its last
# checkpoint.
#
#   scripts/reproduce.sh             # SCALE=demo: offline, CPU, ~20 min on 2 cores (what `make reproduce` runs)
#   SCALE=base scripts/reproduce.sh  # the paper's BERT-base runs on all local GPUs (see README for hardware/time)
#
# Demo: every arm gets the same executed-FLOPs budget (configs/demo.toml, train.max_flops) and its
# own best learning rate from scripts/sweep_lr.py; two seeds for the comparison the paper makes
# (Post-LN baseline vs PLD), one for the Pre-LN reference: six runs would not fit in 20 minutes on
# 2 cores. Every step (a pre-training or a fine-tuning run) gets one CPU thread and steps go
# JOBS = nproc at a time from one queue (on 2 cores two one-thread runs have ~1.45x the throughput
# of one two-thread run): a Post-LN run starts beside a PLD run, so both see the same conditions,
# and a fine-tuning run starts as soon as a core is free and its pre-training run has finished.
set -euo pipefail
SCALE=${SCALE:-demo}
RUNS=${RUNS:-runs/$SCALE}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$(date +%s)

if [ "$SCALE" = demo ]; then
  export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1  # everything the demo needs is on this machine
  DATA=${DATA:-data/demo}
  SEEDS=${SEEDS:-1 2}
  PRELN_SEEDS=${PRELN_SEEDS:-1}
  JOBS=${JOBS:-$(nproc)}
  PRETRAIN=(bertpld pretrain)
  # one epoch; lr 1e-3 measured best for this small model (3e-4: 59.9%, 1e-3: 67.0%, 2e-3 diverged)
  FINETUNE_ARGS=(--task rt-polarity --epochs 1 --lr 1e-3)
  say "prepare: offline demo corpus (enwiki dump excerpt + Shakespeare) -> $DATA"
  bertpld prepare --out "$DATA" --vocab-size 4096 --set prepare.val_fraction=0.03
  declare -A CONFIG=([postln]=demo [preln]=demo [pld]=demo)
  # each arm's best stable lr at this budget (scripts/sweep_lr.py; table in the README)
  declare -A FLAGS=(
    [postln]="--norm post --set train.lr=3e-3"
    [preln]="--norm pre --set train.lr=4e-3"
    [pld]="--pld --set train.lr=4e-3"
  )
  THREADS=1  # per step
elif [ "$SCALE" = base ]; then
  DATA=${DATA:-data/wiki-books}
  SEEDS=${SEEDS:-1}
  PRELN_SEEDS=$SEEDS
  JOBS=1
  NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
  PRETRAIN=(torchrun --standalone --nproc-per-node "$NGPU" -m bertpld.cli pretrain)
  FINETUNE_ARGS=(--task all --seeds 5 --data-dir "${GLUE_DIR:?set GLUE_DIR to a glue_data directory, or unset HF_HUB_OFFLINE to use the hub}")
  say "prepare: Wikipedia + BookCorpus -> $DATA"
  bertpld prepare wikipedia bookcorpus --out "$DATA"
  declare -A CONFIG=([postln]=bert-base-postln [preln]=bert-base-preln [pld]=bert-base-pld)
  declare -A FLAGS=([postln]="" [preln]="" [pld]="")
  THREADS=""
else
  echo "error: SCALE=$SCALE: expected demo or base" >&2
  exit 2
fi

if ! [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: JOBS=$JOBS: expected a positive integer (steps at a time)" >&2
  exit 2
fi

# The pre-training runs, in the order they are started: by default postln-s1, pld-s1, postln-s2,
# pld-s2, preln-s1.
order=()
for seed in $SEEDS; do order+=("postln-s$seed" "pld-s$seed"); done
for seed in $PRELN_SEEDS; do order+=("preln-s$seed"); done

pretrain_one() {  # NAME: fresh, resumed or already done; output in $RUNS/NAME.log
  local name=$1 arm=${1%-s*} seed=${1##*-s} out="$RUNS/$1"
  if [ -f "$out/summary.json" ]; then
    echo "pretrain $name: done already"
    return 0
  fi
  echo "pretrain $name -> $out (log: $RUNS/$name.log)"
  # shellcheck disable=SC2086
  "${PRETRAIN[@]}" --config "${CONFIG[$arm]}" --data "$DATA" --out "$out" --resume --seed "$seed" \
    ${FLAGS[$arm]} ${THREADS:+--set impl.threads=$THREADS} >"$RUNS/$name.log" 2>&1
  tail -n 1 "$RUNS/$name.log"
}

finetune_one() {
  local out="$RUNS/$1" task=${FINETUNE_ARGS[1]}
  if [ -f "$out/finetune/$task/results.json" ] || [ -f "$out/finetune/glue.json" ]; then
    echo "finetune $1: done already"
    return 0
  fi
  echo "finetune $1 ($task; log: $RUNS/$1.finetune.log)"
  bertpld finetune --from "$out" "${FINETUNE_ARGS[@]}" ${THREADS:+--set impl.threads=$THREADS} \
    >"$RUNS/$1.finetune.log" 2>&1
  tail -n 1 "$RUNS/$1.finetune.log"
}

# One queue, JOBS steps at a time: every pre-training run, then each fine-tuning run once its
# pre-training run has finished (waiting for that if it still runs). Stops at the first failure.
declare -A PID
running=0
failed=0
reap() {  # wait for any one step
  wait -n || failed=$?
  running=$((running - 1))
}
queue() {  # pretrain|finetune NAME
  while [ "$running" -ge "$JOBS" ]; do reap; done
  if [ "$failed" != 0 ]; then return; fi
  if [ "$1" = finetune ]; then
    while kill -0 "${PID[$2]}" 2>/dev/null; do reap; done  # its pre-training run still runs
    if [ "$failed" != 0 ]; then return; fi
  fi
  "${1}_one" "$2" &
  PID[$2]=$!
  running=$((running + 1))
}

mkdir -p "$RUNS"
say "pretrain (${#order[@]} runs) and finetune, $JOBS at a time"
for name in "${order[@]}"; do queue pretrain "$name"; done
for name in "${order[@]}"; do queue finetune "$name"; done
while [ "$running" -gt 0 ]; do reap; done
if [ "$failed" != 0 ]; then
  echo "error: a run failed (exit $failed); see the logs in $RUNS" >&2
  exit "$failed"
fi

say "report"
reported=()
for seed in $SEEDS; do reported+=("$RUNS/postln-s$seed"); done
for seed in $PRELN_SEEDS; do reported+=("$RUNS/preln-s$seed"); done
for seed in $SEEDS; do reported+=("$RUNS/pld-s$seed"); done
bertpld report "${reported[@]}" --out "$RUNS/report"
say "done in $(( $(date +%s) - start )) s: open $RUNS/report/report.html"
