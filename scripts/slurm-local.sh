#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for the test suite and for trying `asl submit` by hand.
#   scripts/slurm-local.sh start [DIR]   install Slurm and MUNGE from Debian's packages when
#                                        missing, write DIR/slurm.conf, start munged, slurmctld
#                                        and slurmd, wait until the node is idle
#   scripts/slurm-local.sh stop [DIR]    stop the three daemons this script started
#   scripts/slurm-local.sh env [DIR]     print `export SLURM_CONF=…` for a shell to eval
# DIR defaults to target/slurm. Everything the cluster writes (state, spool, logs, the MUNGE
# socket) stays under DIR; the node is this machine with all its CPUs and most of its memory.
# Runs as root (daemons and jobs alike), as CI and the developers' machines do.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-start}"
dir="${2:-$root/target/slurm}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
conf="$dir/slurm.conf"
socket="$dir/munge/munge.socket"

stop() {
  for d in slurmd slurmctld munged; do
    if [ -f "$dir/$d.pid" ]; then
      kill "$(cat "$dir/$d.pid")" 2>/dev/null || true
    fi
  done
  for d in slurmd slurmctld munged; do
    for _ in $(seq 50); do
      [ -f "$dir/$d.pid" ] && kill -0 "$(cat "$dir/$d.pid")" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$dir/$d.pid"
  done
}

case "$cmd" in
  env) echo "export SLURM_CONF=$conf"; exit 0 ;;
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "slurm-local: unknown command $cmd (start, stop, env)" >&2; exit 1 ;;
esac

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
  || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm-local: installing slurmctld, slurmd, slurm-client and munge (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

stop
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
# MUNGE: our own key and socket, so nothing outside DIR is touched or needed.
if [ ! -s "$dir/munge/munge.key" ]; then
  head -c 1024 /dev/urandom > "$dir/munge/munge.key"
fi
chmod 700 "$dir/munge"
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$socket" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"

host="$(hostname -s)"
cpus="$(nproc)"
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
cat > "$conf" <<CONF
# Written by scripts/slurm-local.sh: a one-node cluster on localhost.
ClusterName=asl-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem takes the whole node and the parts of an array would
# run one at a time.
DefMemPerCPU=$(( mem_mb / cpus ))
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF="$conf"
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 150); do
  state="$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)"
  case "$state" in
    idle|mix|alloc) echo "slurm-local: node $host $state (SLURM_CONF=$conf)"; exit 0 ;;
  esac
  sleep 0.2
done
echo "slurm-local: the node did not come up; logs in $dir (slurmctld.log, slurmd.log, munged.log)" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
