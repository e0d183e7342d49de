#!/usr/bin/env bash
# The GPU check, in one call on a lent GPU machine (no Rust toolchain, no network), from the
# repository root of a checkout of the commit the bundle was built from:
#
#   bench/gpu-check.sh [BUNDLE]     # what scripts/gpu-bundle.sh built: the .tar.xz or the directory
#                                   # (default target-cuda/gpu-bundle.tar.xz)
#
# Prints nvidia-smi; the CUDA-vs-CPU training-step test; the quickstart (pipelines/quickstart.toml,
# data in data/cifar10-small) with every training and eval node on `cuda`, its wall time, per-node
# times and metrics; the speed benches on the GPU (the kernels' training step of the small ResNet
# and ResNet-18, then the SimCLR pretrain step, b64/b256); and, where PyTorch with CUDA is
# importable, the same training steps in PyTorch on the same card.
# Results go to $OUT (the device tool's output folder, else /tmp/gpu-check): gpu-check.log,
# records.jsonl (the quickstart's records), report/; the unpacked bundle and the store go to $WORK
# (/tmp/gpu-check-work), not to $OUT.
#
# Needs an NVIDIA driver for CUDA 13 (>= 580) and cuBLAS/cuRAND 13 libraries: from a CUDA 13
# toolkit (/usr/local/cuda*), or PyTorch's CUDA 13 wheels (site-packages/nvidia/cu13/lib,
# nvidia/cublas/lib, nvidia/curand/lib), found here and put on LD_LIBRARY_PATH.
# Time limits: step test 90 s, quickstart 300 s, benches 60 + 60 s, PyTorch 90 s (under the 600 s
# of one device command); the total on a GPU is not yet measured.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-target-cuda/gpu-bundle.tar.xz}
OUT=${OUT:-/tmp/gpu-check}
WORK=${WORK:-/tmp/gpu-check-work}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu-check.log") 2>&1
section() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

section "bundle"
if [[ -f "$BUNDLE" ]]; then
    rm -rf "$WORK/bundle" && mkdir -p "$WORK/bundle"
    tar -C "$WORK/bundle" -xJf "$BUNDLE" 2>/dev/null ||
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE" "$WORK/bundle"
    BUNDLE=$(ls -d "$WORK"/bundle/*/ | head -1)
    BUNDLE=${BUNDLE%/}
fi
[[ -x "$BUNDLE/semiflow" ]] || { echo "no $BUNDLE/semiflow: build it with scripts/gpu-bundle.sh"; exit 1; }
ls -la "$BUNDLE" "$BUNDLE/lib"
echo "bundle built from $(cat "$BUNDLE/COMMIT" 2>/dev/null || echo '?'), checkout at $(git rev-parse HEAD 2>/dev/null || echo '?')"

section "nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null

section "CUDA libraries"
# The bundle's libcudart first; then wherever cuBLAS 13 and cuRAND live.
LIBS="$PWD/$BUNDLE/lib"
[[ "$BUNDLE" = /* ]] && LIBS="$BUNDLE/lib"
cands=(/usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib)
if command -v python3 >/dev/null; then
    for sp in $(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
        cands+=("$sp"/nvidia/cu13/lib "$sp"/nvidia/cublas/lib "$sp"/nvidia/curand/lib "$sp"/nvidia/cuda_runtime/lib)
    done
fi
for d in "${cands[@]}"; do
    if compgen -G "$d/libcublas.so.13*" >/dev/null || compgen -G "$d/libcurand.so.10*" >/dev/null; then
        LIBS="$LIBS:$d"
        echo "found: $(cd "$d" && ls libcublas.so.13* libcublasLt.so.13* libcurand.so.10* 2>/dev/null | tr '\n' ' ') in $d"
    fi
done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldconfig -p 2>/dev/null | grep -E "libcuda\.so|libcublas(Lt)?\.so\.13|libcurand\.so\.10" | head
"$BUNDLE/semiflow" --version

section "CUDA vs CPU training step (stages/tests/cuda_step.rs)"
if [[ -x "$BUNDLE/cuda_step" ]]; then
    timeout 90 "$BUNDLE/cuda_step" --test-threads 1 --nocapture
    echo "cuda_step exit: $?"
fi

section "quickstart on cuda"
STORE="$WORK/store"
rm -rf "$STORE"
start=$(date +%s.%N)
timeout 300 "$BUNDLE/semiflow" --store "$STORE" run pipelines/quickstart.toml --device cuda
code=$?
end=$(date +%s.%N)
echo "quickstart exit $code, wall $(python3 -c "print(f'{$end - $start:.1f}')" 2>/dev/null || echo "$start -> $end") s"
"$BUNDLE/semiflow" --store "$STORE" status pipelines/quickstart.toml --device cuda | tail -25
# Per node: wall time, device, metrics (top-level and top-1 ones), from `show --json`.
"$BUNDLE/semiflow" --store "$STORE" status pipelines/quickstart.toml --device cuda --json 2>/dev/null |
    python3 -c 'import json,sys; print("\n".join(r["node"] for r in json.load(sys.stdin) if r["state"] == "cached"))' |
    while IFS= read -r node; do
        "$BUNDLE/semiflow" --store "$STORE" show "$node" --json | tr -d '\n'
        echo
    done >"$OUT/records.jsonl"
python3 - "$OUT/records.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    dev = (r.get("details") or {}).get("device") or {}
    m = {k: round(v, 4) for k, v in r["metrics"].items() if "." not in k or k.endswith("top1")}
    print(f'{r["node"]:<44} {r["provenance"]["duration_s"]:8.2f} s  {dev.get("name", "cpu"):<26} {m}')
PY
"$BUNDLE/semiflow" --store "$STORE" report pipelines/quickstart.toml --device cuda --out "$OUT/report" >/dev/null &&
    echo "report: $OUT/report/report.md" && sed -n '1,60p' "$OUT/report/report.md"

section "training-step bench on the GPU (kernels/benches/speed.rs)"
SEMIFLOW_BENCH_DEVICE=cuda SEMIFLOW_BENCH=gemm,small,r18 SEMIFLOW_BENCH_BATCH=64,256 \
    SEMIFLOW_BENCH_STEPS=${SEMIFLOW_BENCH_STEPS:-10} timeout 60 "$BUNDLE/kernels-speed" --bench
echo "bench exit: $?"

section "pretrain-step bench on the GPU (stages/benches/speed.rs)"
SEMIFLOW_BENCH_DEVICE=cuda SEMIFLOW_BENCH=pretrain SEMIFLOW_BENCH_BATCH=64,256 \
    SEMIFLOW_BENCH_STEPS=${SEMIFLOW_BENCH_STEPS:-10} timeout 60 "$BUNDLE/speed" --bench
echo "bench exit: $?"

section "PyTorch on the same card (bench/torch_step.py)"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    TORCH_DEVICE=cuda SEMIFLOW_BENCH=gemm,small,r18 SEMIFLOW_BENCH_BATCH=64,256 \
        SEMIFLOW_BENCH_STEPS=${SEMIFLOW_BENCH_STEPS:-10} timeout 90 python3 bench/torch_step.py
else
    echo "SKIPPED: PyTorch with CUDA is not importable here"
fi
section "done"
