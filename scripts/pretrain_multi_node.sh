#!/usr/bin/env bash
# Several machines: run this on every node with the same MASTER_ADDR (node 0's address), its own
# NODE_RANK (0..NNODES-1), and the same arguments; the data directory must be readable on every
# node (shared file system or a copy), the run directory is written by global rank 0.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/pretrain_multi_node.sh --config bert-base-pld --data /shared/data --out /shared/runs/pld
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NGPU" \
  --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" -m bertpld.cli pretrain "$@"
