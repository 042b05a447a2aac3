#!/usr/bin/env bash
# Throughput of kaelix serve with metrics on and off, side by side:
# `kaelix bench pub` against a fresh server per run, alternating on/off so
# drift in the machine's load hits both. Not run by CI (a measurement, not a
# check); see telemetry/BENCH.md. Usage: metrics_overhead.sh PATH/TO/kaelix [ROUNDS] [MSGS]
set -euo pipefail
K=$(realpath "$1")
ROUNDS=${2:-5}
MSGS=${3:-3000000}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for _ in $(seq "$ROUNDS"); do
    for mode in on off; do
        D=$(mktemp -d)
        extra=(--metrics-listen 127.0.0.1:0)
        if [ "$mode" = off ]; then extra=(--no-metrics); fi
        "$K" serve --data-dir "$D/data" --nats-listen "127.0.0.1:$PORT" --listen 127.0.0.1:0 --log-level warn "${extra[@]}" >"$D/log" 2>&1 &
        S=$!
        for _ in $(seq 100); do grep -qs "NATS clients on" "$D/log" && break; sleep 0.05; done
        rate=$("$K" bench --url "nats://127.0.0.1:$PORT" --quiet --json pub --msgs "$MSGS" --size 16 |
            python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_sec"]))')
        echo "$mode $rate"
        kill -TERM "$S"; wait "$S" || true; rm -rf "$D"
    done
done | python3 -c '
import sys, statistics
runs = {"on": [], "off": []}
for line in sys.stdin:
    mode, rate = line.split(); runs[mode].append(int(rate)); print(line.strip(), flush=True)
on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
print(f"median msgs/s: on {on:,.0f}, off {off:,.0f}; on/off = {on/off:.4f}")'
