#!/usr/bin/env bash
# Every GPU check in one go (for a lent H100/H200; results under $OUT, default ./gpu-out):
#   1. the GPU-marked tests (CUDA parity of the model, FLOPs);
#   2./5. scripts/bench_gpu.py: BERT-base seq 128 bf16 training-step tokens/s and MFU for Post-LN,
#      Pre-LN and PLD at steady state (theta = 0.5), and with every block dropped (the part PLD
#      cannot skip), eager (with a kernel profile of each under profiles/) and, last, compiled;
#   3. the real loop: `bertpld pretrain` on BERT-base, Pre-LN (unpadded and padded) and PLD, on data/demo,
#      metrics.jsonl of each (tokens_per_s, mfu, blocks_kept);
#   4. scripts/profile_step.py: the trainer's own step split into phases (data, embeddings, blocks,
#      heads, optimizer, ...), Pre-LN vs PLD, BERT-base at batch 256 (data/demo30k if present).
# Run from the repository root; needs data/demo (bertpld prepare --out data/demo --vocab-size 8192).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

PRESET=${PRESET:-base}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-40}
# Every stage has its own timeout, so that the whole script fits one 600 s device call (stages
# run in order of importance; compiling comes last as the slowest and least certain).
if [ "${SKIP_TESTS:-0}" != 1 ]; then
echo "== 1. GPU tests"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_model.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
fi

bench() {  # $1: eager|compiled, $2: timeout (s), then extra arguments
  local mode=$1 limit=$2; shift 2
  timeout "$limit" python3 scripts/bench_gpu.py --preset "$PRESET" --device "$DEVICE" --micro-batch 256 --steps 20 \
    --warmup 6 --modes post,pre,pld,heads --compile "$mode" --out "$OUT/bench_gpu_$mode.json" "$@" 2>&1 | grep -v Warning | tail -8
}
echo "== 2. step benchmark, eager"
bench eager 120 --profile "$OUT/profiles"

echo "== 3. the real training loop"
for kind in pre pre_padded pld; do
  flags="--norm pre"
  [ "$kind" = pld ] && flags="--pld --pld-gamma 0.3"
  [ "$kind" = pre_padded ] && flags="--norm pre --set impl.unpad=false"
  # shellcheck disable=SC2086
  timeout 70 python3 -m bertpld.cli pretrain --config bert-base-preln --data data/demo --out "/tmp/gpu-$kind" \
    --overwrite $flags --max-steps "$STEPS" --set model.preset="$PRESET" --set impl.device="$DEVICE" --eval-every 0 --save-every 0 --set train.total_steps=200000 \
    --set train.global_batch_size=256 --set impl.micro_batch_size=256 --set train.log_every=5 2>&1 | tail -4
  cp "/tmp/gpu-$kind/metrics.jsonl" "$OUT/loop_$kind.jsonl"
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
res = {}
for kind in ("pre", "pre_padded", "pld"):
    try:
        rows = [r for r in map(json.loads, open(f"{out}/loop_{kind}.jsonl")) if "tokens_per_s" in r]
    except OSError:
        continue
    rows = rows[2:] or rows  # skip warm-up when there is more
    res[kind] = {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_s", "mfu", "blocks_kept") if k in rows[0]}
    print(kind, res[kind])
if "pld" in res and "pre" in res:
    print("PLD / Pre-LN real tokens/s in the real loop:", res["pld"]["tokens_per_s"] / res["pre"]["tokens_per_s"])
if "pre_padded" in res and "pre" in res:
    print("Pre-LN unpadded / padded real tokens/s:", res["pre"]["tokens_per_s"] / res["pre_padded"]["tokens_per_s"])
PY

echo "== 4. step profile (scripts/profile_step.py): BERT-base, batch 256, Pre-LN vs PLD at theta 0.5, by phase"
PDATA=data/demo30k; [ -f "$PDATA/manifest.json" ] || PDATA=data/demo
timeout 150 python3 scripts/profile_step.py --shape base --data "$PDATA" --device "$DEVICE" --threads 0 --steps 3 \
  --rounds 6 --warmup 4 --set train.global_batch_size=256 --set impl.micro_batch_size=256 \
  --json "$OUT/profile_step_base.json" 2>&1 | tail -20

echo "== 5. step benchmark, compiled blocks"
[ "${COMPILE_MODES:-eager,compiled}" = eager ] || bench compiled 120
