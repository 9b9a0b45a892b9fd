#!/usr/bin/env bash
# Stops the sshd that sshd-up.sh started in DIR, by its PID.
DIR=${1:?usage: sshd-down.sh DIR}
pid=$(cat "$DIR/sshd.pid.launch" 2>/dev/null) || exit 0
kill -TERM "$pid" 2>/dev/null
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$pid" 2>/dev/null
# Sessions of the test user outlive the listener: end them too.
pkill -KILL -u "$(cat "$DIR/user" 2>/dev/null || echo wsssh)" 2>/dev/null; true
