#!/usr/bin/env bash
# A throwaway one-node Slurm cluster on this machine (slurmctld + slurmd + its own munged, CPU
# only), to run train.sbatch under real Slurm: tests/test_slurm.py uses it, and so can you.
#   deploy/slurm/local_cluster.sh DIR      (as root; Debian: apt-get install slurm-wlm munge)
# Everything lives in DIR (config, munge key and socket, state, spool, logs) on free ports, so it
# touches no system Slurm or munge. Once the node is idle it prints "SLURM_CONF=DIR/slurm.conf"
# (export that, then sbatch/squeue/scontrol talk to this cluster) and holds the cluster until its
# stdin closes (Ctrl-D) or it gets INT/TERM; then it cancels every job, waits for them, and stops
# its daemons. The daemons' logs are DIR/*.log.
set -euo pipefail
DIR=$(realpath -m "${1:?usage: $0 DIR}")
mkdir -p "$DIR"/{state,spool}
export SLURM_CONF=$DIR/slurm.conf

free_ports() {  # two ports nothing listens on now
  python3 -c 'import socket; s = [socket.socket() for _ in "ab"]; [x.bind(("127.0.0.1", 0)) for x in s]; print(*(x.getsockname()[1] for x in s))'
}
read -r CTLD_PORT SLURMD_PORT < <(free_ports)
NODE=$(hostname -s)
MEMORY_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))

# Root, no systemd, no cgroups: linuxproc tracks a job's processes, no task binding, no accounting.
# CPUs by getconf, not nproc, which reports OMP_NUM_THREADS where that is set (as in a test run).
# JobRequeue=1: batch jobs may requeue (train.sbatch's --requeue asks for it anyway). A requeued
# job waits cred_expire seconds before it starts again: 120 by default, 15 here.
cat > "$SLURM_CONF" <<EOF
ClusterName=kmervae-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket,cred_expire=15
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(getconf _NPROCESSORS_ONLN) RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

wait_until() {  # up to 60 s for "$@" to succeed
  for _ in $(seq 300); do "$@" && return; sleep 0.2; done
  echo "local_cluster: timed out waiting for: $*; see $DIR/*.log" >&2
  return 1
}
node_idle() { [[ $(sinfo -h -n "$NODE" -o %t 2>/dev/null) == idle ]]; }
no_jobs() { local ids; ids=$(squeue -h -o %i 2>/dev/null) && [[ -z $ids ]]; }

pids=()
stop() {
  trap - EXIT INT TERM
  scancel --full --user="$(id -un)" 2>/dev/null || true
  wait_until no_jobs || true  # jobs end (their slurmstepd too) before their slurmd does
  for (( i = ${#pids[@]} - 1; i >= 0; i-- )); do  # slurmd, slurmctld, then munged
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mungekey --create --keyfile="$DIR/munge.key"
munged --foreground --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" \
  --pid-file="$DIR/munged.pid" --seed-file="$DIR/munged.seed" --log-file="$DIR/munged.log" >/dev/null 2>&1 &
pids+=($!)
wait_until test -S "$DIR/munge.socket"
slurmctld -D -f "$SLURM_CONF" >/dev/null 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >/dev/null 2>&1 &
pids+=($!)
wait_until node_idle
echo "SLURM_CONF=$SLURM_CONF"
while read -r _; do :; done  # hold until stdin closes
