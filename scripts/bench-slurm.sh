#!/usr/bin/env bash
# Benchmark (not a test): per-node overhead of the Slurm executor and a 100-node sweep's wall
# time through Slurm vs the local executor. Needs a cluster (scripts/slurm-up.sh) and a release
# build with the toy kinds (cargo build --release --features semiflow-stages/test-kinds). Usage: scripts/bench-slurm.sh [NODES] [POLL_SECONDS]
#
# The nodes are toy-train jobs of one epoch (no sleep): near no-ops, so the figures are the
# executor's own cost: sbatch, Slurm starting the job, `semiflow exec` starting, ingesting and
# writing its result, the coordinator's next squeue poll, checking the blobs and committing.
# overhead = submit→commit minus the stage's own time; submit_to_exec = sbatch returned → the
# job's `semiflow exec` started.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
poll=${2:-0.5}
bin=$PWD/target/release/semiflow
[ -x "$bin" ] || { echo "build first: cargo build --release --features semiflow-stages/test-kinds" >&2; exit 1; }
dir=$(mktemp -d /tmp/semiflow-bench-slurm.XXXXXX)
trap 'rm -rf "$dir"' EXIT
seeds=$(seq -s, 0 $((n - 1)))
cat > "$dir/sweep.toml" <<TOML
[pipeline]
name = "bench-slurm"

[sweep]
seed = [$seeds]

[nodes.toy]
kind = "toy-train"
seed = "\${sweep.seed}"
epochs = 1
TOML
export SEMIFLOW_SLURM_TIMINGS=1
cpus=$(nproc)
slurm() { # STORE MAX_JOBS
    local t0 t1
    t0=$(date +%s.%N)
    "$bin" run "$dir/sweep.toml" --store "$dir/$1" --executor slurm --poll-interval "$poll" --max-jobs "$2" -q 2>&1 |
        grep -E "slurm-timings|semiflow:"
    t1=$(date +%s.%N)
    echo "wall: $(echo "$t1 - $t0" | bc) s"
}
echo "== per-node overhead: $n toy nodes through Slurm, --max-jobs $cpus (a free CPU for every job: no queueing), poll ${poll}s"
slurm slurm-a "$cpus"
echo "== sweep wall time: the same $n nodes submitted at once (--max-jobs $n), poll ${poll}s"
slurm slurm-b "$n"
echo "== the same $n nodes with the local executor (-j $cpus)"
t0=$(date +%s.%N)
"$bin" run "$dir/sweep.toml" --store "$dir/local" -j "$cpus" -q | tail -1
t1=$(date +%s.%N)
echo "wall: $(echo "$t1 - $t0" | bc) s"
