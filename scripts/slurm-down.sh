#!/usr/bin/env bash
# Stop what scripts/slurm-up.sh started, by the pids in the pid files (never by process name):
# slurmd, slurmctld, slurmdbd, MariaDB, munged. Safe to run when nothing is up.
set -uo pipefail
stop() {
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
}
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/slurmdbd.pid
stop /run/mysqld/mysqld.pid
stop /run/munge/munged.pid
echo "slurm-down: stopped"
