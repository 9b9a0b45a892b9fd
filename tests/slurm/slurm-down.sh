#!/bin/bash
# Stops what slurm-up.sh started, by recorded PID, in reverse order.
BASE=${1:?usage: slurm-down.sh STATE_DIR}
[ -f "$BASE/pids" ] || exit 0
export SLURM_CONF=$BASE/etc/slurm.conf
# Cancel every job first: slurmstepd processes outlive slurmd otherwise.
timeout 5 scancel --partition=debug 2>/dev/null
for _ in $(seq 1 50); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
# TERM all at once (each takes ~2 s to stop; the state is throwaway), then
# wait for each and KILL what is still there after 5 s.
tac "$BASE/pids" | while read -r _ pid; do kill -TERM "$pid" 2>/dev/null || true; done
tac "$BASE/pids" | while read -r name pid; do
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then echo "$name $pid did not stop, SIGKILL"; kill -KILL "$pid"; fi
  echo "stopped $name $pid"
done
: > "$BASE/pids"
