#!/bin/sh
# The README's GPU figures in one command, on a machine with a CUDA GPU:
#   1. bench.py --device cuda: dSprites B (plain and compiled) and H, against the reference pipeline;
#   2. a dSprites B run (scripts/run_dsprites_B.sh) of 1e5 iterations with --compile True: its wall time,
#      its it/s and the minutes that 1e6 iterations take at that rate;
#   3. the full evaluation protocol on that run's checkpoint: metric time and wall time.
#
#   sh scripts/gpu_check.sh          # 1e5 iterations
#   sh scripts/gpu_check.sh 2e4      # a shorter run
#
# Everything it prints is also kept in outputs/gpu_check/ (GPU_CHECK_DIR to change it); the run is named
# gpu_check_B and starts afresh each time. dSprites is generated under data/ when it is missing.
set -eu
cd "$(dirname "$0")/.."
if ! command -v python >/dev/null 2>&1; then  # run_dsprites_B.sh calls `python`: lend it python3
    shim=$(mktemp -d) && ln -s "$(command -v python3)" "$shim/python" && PATH="$shim:$PATH"
fi
iters=${1:-1e5}
log=${GPU_CHECK_DIR:-outputs/gpu_check}
mkdir -p "$log"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: this torch sees no GPU')"
python -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)" | tee "$log/gpu.txt"

echo "== 1. bench.py --device cuda"
python bench.py --device cuda --iters 500 --configs ref-B,B,B:compile,H 2>&1 | tee "$log/bench.txt"

echo "== 2. dSprites B, $iters iterations, --compile True"
rm -rf checkpoints/gpu_check_B outputs/gpu_check_B  # a fresh run, not a resume of the last check
start=$(date +%s)
status=0
sh scripts/run_dsprites_B.sh --max_iter "$iters" --compile True --viz_on False --viz_name gpu_check_B \
    > "$log/train.txt" 2>&1 || status=$?
seconds=$(($(date +%s) - start))
tr '\r' '\n' < "$log/train.txt" | grep -v "%|" || true  # the output without its progress bars
[ "$status" -eq 0 ] || { echo "gpu_check.sh: the training run failed (exit $status): $log/train.txt" >&2; exit "$status"; }
python - "$iters" "$seconds" "$log/train.txt" <<'EOF' | tee "$log/train_summary.txt"
import re, sys
iters, seconds, log = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rates = re.findall(r"([\d.]+)it/s", open(log).read())  # tqdm's rates; the last is its final figure
rate = float(rates[-1]) if rates else iters / seconds
print(f"{iters:,.0f} iterations in {seconds} s of wall time (start-up, compile, pictures and checkpoints "
      f"included): {iters / seconds:,.0f} it/s; tqdm's final rate {rate:,.0f} it/s, "
      f"{1e6 / rate / 60:.1f} minutes per 1e6 iterations")
EOF

echo "== 3. full-protocol evaluation of checkpoints/gpu_check_B/last"
start=$(date +%s)
status=0
python main.py --train False --eval_metrics True --viz_name gpu_check_B --model B --objective B --viz_on False \
    > "$log/eval.txt" 2>&1 || status=$?
tr '\r' '\n' < "$log/eval.txt" | grep -v "%|" || true
[ "$status" -eq 0 ] || { echo "gpu_check.sh: the evaluation failed (exit $status): $log/eval.txt" >&2; exit "$status"; }
echo "evaluation command: $(($(date +%s) - start)) s of wall time" | tee "$log/eval_summary.txt"
