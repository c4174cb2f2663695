#!/usr/bin/env bash
# All GPUs of this machine (NGPU to choose), one process per GPU, NCCL, e.g.
#   scripts/pretrain_multi_gpu.sh --config bert-base-pld --data data/wiki-books --out runs/pld
# train.global_batch_size must be a multiple of impl.micro_batch_size x NGPU (accumulation makes up the rest).
set -euo pipefail
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
exec torchrun --standalone --nproc-per-node "$NGPU" -m bertpld.cli pretrain "$@"
