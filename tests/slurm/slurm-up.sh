#!/bin/bash
# Starts a one-node Slurm (munged, slurmctld, slurmd) for the real-Slurm
# tests, as root, without systemd; all state under the directory given.
#
#   tests/slurm/slurm-up.sh DIR     # prints `export SLURM_CONF=DIR/etc/slurm.conf`
#   tests/slurm/slurm-down.sh DIR   # stops it again (by recorded PID)
#
# Needs: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge
# Env: PORT0 (default 16917: slurmctld, +1 slurmd), SLURM_TEST_USER (default
# wstest: a non-root user created for submissions).
set -euo pipefail
BASE=${1:?usage: slurm-up.sh STATE_DIR}
PORT0=${PORT0:-16917}
TEST_USER=${SLURM_TEST_USER:-wstest}
mkdir -p "$BASE"
BASE=$(cd "$BASE" && pwd)
chmod 755 "$BASE"
H=$(hostname -s)
NCPU=$(nproc)
MEM=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') - 1024 ))
[ "$MEM" -gt 1024 ] || MEM=1024
mkdir -p "$BASE"/{etc,state,spool,log,run} "$BASE"/munge/{etc,run,lib,log}
: > "$BASE/pids"
if ! id "$TEST_USER" >/dev/null 2>&1; then
  useradd -m -s /bin/bash "$TEST_USER"
fi
[ -f /etc/munge/munge.key ] || { echo "no /etc/munge/munge.key: is munge installed?" >&2; exit 1; }
cp /etc/munge/munge.key "$BASE/munge/etc/munge.key"
chown -R munge:munge "$BASE/munge"
chmod 700 "$BASE/munge/etc" "$BASE/munge/lib" "$BASE/munge/log"; chmod 755 "$BASE/munge/run"
chmod 600 "$BASE/munge/etc/munge.key"
chown slurm:slurm "$BASE/state" "$BASE/log" "$BASE/run"
SOCK=$BASE/munge/run/munge.socket

cat > "$BASE/etc/slurm.conf" <<CONF
ClusterName=wstest
SlurmctldHost=$H(127.0.0.1)
SlurmctldPort=$PORT0
SlurmdPort=$((PORT0+1))
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=2
MinJobAge=300
InactiveLimit=0
NodeName=$H NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$BASE/etc/slurm.conf

# munged: setpriv execs (no fork), so $! is the daemon's PID.
setpriv --reuid=munge --regid=munge --init-groups munged -F \
  --key-file="$BASE/munge/etc/munge.key" --socket="$SOCK" --pid-file="$BASE/munge/run/munged.pid" \
  --log-file="$BASE/munge/log/munged.log" --seed-file="$BASE/munge/lib/munged.seed" \
  >"$BASE/munge/log/stdout" 2>&1 &
echo "munged $!" >> "$BASE/pids"
for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.05; done

slurmctld -D -f "$SLURM_CONF" >"$BASE/log/slurmctld.stdout" 2>&1 &
echo "slurmctld $!" >> "$BASE/pids"
slurmd -D -f "$SLURM_CONF" >"$BASE/log/slurmd.stdout" 2>&1 &
echo "slurmd $!" >> "$BASE/pids"
for _ in $(seq 1 300); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.1; done
if [ "$(sinfo -h -o %T 2>/dev/null)" != idle ]; then
  echo "slurm did not come up; logs in $BASE/log" >&2
  sinfo >&2 || true
  tail -n 20 "$BASE"/log/*.log >&2 || true
  exit 1
fi
echo "export SLURM_CONF=$SLURM_CONF"
