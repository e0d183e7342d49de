#!/usr/bin/env bash
# Benchmark (not a test): time a no-op rerun of a fully cached 100-node pipeline.
# Target: < 200 ms on 2 cores. Uses the test stage kinds, so no data or candle work is involved:
# what is measured is startup, pipeline loading, 100 key computations and cache lookups, and
# the final summary.
#
#   bench/noop_rerun.sh [RUNS]      (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
# The toy kinds are compiled in only with the test-kinds feature.
cargo build --release -q -p semiflow --features semiflow-stages/test-kinds
bin="$PWD/target/release/semiflow"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pipeline="$work/pipeline.toml"
{
  printf '[pipeline]\nname = "bench-100"\nseed = 0\n\n'
  # 25 chains of trainer → fine-tune → fine-tune, plus 25 evals: 100 nodes.
  for i in $(seq 0 24); do
    printf '[nodes.pre%d]\nkind = "toy-train"\nepochs = 1\nsteps = 5\ntask = %d\n\n' "$i" "$i"
    printf '[nodes.ft%d]\nkind = "toy-train"\nfrom = "pre%d"\nepochs = 1\nsteps = 5\ntask = %d\n\n' "$i" "$i" "$i"
    printf '[nodes.ft%db]\nkind = "toy-train"\nfrom = "ft%d"\nepochs = 1\nsteps = 5\ntask = %d\n\n' "$i" "$i" "$i"
    printf '[nodes.eval%d]\nkind = "toy-eval"\nmodels = ["ft%db", "pre%d"]\ntask = %d\n\n' "$i" "$i" "$i" "$i"
  done
} > "$pipeline"
cmd=("$bin" -q run "$pipeline" --store "$work/store")
"${cmd[@]}" > /dev/null
"${cmd[@]}" | tail -n1   # must say: 100 nodes: 0 ran, 100 cached, 0 failed
if command -v hyperfine > /dev/null; then
  hyperfine --warmup 3 --runs "$runs" "${cmd[*]}"
else
  total=0
  best=999999
  for _ in $(seq "$runs"); do
    t0=$(date +%s%N)
    "${cmd[@]}" > /dev/null
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    total=$(( total + ms ))
    (( ms < best )) && best=$ms
  done
  echo "no-op rerun of 100 cached nodes: mean $(( total / runs )) ms, best ${best} ms over ${runs} runs"
fi
