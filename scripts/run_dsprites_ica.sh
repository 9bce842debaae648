#!/bin/sh
# ICA on dSprites: FastICA's 10 independent components of 50,000 images (a random subset drawn with --seed);
# fitted once, then scored. Run again, it says the model is already fitted.
# Extra flags are passed through: sh scripts/run_dsprites_ica.sh --fit_images 100000
set -eu
cd "$(dirname "$0")/.."
python main.py --dataset dsprites --seed 0 --objective ica --z_dim 10 --fit_images 50000 --eval_metrics True \
    --viz_name dsprites_ica "$@"
