#!/usr/bin/env bash
# Builds what bench/gpu-check.sh runs on a GPU machine that has no Rust toolchain and no network:
# the stripped `semiflow` binary, the two speed benches (`kernels-speed`: the kernels' training
# step, semiflow-kernels; `speed`: the SimCLR pretrain step, semiflow-stages) and the CUDA-vs-CPU
# step test, all built with `--features cuda` (scripts/build-cuda.sh), plus the libcudart.so.13
# they link.
#
#   scripts/gpu-bundle.sh [DIR]      # default: target-cuda/gpu-bundle (and DIR.tar.xz, ~25 MB)
#
# Then on the GPU machine, in a checkout of the same commit: `bench/gpu-check.sh DIR.tar.xz`
# (or DIR).
# cuBLAS and cuRAND are not bundled (libcublasLt alone is ~500 MB): they are opened at run time
# from the machine's CUDA 13 toolkit or PyTorch's CUDA 13 wheels (gpu-check.sh looks for both).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
DIR=${1:-$CARGO_TARGET_DIR/gpu-bundle}
mkdir -p "$CARGO_TARGET_DIR"

# One cargo call for all four (a second call with other targets would resolve features
# differently and rebuild candle and its kernels); keep the executables it reports.
scripts/build-cuda.sh build --release --features cuda -p semiflow -p semiflow-stages -p semiflow-kernels \
    --bin semiflow --test cuda_step --bench speed --message-format json-render-diagnostics >"$CARGO_TARGET_DIR/gpu-bundle.json"
# exe TARGET [PACKAGE]: the executable cargo reported for that target (of that package: both
# semiflow-kernels and semiflow-stages have a bench named `speed`).
exe() {
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[2]
            and m.get("executable") and sys.argv[3] in m["package_id"]):
        print(m["executable"])
' "$CARGO_TARGET_DIR/gpu-bundle.json" "$1" "${2:-}" | tail -1
}
semiflow=$(exe semiflow)
speed=$(exe speed semiflow-stages)
kspeed=$(exe speed semiflow-kernels)
step=$(exe cuda_step)
ROOT=$(scripts/cuda-root.sh | tail -1)

rm -rf "$DIR"
mkdir -p "$DIR/lib"
for f in "$semiflow" "$speed" "$kspeed" "$step"; do
    [[ -x "$f" ]] || { echo "gpu-bundle: no executable built (got '$f')" >&2; exit 1; }
done
cp "$semiflow" "$DIR/semiflow"
cp "$speed" "$DIR/speed"
cp "$kspeed" "$DIR/kernels-speed"
cp "$step" "$DIR/cuda_step"
cp -L "$ROOT/lib/libcudart.so.13" "$DIR/lib/"
strip "$DIR/semiflow" "$DIR/speed" "$DIR/kernels-speed" "$DIR/cuda_step"
git rev-parse HEAD >"$DIR/COMMIT" 2>/dev/null || true
du -sh "$DIR"/* >&2
# The four stripped binaries are ~210 MB (candle's PTX and kernels in each); xz packs them
# into ~25 MB, under the 64 MiB a device run can carry.
tar -C "$(dirname "$DIR")" -cJf "$DIR.tar.xz" "$(basename "$DIR")"
du -sh "$DIR.tar.xz" >&2
echo "$DIR.tar.xz"
