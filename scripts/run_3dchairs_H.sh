#!/bin/sh
# Higgins et al. 2017 on 3D Chairs: objective H with beta 4, model H.
# The reference script passes --beta twice (0.999, then 4); the last value wins, so beta is 4.
# Extra flags are passed through: sh scripts/run_3dchairs_H.sh --max_iter 300
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset 3dchairs --seed 1 --lr 1e-4 --beta1 0.9 --beta 0.999 \
    --objective H --model H --batch_size 64 --z_dim 16 --max_iter 1.5e6 \
    --beta 4 --viz_name 3dchairs_H_beta4_z16 "$@"
