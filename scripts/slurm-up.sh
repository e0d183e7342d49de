#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine (as root, no systemd): munged, slurmctld,
# slurmd, and, for job accounting (sacct), MariaDB and slurmdbd.
# Used by .ci/run before the tests and by hand (README "Running on a Slurm cluster"). Needs Debian's
# packages: apt-get install slurmctld slurmd slurm-client munge, plus slurmdbd mariadb-server for
# accounting. Idempotent: a cluster already up with the same configuration is left as it is; one
# whose configuration changed (accounting switched on or off) has slurmctld and slurmd restarted.
# Tear down with scripts/slurm-down.sh (by the pids in the pid files).
#
#   scripts/slurm-up.sh                  accounting if slurmdbd and mariadb-server are installed
#   scripts/slurm-up.sh --accounting     accounting, or fail
#   scripts/slurm-up.sh --no-accounting  no accounting (sacct does not work; semiflow then uses
#                                        squeue and scontrol)
#
# Writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (refuses to replace files it did not
# write). Time limits are whole minutes. Memory limits (--mem) are enforced: with a cgroup v1
# memory controller (/sys/fs/cgroup/memory, as on this project's machines) by task/cgroup, so a
# job over its limit is OOM-killed and ends OUT_OF_MEMORY; without one by slurmstepd's own sampling
# (JobAcctGatherParams=OverMemoryKill, every second), where such a job ends FAILED (signal 9).
set -euo pipefail

accounting=auto
case "${1:-}" in
    "") ;;
    --accounting) accounting=yes ;;
    --no-accounting) accounting=no ;;
    *) echo "usage: slurm-up.sh [--accounting | --no-accounting]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "slurm-up: must run as root" >&2; exit 1; }
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
for b in munged slurmctld slurmd sinfo; do
    have "$b" || {
        echo "slurm-up: $b not found; apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
done
if [ "$accounting" != no ]; then
    if have slurmdbd && have mariadbd; then
        accounting=yes
    elif [ "$accounting" = yes ]; then
        echo "slurm-up: --accounting needs slurmdbd and mariadbd; apt-get install slurmdbd mariadb-server" >&2
        exit 1
    else
        accounting=no
    fi
fi

STATE=/var/lib/slurm
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
MARK="# written by semiflow scripts/slurm-up.sh"
CLUSTER=semiflow
host=$(hostname -s)

# A pid file names a live daemon: the process exists and is not a zombie (a daemon killed with
# kill -9 whose parent has not reaped it still answers kill -0).
alive() {
    [ -f "$1" ] || return 1
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}
# Stop the daemon of a pid file (TERM, then KILL after 10 s).
stop() {
    local pid
    alive "$1" || { rm -f "$1"; return 0; }
    pid=$(cat "$1" 2>/dev/null) || return 0
    kill "$pid"
    for _ in $(seq 100); do alive "$1" || break; sleep 0.1; done
    alive "$1" && kill -9 "$pid"
    rm -f "$1"
}
ours() {
    if [ -f "$1" ] && ! grep -qF "$MARK" "$1"; then
        echo "slurm-up: $1 exists and was not written by this script; not replacing it" >&2
        exit 1
    fi
}

# munge: the package created the key; the daemon runs as munge.
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "slurm-up: munge does not work" >&2; exit 1; }

ours "$CONF"
changed=no
install -d -o slurm -g slurm "$STATE" "$STATE/slurmctld" "$STATE/slurmd" /var/log/slurm

if [ "$accounting" = yes ]; then
    storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
    storage="AccountingStorageType=accounting_storage/none"
