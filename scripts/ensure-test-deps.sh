#!/usr/bin/env bash
# System packages the test suite drives for real: a private mosquitto, a private D-Bus
# (the BlueZ double), systemd-analyze (unit verification), openssl (test CAs), and
# Debian's python3-systemd (the libsystemd notify path), promtool (Debian's prometheus: the
# /metrics exposition is checked with it) and Debian's chromium (the `edge-agent ui` page is
# tested in it through Playwright, which never downloads a browser of its own), and
# nats-server (its MQTT listener refuses MQTT 5: the protocol fallback is tested on it),
# rabbitmq-server (3.10's MQTT plugin closes an MQTT 5 CONNECT unanswered: the fallback is
# tested on a private node of it). That node keeps its Erlang cookie in its own HOME (a
# temporary directory) and registers with epmd on 127.0.0.1:4369, which Erlang starts
# when none runs and leaves running; the Debian package also starts a system node on
# 5672/25672, which the tests never use; and PostgreSQL's server binaries (the
# reference cloud consumer is tested on a private cluster started by the tests, never the
# machine's own).
set -euo pipefail
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v dbus-daemon >/dev/null || need+=(dbus-daemon)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v openssl >/dev/null || need+=(openssl)
[ -e /usr/lib/python3/dist-packages/systemd/daemon.py ] || need+=(python3-systemd)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing test dependencies: ${need[*]}" >&2
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
    echo "error: the tests need: ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
    exit 1
fi
