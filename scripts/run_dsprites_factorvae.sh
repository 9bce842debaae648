#!/bin/sh
# FactorVAE (Kim & Mnih 2018) on dSprites as in disentanglement_lib's study (Locatello et al. 2019):
# 300,000 iterations of batch 64, Adam lr 1e-4 (the discriminator's: lr 1e-4, betas 0.5 and 0.9), the study's
# architecture (DLIB), gamma 10 (the study sweeps 10, 20, 30, 40, 50, 100).
# Extra flags are passed through: sh scripts/run_dsprites_factorvae.sh --max_iter 300
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset dsprites --seed 0 --objective factorvae --model DLIB --batch_size 64 --z_dim 10 \
    --max_iter 3e5 --lr 1e-4 --beta1 0.9 --beta2 0.999 --gamma 10 --lr_D 1e-4 --beta1_D 0.5 --beta2_D 0.9 \
    --viz_name dsprites_factorvae "$@"
