#!/usr/bin/env bash
# Does PyTorch reproduce semiflow's quickstart top-1 with the exported fine-tuned models?
#
#   bench/torch-check.sh [STORE]        # default store: $SEMIFLOW_STORE, else ./artifacts
#   PYTHON=/path/to/venv/bin/python bench/torch-check.sh
#
# Runs the quickstart up to its eval (cached if it has run), exports both fine-tuned models with
# torchvision names, and runs scripts/torch_check.py on each: the model built from torchvision's
# blocks (load_state_dict(strict=True)), fed semiflow's own decoded test pixels / 255, must give
# the eval node's top-1 exactly; it also decodes the same JPEGs with PIL and reports the pixel
# differences and the top-1 on those. Needs torch, torchvision, safetensors, numpy and pillow;
# without them it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision, safetensors, numpy, PIL" 2>/dev/null; then
    echo "skipped: $PY cannot import torch, torchvision, safetensors, numpy and PIL" \
        "(pip install torch torchvision safetensors numpy pillow, or set PYTHON)"
    exit 0
fi
BIN=${SEMIFLOW:-target/release/semiflow}
STORE=${1:-${SEMIFLOW_STORE:-artifacts}}
"$BIN" --store "$STORE" run pipelines/quickstart.toml --until eval >/dev/null
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# semiflow's decoded dataset artifact (meta.json, test.u8, test-labels.u32le) out of the store.
"$BIN" --store "$STORE" show dataset.cifar10 --json |
    "$PY" -c '
import json, os, shutil, sys
store, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
for name, e in json.load(sys.stdin)["files"].items():
    shutil.copy(os.path.join(store, "objects", e["hash"][:2], e["hash"]), os.path.join(out, name))
' "$STORE" "$OUT/dataset"
for lf in 0.01 0.1; do
    "$BIN" --store "$STORE" export "finetune[label_fraction=$lf]" --out "$OUT/finetune-$lf.safetensors"
    top1=$("$BIN" --store "$STORE" show "eval[label_fraction=$lf]" --json |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["metrics"]["model0.top1"])')
    "$PY" scripts/torch_check.py --model "$OUT/finetune-$lf.safetensors" --dataset "$OUT/dataset" \
        --expect-top1 "$top1" --jpeg-root data/cifar10-small/test
done
