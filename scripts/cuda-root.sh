#!/usr/bin/env bash
# Assembles a CUDA 13.4 toolkit root from NVIDIA's PyPI wheels, enough to build semiflow with
# `--features cuda` on a machine that has no system CUDA toolkit and no GPU (CI, the development VM).
#
#   scripts/cuda-root.sh [DIR]      # default DIR: ${SEMIFLOW_CUDA_DIR:-$HOME/.cache/semiflow/cuda-13.4}
#
# Prints the root (DIR/root, a symlink to DIR/wheels/nvidia/cu13) on its last line. The root has
# the layout candle's kernel build expects: bin/nvcc (with cicc, ptxas, fatbinary, cudafe++ beside
# it through nvcc.profile), include/ (runtime, crt and CCCL headers), lib/ and a lib64 -> lib link
# holding libcudart.so(.13). Rerunning it with the same pins does nothing.
#
# Why CUDA 13: the CUDA 12 `nvidia-cuda-nvcc-cu12` wheels (12.0 to 12.9) ship only ptxas and
# libnvvm, not the nvcc driver, cicc or cudafe++, so no CUDA 12 toolkit can be assembled from PyPI.
# The CUDA 13 wheels (`nvidia-cuda-nvcc`, `nvidia-nvvm`, `nvidia-cuda-crt`, ...) are a complete
# compiler. 13.4 is the newest release that cudarc 0.19.10 (candle-core 0.11.1's CUDA bindings)
# recognises; it refuses 13.5 ("Unsupported cuda toolkit version").
#
# Not installed: cuBLAS, cuRAND, NVRTC (hundreds of MB). The vendored candle-core builds cudarc with
# `dynamic-loading` (vendor/candle-core/PATCHED.md), so these and the driver's libcuda are opened
# at run time and the build needs neither them nor driver stubs. Only libcudart is linked (by
# candle-kernels), so a binary built this way needs libcudart.so.13 at run time too.
#
# On a real GPU machine, install NVIDIA's CUDA toolkit 13.x (driver >= 580) instead and skip this.
set -euo pipefail

DIR=${1:-${SEMIFLOW_CUDA_DIR:-$HOME/.cache/semiflow/cuda-13.4}}
PINS=(
    nvidia-cuda-nvcc==13.4.92     # nvcc, ptxas, fatbinary, cudafe++, nvlink, nvcc.profile
    nvidia-nvvm==13.4.92          # cicc and libnvvm (nvcc's device front end)
    nvidia-cuda-crt==13.4.92      # include/crt: host_config.h, ... (nvcc's own headers)
    nvidia-cuda-runtime==13.4.92  # cuda.h, cuda_runtime.h, cuda_bf16.h, cuda_fp8.h, mma.h, libcudart
    nvidia-cuda-cccl==13.3.5.0.6  # thrust / cub / libcu++ headers (candle's moe kernels use thrust)
)
# (The pins on their own lines, comments stripped, are what the stamp compares.)
STAMP=$(printf '%s\n' "${PINS[@]}" | grep -v '^#')
ROOT="$DIR/wheels/nvidia/cu13"

if [[ -x "$DIR/root/bin/nvcc" && -f "$DIR/pins" && "$(cat "$DIR/pins")" == "$STAMP" ]]; then
    echo "cuda-root: up to date in $DIR" >&2
    echo "$DIR/root"
    exit 0
fi

PY=${PYTHON:-python3}
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "cuda-root: $PY has no pip; installing Debian's python3-pip" >&2
    apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
    PY=/usr/bin/python3
fi

rm -rf "$DIR/wheels" "$DIR/root" "$DIR/pins"
mkdir -p "$DIR"
echo "cuda-root: installing ${PINS[*]} into $DIR/wheels" >&2
# --target needs no virtual environment and leaves the Python installation alone.
"$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --target "$DIR/wheels" "${PINS[@]}"

[[ -x "$ROOT/bin/nvcc" ]] || { echo "cuda-root: no $ROOT/bin/nvcc after the install" >&2; exit 1; }
ln -sfn lib "$ROOT/lib64"
ln -sfn libcudart.so.13 "$ROOT/lib/libcudart.so"
ln -sfn "$ROOT" "$DIR/root"
"$DIR/root/bin/nvcc" --version | tail -2 >&2
echo "$STAMP" >"$DIR/pins"
echo "$DIR/root"
