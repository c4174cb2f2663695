#!/usr/bin/env bash
# Every GPU check in one go (for a lent H100/H200; results under $OUT, default ./gpu-out):
#   1. the GPU-marked tests (CUDA parity of the model, FLOPs);
#   2. scripts/bench_gpu.py: BERT-base seq 128 bf16 training-step tokens/s and MFU for Post-LN,
#      Pre-LN and PLD at steady state (theta = 0.5), and with every block dropped (the part PLD
#      cannot skip), eager and with compiled blocks, with a kernel profile of each under profiles/;
#   3. the real loop: `bertpld pretrain` on BERT-base, Pre-LN vs PLD, on prepared data (data/demo),
#      metrics.jsonl of both (tokens_per_s, mfu, blocks_kept).
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
if [ "${SKIP_TESTS:-0}" != 1 ]; then
echo "== 1. GPU tests"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_model.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
fi

echo "== 2. step benchmark"
timeout 300 python3 scripts/bench_gpu.py --preset "$PRESET" --device "$DEVICE" --micro-batch 256 --steps 20 --warmup 6 \
  --modes post,pre,pld,heads --compile "${COMPILE_MODES:-eager,compiled}" --out "$OUT/bench_gpu.json" --profile "$OUT/profiles" 2>&1 | grep -v Warning | tail -20

echo "== 3. the real training loop"
for kind in pre pld; do
  flags="--norm pre"; [ "$kind" = pld ] && flags="--pld --pld-gamma 0.3"
  # shellcheck disable=SC2086
  timeout 200 python3 -m bertpld.cli pretrain --config bert-base-preln --data data/demo --out "/tmp/gpu-$kind" \
    --overwrite $flags --max-steps "$STEPS" --set model.preset="$PRESET" --set impl.device="$DEVICE" --eval-every 0 --save-every 0 --set train.total_steps=200000 \
    --set train.global_batch_size=256 --set impl.micro_batch_size=256 --set train.log_every=5 2>&1 | tail -4
  cp "/tmp/gpu-$kind/metrics.jsonl" "$OUT/loop_$kind.jsonl"
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
res = {}
for kind in ("pre", "pld"):
    rows = [r for r in map(json.loads, open(f"{out}/loop_{kind}.jsonl")) if "tokens_per_s" in r]
    rows = rows[2:] or rows  # skip warm-up when there is more
    res[kind] = {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_s", "mfu", "blocks_kept") if k in rows[0]}
    print(kind, res[kind])
print("PLD / Pre-LN tokens/s in the real loop:", res["pld"]["tokens_per_s"] / res["pre"]["tokens_per_s"])
PY
