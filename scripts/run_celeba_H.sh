#!/bin/sh
# Higgins et al. 2017 on CelebA: objective H with beta 10, model H.
# Extra flags are passed through: sh scripts/run_celeba_H.sh --max_iter 300
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset celeba --seed 1 --lr 1e-4 --beta1 0.9 --beta2 0.999 \
    --objective H --model H --batch_size 64 --z_dim 10 --max_iter 1.5e6 \
    --beta 10 --viz_name celeba_H_beta10_z10 "$@"
