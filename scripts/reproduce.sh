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
# 2 cores. Runs go two at a time, one CPU thread each (on 2 cores that is ~1.6x the throughput of
# one run on two threads), a Post-LN run beside a PLD run so that both see the same conditions; a
# run alone gets every core.
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
  JOBS=${JOBS:-2}
  PRETRAIN=(bertpld pretrain)
  # one epoch; lr 1e-3 measured best for this small model (3e-4: 59.9%, 1e-3: 67.0%, 2e-3 diverged)
  FINETUNE_ARGS=(--task rt-polarity --epochs 1 --lr 1e-3)
  say "prepare: offline demo corpus (enwiki dump excerpt + Shakespeare) -> $DATA"
  bertpld prepare --out "$DATA" --vocab-size 4096 --set prepare.val_fraction=0.03
  declare -A CONFIG=([postln]=demo [preln]=demo [pld]=demo)
  # each arm's best stable lr at this budget (scripts/sweep_lr.py; table in the README)
  declare -A FLAGS=(
    [postln]="--norm post --set train.lr=3e-3"
    [preln]="--norm pre --set train.lr=3e-3"
    [pld]="--pld --set train.lr=3e-3"
  )
  THREADS=1  # per run, set for each batch of runs (in_batches)
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

# The runs, in the order they are started, JOBS at a time: by default (postln-s1, pld-s1),
# (postln-s2, pld-s2), then preln-s1 alone.
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

in_batches() {  # FUNCTION NAME...: JOBS at a time; stop at the first failure
  local fn=$1
  shift
  local names=("$@") i pid status=0
  for ((i = 0; i < ${#names[@]}; i += JOBS)); do
    local pids=() batch=("${names[@]:i:JOBS}")
    if [ -n "$THREADS" ]; then  # the cores shared by the runs of this batch
      THREADS=$(( $(nproc) / ${#batch[@]} > 0 ? $(nproc) / ${#batch[@]} : 1 ))
    fi
    for name in "${batch[@]}"; do
      "$fn" "$name" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    if [ "$status" != 0 ]; then
      echo "error: a run failed (exit $status); see the logs in $RUNS" >&2
      exit "$status"
    fi
  done
}

mkdir -p "$RUNS"
say "pretrain: ${#order[@]} runs, $JOBS at a time"
in_batches pretrain_one "${order[@]}"
say "finetune"
in_batches finetune_one "${order[@]}"

say "report"
reported=()
for seed in $SEEDS; do reported+=("$RUNS/postln-s$seed"); done
for seed in $PRELN_SEEDS; do reported+=("$RUNS/preln-s$seed"); done
for seed in $SEEDS; do reported+=("$RUNS/pld-s$seed"); done
bertpld report "${reported[@]}" --out "$RUNS/report"
say "done in $(( $(date +%s) - start )) s: open $RUNS/report/report.html"
