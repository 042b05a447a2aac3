#!/usr/bin/env bash
# Share of a loaded `kaelix serve`'s CPU profile spent in tracing code, with
# tracing off and on, alternating: a figure a busy machine moves less than
# throughput (it is a share of the server's own samples). Per round and
# mode: a fresh release server, `kaelix bench pub --msgs 4000000 --size 16`
# (one publisher, every publish a root), `perf record -F 1999 -g` of the
# server for SECS seconds (default 7) from 1 s into the run, then the share
# of samples (self, as `perf report --no-children`) in symbols of
# opentelemetry*, tracing_opentelemetry, tracing_subscriber, tracing_core,
# prost, sharded_slab, `kaelix_server::trace` and `kaelix_telemetry::otlp`;
# and, apart, the kernel's page clearing (`clear_page_erms`: fresh pages
# faulted in), which the tracing export's allocations add. "on" exports to
# a Python sink on loopback that answers every OTLP POST 200. Code inlined
# into its callers (the root decision in the front ends) has no symbol of
# its own and is not in the share. Not run by CI; results in RESULTS.md.
# Usage: profile.sh PATH/TO/kaelix [ROUNDS]    (RATIO=r: "on"'s ratio;
# SERVE_ENV="NAME=VALUE ...": environment variables of the server only)
set -euo pipefail
K=$(realpath "$1")
ROUNDS=${2:-3}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK=$(free_port)
python3 - "$SINK" <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
printf '' >"$W/off.toml"
printf '[tracing]\nenabled = true\nendpoint = "http://127.0.0.1:%s/v1/traces"\n' "$SINK" >"$W/on.toml"
if [ -n "${RATIO:-}" ]; then printf 'sampling_ratio = %s\n' "$RATIO" >>"$W/on.toml"; fi
for _ in $(seq "$ROUNDS"); do
    for mode in off on; do
        D=$(mktemp -d -p "$W")
        PORT=$(free_port)
        env ${SERVE_ENV:-} "$K" serve --config "$W/$mode.toml" --data-dir "$D/data" --nats-listen "127.0.0.1:$PORT" --listen 127.0.0.1:0 \
            --metrics-listen 127.0.0.1:0 --log-level warn >"$D/log" 2>&1 &
        S=$!
        for _ in $(seq 100); do grep -qs "NATS clients on" "$D/log" && break; sleep 0.05; done
        "$K" bench --url "nats://127.0.0.1:$PORT" --quiet --json pub --msgs 4000000 --size 16 >/dev/null &
        B=$!
        sleep 1
        perf record -F 1999 -g -o "$D/perf.data" -p "$S" -- sleep "${SECS:-7}" >/dev/null 2>&1
        wait "$B" || true
        kill -TERM "$S"; wait "$S" || true
        printf '%s ' "$mode"
        perf report -i "$D/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | python3 -c '
import re, sys
pat = re.compile(r"opentelemetry|tracing_opentelemetry|tracing_subscriber|tracing_core|prost|sharded_slab|kaelix_server::trace|kaelix_telemetry::otlp")
samples, tracing, pages = 0, 0.0, 0.0
for line in sys.stdin:
    m = re.match(r"# Samples: (\d+)(K?)", line)
    if m and not samples: samples = int(m.group(1)) * (1000 if m.group(2) else 1)
    m = re.match(r"\s+([\d.]+)%\s+\[(.)\]\s+(.*)", line)
    if not m: continue
    share, where, sym = float(m.group(1)), m.group(2), m.group(3)
    if where == "k" and sym.startswith("clear_page"): pages += share
    elif where == "." and pat.search(sym): tracing += share
print(samples, f"{tracing:.2f}", f"{pages:.2f}")'
        rm -rf "$D"
    done
done | python3 -c '
import statistics, sys
rows = {"off": [], "on": []}
for line in sys.stdin:
    mode, samples, tracing, pages = line.split()
    rows[mode].append((float(tracing), float(pages)))
    print(f"{mode:3} ~{int(samples):>6} samples  tracing code {float(tracing):5.2f}%  kernel page clearing {float(pages):5.2f}%", flush=True)
for mode in ("off", "on"):
    t = statistics.mean(r[0] for r in rows[mode]); p = statistics.mean(r[1] for r in rows[mode])
    print(f"mean {mode:3}: tracing code {t:.2f}%, page clearing {p:.2f}%")'
