#!/usr/bin/env bash
# Compiles semiflow with `--features cuda` against the CUDA root that scripts/cuda-root.sh
# assembles from PyPI wheels (no GPU, no system toolkit needed). Compile only: nothing runs on a GPU.
#
#   scripts/build-cuda.sh [CARGO ARGS...]    # default: build --release --features cuda
#
# Environment: CARGO_TARGET_DIR (default target-cuda/, apart from the CPU build's target/ so the
# two never rebuild each other's dependencies), CUDA_COMPUTE_CAP (default 80: PTX for sm_80, which
# the driver JIT-compiles for A100 (8.0) and H100/H200 (9.0); candle-kernels would otherwise ask
# nvidia-smi), SEMIFLOW_CUDA_DIR (where the CUDA root goes, see scripts/cuda-root.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(scripts/cuda-root.sh | tail -1)
export CUDA_HOME="$ROOT" CUDA_PATH="$ROOT" CUDA_ROOT="$ROOT" NVCC="$ROOT/bin/nvcc"
# cudarc's build script runs plain `nvcc --version` to pick its CUDA version: nvcc must be on PATH.
export PATH="$ROOT/bin:$PATH"
# candle-kernels links libcudart (`-l cudart`) without a search path of its own.
export LIBRARY_PATH="$ROOT/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
if [[ $# -eq 0 ]]; then
    set -- build --release --features cuda
fi
echo "build-cuda: CUDA root $ROOT, compute capability $CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR" >&2
exec cargo "$@"
