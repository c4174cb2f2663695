#!/usr/bin/env bash
# One GPU (or the CPU): bertpld pretrain with any arguments, e.g.
#   scripts/pretrain_single_gpu.sh --config bert-base-pld --data data/wiki-books --out runs/pld
set -euo pipefail
exec bertpld pretrain "$@"
