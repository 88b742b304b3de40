#!/usr/bin/env bash
# The true-size checks on one GPU, in about 10 minutes of an H200 (bf16):
#   1. benchmarks/paper_shapes.py at the protocol's sizes: batch 8 x 512 tokens, sampling batch
#      64 x 256 new tokens, both pairs with every teacher layer, the largest batch tried until
#      the GPU runs out of memory -> benchmarks/results/paper_shapes-bf16-cuda.{md,csv}
#   2. the true-size profile end to end at bf16 (config/paper-gpt2-shapes.yaml, as profile
#      paper-gpt2-shapes-bf16) -> benchmarks/results/pipeline_paper-gpt2-shapes-bf16-cuda.md
# Each part stops after its time limit (seconds, PART1_S and PART2_S) and what it finished stays
# (the pipeline's report then lists the jobs that completed).
#
#   bash benchmarks/gpu_paper_shapes.sh
#
# Needs a CUDA build of torch and TRL for the trl rows (pip install trl).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || exit 1

timeout "${PART1_S:-330}" python benchmarks/paper_shapes.py --device cuda --precision bf16 --batch 8 \
    --sample-batch 64 --reps 5 --sample-reps 3 --teacher-layers 0 \
    --out benchmarks/results/paper_shapes-bf16-cuda.md
echo "paper_shapes: exit $?"

# --time-limit stops the DAG itself and still writes the report of the jobs that completed;
# timeout is the backstop
timeout "$(( ${PART2_S:-200} + 60 ))" python benchmarks/pipeline.py --configfile config/paper-gpt2-shapes.yaml --cold \
    --precision bf16 --time-limit "$(python -c "print(${PART2_S:-200} / 60)")"
echo "pipeline: exit $?"
