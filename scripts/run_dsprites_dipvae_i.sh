#!/bin/sh
# DIP-VAE-I (Kumar et al. 2018) on dSprites as in disentanglement_lib's study (Locatello et al. 2019):
# 300,000 iterations of batch 64, Adam lr 1e-4, the study's architecture (DLIB), lambda_od 10 (the study sweeps
# 1, 2, 5, 10, 20, 50) and lambda_d = 10·lambda_od.
# Extra flags are passed through: sh scripts/run_dsprites_dipvae_i.sh --max_iter 300
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset dsprites --seed 0 --objective dipvae_i --model DLIB --batch_size 64 --z_dim 10 \
    --max_iter 3e5 --lr 1e-4 --beta1 0.9 --beta2 0.999 --lambda_od 10 --lambda_d 100 \
    --viz_name dsprites_dipvae_i "$@"
