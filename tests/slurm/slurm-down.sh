#!/bin/bash
# Stops what slurm-up.sh started, by recorded PID, in reverse order.
BASE=${1:?usage: slurm-down.sh STATE_DIR}
[ -f "$BASE/pids" ] || exit 0
export SLURM_CONF=$BASE/etc/slurm.conf
# Cancel every job first: slurmstepd processes outlive slurmd otherwise.
scancel --partition=debug 2>/dev/null
for _ in $(seq 1 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
tac "$BASE/pids" | while read -r name pid; do
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$pid" 2>/dev/null && { echo "$name $pid did not stop, SIGKILL"; kill -KILL "$pid"; }
  echo "stopped $name $pid"
done
: > "$BASE/pids"
