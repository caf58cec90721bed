#!/usr/bin/env bash
# The CUDA comparison of issue 12 in one run (about 10 minutes on an H100/H200, most of it torch.compile):
#   1. inference throughput, hrnet_w18, bfloat16, batch 256: eager, compiled, zero-padded branches
#   2. inference latency, batch 1: CUDA graphs (the built-in under torch.compile mode='reduce-overhead')
#   3. training, AMP bfloat16, channels_last, batch 128: step time and memory, with gradient checkpointing
# Results go to $OUT (the device tool's output folder) or benchmarks/: results-cuda-*.txt and *.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEST=${OUT:-benchmarks}
mkdir -p "$DEST"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$DEST/results-cuda-device.txt"
"$PYTHON" benchmarks/bench_inference.py --device cuda --models hrnet_w18 --dtypes bfloat16 --batch-sizes 256 \
    --variants timm_channels_last timm_compile ours_fused_channels_last ours_fused_compile \
    ours_padded_channels_last ours_padded_compile \
    --rounds 7 --iters 5 --json "$DEST/results-cuda-b256.json" 2>&1 | tee "$DEST/results-cuda-b256.txt" || status=1
"$PYTHON" benchmarks/bench_inference.py --device cuda --models hrnet_w18 --dtypes bfloat16 --batch-sizes 1 \
    --variants timm_compile_cudagraphs ours_fused_channels_last ours_fused_cudagraph ours_padded_cudagraph \
    ours_fused_compile_cudagraphs \
    --rounds 7 --iters 50 --json "$DEST/results-cuda-b1.json" 2>&1 | tee "$DEST/results-cuda-b1.txt" || status=1
"$PYTHON" benchmarks/bench_train_memory.py --device cuda --amp --channels-last --batch-size 128 --rounds 5 \
    2>&1 | tee "$DEST/results-cuda-train.txt" || status=1
exit $status
