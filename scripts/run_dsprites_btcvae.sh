#!/bin/sh
# β-TCVAE (Chen et al. 2018) on dSprites as in disentanglement_lib's study (Locatello et al. 2019):
# 300,000 iterations of batch 64, Adam lr 1e-4, the study's architecture (DLIB), beta 10 (the study sweeps
# 1, 2, 4, 6, 8, 10).
# Extra flags are passed through: sh scripts/run_dsprites_btcvae.sh --max_iter 300
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset dsprites --seed 0 --objective btcvae --model DLIB --batch_size 64 --z_dim 10 \
    --max_iter 3e5 --lr 1e-4 --beta1 0.9 --beta2 0.999 --beta 10 --viz_name dsprites_btcvae "$@"
