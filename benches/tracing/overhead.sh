#!/usr/bin/env bash
# Throughput of `kaelix serve` with tracing off and on, side by side, metrics
# on in both: `kaelix bench pub|pubsub` against a fresh server per run,
# alternating off/on so drift in the machine's load hits both. "on" is
# `[tracing] enabled = true` at the default sampling ratio (0.001), exporting
# to a collector sink on loopback (a Python HTTP server that answers every
# OTLP POST 200 and counts the bytes, so the export really happens). Not run
# by CI (a measurement, not a check); results in benches/tracing/RESULTS.md.
# Besides throughput it reports the server's CPU time per message (utime +
# stime from /proc at the end of the run), which a busy machine disturbs less
# than wall-clock throughput.
# Usage: overhead.sh PATH/TO/kaelix [ROUNDS] [MSGS] [pub|pubsub]
# RATIO=r sets "on"'s sampling_ratio (default: the configuration's default).
# SERVE_ENV="NAME=VALUE ..." sets environment variables of the server only
# (e.g. SERVE_ENV=MIMALLOC_ALLOW_THP=0 or =1 for the allocator's huge pages).
set -euo pipefail
K=$(realpath "$1")
ROUNDS=${2:-5}
MSGS=${3:-2000000}
MODE=${4:-pub}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK=$(free_port)
python3 - "$SINK" "$W/sink.log" <<'PY' &
import http.server, sys
port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0)); self.rfile.read(n)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        log.write(f"{n}\n")
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
PY
printf '' >"$W/off.toml"
printf '[tracing]\nenabled = true\nendpoint = "http://127.0.0.1:%s/v1/traces"\n' "$SINK" >"$W/on.toml"
if [ -n "${RATIO:-}" ]; then printf 'sampling_ratio = %s\n' "$RATIO" >>"$W/on.toml"; fi
PORT=$(free_port)
for _ in $(seq "$ROUNDS"); do
    for mode in off on; do
        D=$(mktemp -d -p "$W")
        : >"$W/sink.log"
        env ${SERVE_ENV:-} "$K" serve --config "$W/$mode.toml" --data-dir "$D/data" --nats-listen "127.0.0.1:$PORT" --listen 127.0.0.1:0 \
            --metrics-listen 127.0.0.1:0 --log-level warn >"$D/log" 2>&1 &
        S=$!
        for _ in $(seq 100); do grep -qs "NATS clients on" "$D/log" && break; sleep 0.05; done
        rate=$("$K" bench --url "nats://127.0.0.1:$PORT" --quiet --json "$MODE" --msgs "$MSGS" --size 16 |
            python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_sec"]))')
        read -r -a stat <"/proc/$S/stat"
        ticks=$((stat[13] + stat[14]))
        kill -TERM "$S"; wait "$S" || true
        exported=$(awk '{s+=$1} END {print s+0}' "$W/sink.log")
        echo "$mode $rate $exported $ticks"
    done
done | python3 -c '
import os, sys, statistics
msgs, hz = int(sys.argv[1]), os.sysconf("SC_CLK_TCK")
runs, cpu = {"on": [], "off": []}, {"on": [], "off": []}
for line in sys.stdin:
    mode, rate, exported, ticks = line.split(); runs[mode].append(int(rate))
    ns = int(ticks) / hz * 1e9 / msgs; cpu[mode].append(ns)
    print(f"{mode:3} {int(rate):>12,} msgs/s  server CPU {ns:7.1f} ns/msg  {int(exported):>11,} OTLP bytes exported", flush=True)
on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
print(f"median msgs/s: off {off:,.0f}, on {on:,.0f}; on/off = {on/off:.4f} (throughput overhead {100*(1-on/off):+.2f}%)")
con, coff = statistics.median(cpu["on"]), statistics.median(cpu["off"])
print(f"median server CPU ns/msg: off {coff:.1f}, on {con:.1f}; on/off = {con/coff:.4f} (CPU overhead {100*(con/coff-1):+.2f}%)")' "$MSGS"
