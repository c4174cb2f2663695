#!/usr/bin/env bash
# The whole comparison, end to end: prepare -> pre-train Post-LN baseline, Pre-LN (no PLD) and PLD at
# equal samples -> fine-tune each -> report. Rerunning reuses every finished stage; an interrupted
# pre-training run is resumed from its last checkpoint.
#
#   scripts/reproduce.sh             # SCALE=demo: offline, CPU, ~10-15 min on 2 cores (what `make reproduce` runs)
#   SCALE=base scripts/reproduce.sh  # the paper's BERT-base runs on all local GPUs (see README for hardware/time)
set -euo pipefail
SCALE=${SCALE:-demo}
RUNS=${RUNS:-runs/$SCALE}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$(date +%s)

if [ "$SCALE" = demo ]; then
  export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1  # everything the demo needs is on this machine
  DATA=${DATA:-data/demo}
  PRETRAIN=(bertpld pretrain)
  # one epoch at a higher lr than BERT-base's 7e-5 suits this 2.7M-parameter model and the time budget
  FINETUNE_ARGS=(--task rt-polarity --epochs 1 --lr 3e-4)
  say "prepare: offline demo corpus (enwiki dump excerpt + Shakespeare) -> $DATA"
  bertpld prepare --out "$DATA" --vocab-size 8192 --set prepare.val_fraction=0.03
  declare -A CONFIG=([postln]=demo [preln]=demo [pld]=demo)
  declare -A FLAGS=([postln]="--norm post" [preln]="--norm pre" [pld]="--pld")
elif [ "$SCALE" = base ]; then
  DATA=${DATA:-data/wiki-books}
  NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
  PRETRAIN=(torchrun --standalone --nproc-per-node "$NGPU" -m bertpld.cli pretrain)
  FINETUNE_ARGS=(--task all --seeds 5 --data-dir "${GLUE_DIR:?set GLUE_DIR to a glue_data directory, or unset HF_HUB_OFFLINE to use the hub}")
  say "prepare: Wikipedia + BookCorpus -> $DATA"
  bertpld prepare wikipedia bookcorpus --out "$DATA"
  declare -A CONFIG=([postln]=bert-base-postln [preln]=bert-base-preln [pld]=bert-base-pld)
  declare -A FLAGS=([postln]="" [preln]="" [pld]="")
else
  echo "error: SCALE=$SCALE: expected demo or base" >&2
  exit 2
fi

for run in postln preln pld; do
  out="$RUNS/$run"
  if [ -f "$out/summary.json" ]; then
    say "pretrain $run: done already ($out/summary.json)"
  elif [ -f "$out/config.json" ]; then
    say "pretrain $run: resuming $out"
    "${PRETRAIN[@]}" --out "$out" --resume
  else
    say "pretrain $run -> $out"
    # shellcheck disable=SC2086
    "${PRETRAIN[@]}" --config "${CONFIG[$run]}" --data "$DATA" --out "$out" ${FLAGS[$run]}
  fi
done

for run in postln preln pld; do
  task=${FINETUNE_ARGS[1]}
  if [ -f "$RUNS/$run/finetune/$task/results.json" ] || [ -f "$RUNS/$run/finetune/glue.json" ]; then
    say "finetune $run: done already"
  else
    say "finetune $run ($task)"
    bertpld finetune --from "$RUNS/$run" "${FINETUNE_ARGS[@]}"
  fi
done

say "report"
bertpld report "$RUNS/postln" "$RUNS/preln" "$RUNS/pld" --out "$RUNS/report"
say "done in $(( $(date +%s) - start )) s: open $RUNS/report/report.html"
