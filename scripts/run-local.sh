#!/usr/bin/env bash
# `make run`: the daemon on its embedded default, with a local broker when one can be had.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
host="${EDGE_AGENT_MQTT__HOST:-127.0.0.1}"
port="${EDGE_AGENT_MQTT__PORT:-1883}"
broker_pid=""

reachable() {
    .venv/bin/python - "$host" "$port" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

cleanup() {
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null
        wait "$broker_pid" 2>/dev/null
    fi
}
trap cleanup EXIT

if reachable; then
    echo "using the MQTT broker at $host:$port"
elif [ "$host" = 127.0.0.1 ] || [ "$host" = localhost ]; then
    scripts/ensure-mosquitto.sh 2>/dev/null || true
    mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    if [ -x "$mosquitto_bin" ]; then
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > .run/mosquitto.conf
        "$mosquitto_bin" -c .run/mosquitto.conf > .run/mosquitto.log 2>&1 &
        broker_pid=$!
        echo "started a local mosquitto on 127.0.0.1:$port (log: .run/mosquitto.log)"
    else
        echo "no MQTT broker at $host:$port and none could be installed:"
        echo "edge-agent runs anyway and keeps every message in its outbox until a broker appears."
    fi
else
    echo "the MQTT broker at $host:$port is not reachable yet; edge-agent buffers until it is."
fi

export EDGE_AGENT_STORAGE__PATH="${EDGE_AGENT_STORAGE__PATH:-.run/edge-agent.db}"
echo "database: $EDGE_AGENT_STORAGE__PATH   stop with Ctrl-C"
.venv/bin/edge-agent run "$@"
