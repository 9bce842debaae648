#!/bin/sh
# InfoGAN (Chen et al. 2016) on dSprites: 10 continuous codes uniform on [-1, 1] and no noise input, batch 64,
# 300,000 iterations like the VAEs of disentanglement_lib's study; openai/InfoGAN's optimisers (Adam with
# beta1 0.5: lr 1e-3 for the generator and Q, 2e-4 for the discriminator) and information weight 1.
# Extra flags are passed through: sh scripts/run_dsprites_infogan.sh --max_iter 300
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset dsprites --seed 0 --objective infogan --batch_size 64 --z_dim 10 --noise_dim 0 \
    --max_iter 3e5 --lr 1e-3 --beta1 0.5 --beta2 0.999 --lr_D 2e-4 --beta1_D 0.5 --beta2_D 0.999 --lambda_mi 1 \
    --viz_name dsprites_infogan "$@"
