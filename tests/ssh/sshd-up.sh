#!/usr/bin/env bash
# Starts a throwaway OpenSSH server on 127.0.0.1 for the SSH tests, as root:
# a temporary host key, key-only login for the test user `wsssh` (created if
# missing), everything under DIR. Prints `export WASMSPAWNER_TEST_SSH=DIR`.
# DIR holds: port, user, client_key, known_hosts, other_known_hosts (a wrong
# host key, for the strict-checking test), sshd.pid.
# Stop it with tests/ssh/sshd-down.sh DIR.
set -euo pipefail
DIR=${1:?usage: sshd-up.sh DIR}
# The first free port from 2222 up (unless PORT is given).
if [ -z "${PORT:-}" ]; then
  PORT=2222
  while (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
fi
TUSER=wsssh
command -v /usr/sbin/sshd >/dev/null || { echo "sshd-up: /usr/sbin/sshd missing: apt-get install openssh-server" >&2; exit 1; }
mkdir -p "$DIR"; chmod 700 "$DIR"
id "$TUSER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$TUSER"
usermod -p '*' "$TUSER"            # unlocked, no password: key login only
rm -f "$DIR"/host_key* "$DIR"/other_key* "$DIR"/client_key*
ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$DIR/other_key"
ssh-keygen -q -t ed25519 -N '' -f "$DIR/client_key"
HOME_DIR=$(getent passwd "$TUSER" | cut -d: -f6)
install -d -m 700 -o "$TUSER" -g "$TUSER" "$HOME_DIR/.ssh"
install -m 600 -o "$TUSER" -g "$TUSER" "$DIR/client_key.pub" "$HOME_DIR/.ssh/authorized_keys"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$DIR/host_key.pub")" > "$DIR/known_hosts"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$DIR/other_key.pub")" > "$DIR/other_known_hosts"
cat > "$DIR/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $PORT
HostKey $DIR/host_key
PidFile $DIR/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers $TUSER
UsePAM no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
CONF
mkdir -p /run/sshd
/usr/sbin/sshd -t -f "$DIR/sshd_config"
/usr/sbin/sshd -D -e -f "$DIR/sshd_config" > "$DIR/sshd.log" 2>&1 &
echo $! > "$DIR/sshd.pid.launch"
for _ in $(seq 1 50); do
  ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile="$DIR/known_hosts" -o StrictHostKeyChecking=yes \
      -i "$DIR/client_key" -p "$PORT" "$TUSER@127.0.0.1" true 2>/dev/null && break
  sleep 0.1
done
echo "$PORT" > "$DIR/port"; echo "$TUSER" > "$DIR/user"
echo "export WASMSPAWNER_TEST_SSH=$DIR"