fi
# Memory enforcement: task/cgroup where a cgroup v1 memory hierarchy is mounted and writable.
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ] && [ -w /sys/fs/cgroup/memory ]; then
    task=task/cgroup
    overmem=NoOverMemoryKill
    memory_limits="cgroup (OUT_OF_MEMORY)"
    new_cg=$(cat <<CG
$MARK
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
CG
)
    if [ -f /etc/slurm/cgroup.conf ] && ! grep -qF "$MARK" /etc/slurm/cgroup.conf; then
        ours /etc/slurm/cgroup.conf
    fi
    if [ ! -f /etc/slurm/cgroup.conf ] || [ "$(cat /etc/slurm/cgroup.conf)" != "$new_cg" ]; then
        printf '%s\n' "$new_cg" > /etc/slurm/cgroup.conf
        changed=yes
    fi
else
    task=task/none
    overmem=OverMemoryKill
    memory_limits="sampled (FAILED)"
fi
# MinJobAge=10: the controller forgets a finished job after 10 s (real clusters: 300 s by default),
# so the tests see what semiflow does about a job only accounting still knows.
# Without RealMemory every --mem request is refused; take it from slurmd -C. Memory is a consumable
# resource (CR_CPU_Memory), else Slurm enforces no --mem; a job that asks for none gets its CPUs'
# share of the node (DefMemPerCPU), so jobs still share the node by CPUs.
mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
new_conf=$(cat <<CONF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=$task
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / $(nproc)))
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
MailProg=/bin/true
$storage
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=$overmem
ReturnToService=2
KillWait=5
MinJobAge=10
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
)
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" > "$CONF"
    changed=yes
fi
if [ "$accounting" = yes ]; then
    ours "$DBDCONF"
    # MariaDB on its unix socket only (no TCP port), the database Debian's package initialised.
    install -d -o mysql -g root -m 0755 /run/mysqld
    install -d -o mysql -g adm -m 0750 /var/log/mysql
    if ! alive /run/mysqld/mysqld.pid; then
        setsid -f /usr/sbin/mariadbd --user=mysql --skip-networking \
            --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
            --innodb-lock-wait-timeout=900 --log-error=/var/log/mysql/error.log \
            </dev/null >/dev/null 2>&1
    fi
    for _ in $(seq 300); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.1; done
    mariadb-admin ping >/dev/null 2>&1 || {
        echo "slurm-up: MariaDB did not start; see /var/log/mysql/error.log" >&2; exit 1; }
    # slurmdbd's database user; the password only guards a socket that only root and mysql reach.
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'semiflow-test';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    new_dbd=$(cat <<DBD
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=semiflow-test
StorageLoc=slurm_acct_db
DBD
)
    if [ ! -f "$DBDCONF" ] || [ "$(cat "$DBDCONF")" != "$new_dbd" ]; then
        printf '%s\n' "$new_dbd" > "$DBDCONF"
        stop /run/slurmdbd.pid
    fi
    chown slurm:slurm "$DBDCONF"
    chmod 0600 "$DBDCONF"
    if ! alive /run/slurmdbd.pid; then /usr/sbin/slurmdbd; fi
    for _ in $(seq 300); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.1; done
    sacctmgr -n show cluster >/dev/null || {
        echo "slurm-up: slurmdbd does not answer; see /var/log/slurm/slurmdbd.log" >&2; exit 1; }
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
fi

# A new configuration (accounting on or off) needs both daemons started again; their state
# (queued and running jobs) is kept in $STATE.
if [ "$changed" = yes ]; then
    stop /run/slurmd.pid
    stop /run/slurmctld.pid
fi
if ! alive /run/slurmctld.pid; then /usr/sbin/slurmctld; fi
if ! alive /run/slurmd.pid; then /usr/sbin/slurmd; fi
for _ in $(seq 300); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    # A state may carry flags (`mixed-`: planned by the backfill scheduler); `*`: not responding.
    case "$state" in
        *'*') ;;
        idle*|mixed*|allocated*|planned*)
            echo "slurm-up: node $host $state; accounting: $accounting; memory limits: $memory_limits"
            exit 0 ;;
    esac
    sleep 0.1
done
echo "slurm-up: node not idle after 30 s (state: ${state:-none}); see /var/log/slurm/" >&2
exit 1
