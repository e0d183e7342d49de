#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine (as root, no systemd): munged, slurmctld, slurmd.
# Used by .ci/run before the tests and by hand (README "Running on a Slurm cluster"). Needs Debian's
# packages: apt-get install slurmctld slurmd slurm-client munge. Idempotent: a cluster already up is
# left as it is. Tear down with scripts/slurm-down.sh (by the pids in the pid files).
#
# Writes /etc/slurm/slurm.conf (refuses to replace one it did not write). Time limits are whole
# minutes; there is no accounting (sacct does not work; semiflow uses squeue and scontrol).
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "slurm-up: must run as root" >&2; exit 1; }
for b in munged slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || {
        echo "slurm-up: $b not found; apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
done

STATE=/var/lib/slurm
CONF=/etc/slurm/slurm.conf
MARK="# written by semiflow scripts/slurm-up.sh"
host=$(hostname -s)

# A pid file names a live daemon: the process exists and is not a zombie (a daemon killed with
# kill -9 whose parent has not reaped it still answers kill -0).
alive() {
    [ -f "$1" ] || return 1
    local pid
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# munge: the package created the key; the daemon runs as munge.
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "slurm-up: munge does not work" >&2; exit 1; }

if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up: $CONF exists and was not written by this script; not replacing it" >&2
    exit 1
fi
# Without RealMemory every --mem request is refused; take it from slurmd -C.
mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
install -d -o slurm -g slurm "$STATE" "$STATE/slurmctld" "$STATE/slurmd" /var/log/slurm
cat > "$CONF" <<CONF
$MARK
ClusterName=semiflow
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
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

if ! alive /run/slurmctld.pid; then /usr/sbin/slurmctld; fi
if ! alive /run/slurmd.pid; then /usr/sbin/slurmd; fi
for _ in $(seq 300); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    case "$state" in idle|mixed|allocated) echo "slurm-up: node $host $state"; exit 0 ;; esac
    sleep 0.1
done
echo "slurm-up: node not idle after 30 s (state: ${state:-none}); see /var/log/slurm/" >&2
exit 1
