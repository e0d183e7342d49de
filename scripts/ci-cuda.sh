#!/usr/bin/env bash
# CI's CUDA step (called by .ci/run after the tests): compiles semiflow with `--features cuda`
# against the CUDA 13 toolkit scripts/cuda-root.sh assembles from PyPI wheels, then checks what
# can be checked without a GPU:
#   - the CUDA-vs-CPU training-step test (stages/tests/cuda_step.rs) builds, starts and says SKIPPED;
#   - the CUDA binary starts, runs CPU nodes, and fails a `--device cuda` node with
#     "no CUDA device found", naming the node.
# Nothing here runs on a GPU (bench/gpu-check.sh does, on a lent GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
start=$SECONDS
mkdir -p "$CARGO_TARGET_DIR"

# One cargo call for the binary, the step test and the benches (semiflow-kernels' and
# semiflow-stages' `speed`): a second call with other targets would resolve features differently
# (the tests' dev-dependencies) and rebuild candle and its kernels.
scripts/build-cuda.sh build --release --features cuda -p semiflow -p semiflow-stages -p semiflow-kernels \
    --bin semiflow --test cuda_step --bench speed --message-format json-render-diagnostics >"$CARGO_TARGET_DIR/ci-cuda.json"
step=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda_step" and m.get("executable"):
        print(m["executable"])
' "$CARGO_TARGET_DIR/ci-cuda.json")

ROOT=$(scripts/cuda-root.sh 2>/dev/null | tail -1)
# The binaries link libcudart.so.13 (from the wheel here; the toolkit's on a GPU machine).
export LD_LIBRARY_PATH="$ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$step" --nocapture

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/p.toml" <<EOF
[pipeline]
name = "cuda-smoke"
[datasets.cifar]
format = "image-folder"
root = "$PWD/tests/data/cifar10-tiny"
[nodes.split]
kind = "split"
data = "cifar"
per_class = 3
[nodes.supervised]
kind = "supervised"
labels = "split"
data = "cifar"
model = { depth = 10, width = 0.125 }
epochs = 1
EOF
set +e
"$CARGO_TARGET_DIR/release/semiflow" --store "$tmp/store" run "$tmp/p.toml" --device cuda >"$tmp/out" 2>&1
code=$?
set -e
cat "$tmp/out"
if [[ $code -ne 1 ]] || ! grep -q "node supervised failed: device = \"cuda\": no CUDA device found" "$tmp/out" ||
    ! grep -q "2 ran, 0 cached, 1 failed" "$tmp/out"; then
    echo "ci-cuda: expected the split to run and supervised to fail with 'no CUDA device found' (exit $code)" >&2
    exit 1
fi
echo "ci-cuda: the cuda build compiles, starts and reports the missing GPU ($((SECONDS - start)) s)"
