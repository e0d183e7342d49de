#!/usr/bin/env bash
# Builds what bench/gpu-check.sh runs on a GPU machine that has no Rust toolchain and no network:
# the stripped `semiflow` binary, the training-step bench and the CUDA-vs-CPU step test, all built
# with `--features cuda` (scripts/build-cuda.sh), plus the libcudart.so.13 they link.
#
#   scripts/gpu-bundle.sh [DIR]      # default: target-cuda/gpu-bundle
#
# Then on the GPU machine, in a checkout of the same commit: `bench/gpu-check.sh DIR`.
# cuBLAS and cuRAND are not bundled (libcublasLt alone is ~500 MB): they are opened at run time
# from the machine's CUDA 13 toolkit or PyTorch's CUDA 13 wheels (gpu-check.sh looks for both).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
DIR=${1:-$CARGO_TARGET_DIR/gpu-bundle}

# Each cargo call prints the executable it built; keep the path of the one asked for.
exe() { # exe NAME CARGO-ARGS...
    local name=$1
    shift
    scripts/build-cuda.sh "$@" --message-format json-render-diagnostics |
        python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$name" | tail -1
}

semiflow=$(exe semiflow build --release --features cuda --bin semiflow)
speed=$(exe speed bench --no-run -p semiflow-stages --features cuda --bench speed)
step=$(exe cuda_step test --release --no-run -p semiflow-stages --features cuda --test cuda_step)
ROOT=$(scripts/cuda-root.sh | tail -1)

rm -rf "$DIR"
mkdir -p "$DIR/lib"
for f in "$semiflow" "$speed" "$step"; do
    [[ -x "$f" ]] || { echo "gpu-bundle: no executable built (got '$f')" >&2; exit 1; }
done
cp "$semiflow" "$DIR/semiflow"
cp "$speed" "$DIR/speed"
cp "$step" "$DIR/cuda_step"
cp -L "$ROOT/lib/libcudart.so.13" "$DIR/lib/"
strip "$DIR/semiflow" "$DIR/speed" "$DIR/cuda_step"
git rev-parse HEAD >"$DIR/COMMIT" 2>/dev/null || true
du -sh "$DIR"/* >&2
echo "$DIR"
