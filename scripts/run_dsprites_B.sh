#!/bin/sh
# Burgess et al. 2018 on dSprites: capacity-annealed objective B, model B.
# Extra flags are passed through: sh scripts/run_dsprites_B.sh --max_iter 300
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset dsprites --seed 2 --lr 5e-4 --beta1 0.9 --beta2 0.999 \
    --objective B --model B --batch_size 64 --z_dim 10 --max_iter 1.5e6 \
    --C_stop_iter 1e5 --C_max 25 --gamma 1000 --viz_name dsprites_B "$@"
