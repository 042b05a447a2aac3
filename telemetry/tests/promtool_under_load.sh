#!/usr/bin/env bash
# CI: scrape /metrics of a running `kaelix serve` while `kaelix bench`
# publishes to a stored topic, and pass every scrape through
# `promtool check metrics` (format and Prometheus' naming lints). promtool
# comes from Debian's prometheus package, unpacked (the daemon is not
# installed). Usage: promtool_under_load.sh PATH/TO/kaelix
set -euo pipefail
KAELIX=$(realpath "$1")
MSGS=${MSGS:-3000000}
WORK=$(mktemp -d)
PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    (cd "$WORK" && { apt-get download prometheus >/dev/null 2>&1 || { $SUDO apt-get update -qq && apt-get download prometheus >/dev/null; }; })
    dpkg -x "$WORK"/prometheus_*.deb "$WORK/prometheus"
    PROMTOOL="$WORK/prometheus/usr/bin/promtool"
fi
"$PROMTOOL" --version | head -n 1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(free_port)
METRICS_PORT=$(free_port)
printf '[[topics]]\nname = "bench"\nstorage = "durable"\n' > "$WORK/kaelix.toml"
"$KAELIX" serve --data-dir "$WORK/data" --config "$WORK/kaelix.toml" --nats-listen "127.0.0.1:$NATS_PORT" \
    --listen 127.0.0.1:0 --metrics-listen "127.0.0.1:$METRICS_PORT" --log-level warn >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do grep -q "NATS clients on" "$WORK/serve.log" && break; sleep 0.05; done
grep -q "NATS clients on" "$WORK/serve.log" || { cat "$WORK/serve.log"; exit 1; }
URL="http://127.0.0.1:$METRICS_PORT"
curl -sf "$URL/healthz" | head -n 1
"$KAELIX" bench --url "nats://127.0.0.1:$NATS_PORT" --quiet pub --msgs "$MSGS" --size 16 bench >"$WORK/bench.log" &
BENCH=$!
published() { awk '$1 == "kaelix_broker_published_messages_total" { print $2 }' "$1"; }
# Scrape every 0.2 s while the load runs; each scrape must pass promtool.
under_load=0
scrapes=0
while kill -0 "$BENCH" 2>/dev/null; do
    scrapes=$((scrapes + 1))
    curl -sf "$URL/metrics" >"$WORK/scrape.txt"
    "$PROMTOOL" check metrics <"$WORK/scrape.txt"
    n=$(published "$WORK/scrape.txt")
    if [ "$n" -gt 0 ] && [ "$n" -lt "$MSGS" ]; then under_load=$((under_load + 1)); fi
    sleep 0.2
done
wait "$BENCH"
curl -sf "$URL/metrics" >"$WORK/scrape.txt"
"$PROMTOOL" check metrics <"$WORK/scrape.txt"
final=$(published "$WORK/scrape.txt")
echo "scrapes: $scrapes during the load ($under_load mid-load), published at the end: $final"
if [ "$final" != "$MSGS" ]; then echo "FAIL: expected $MSGS published messages in the final scrape"; exit 1; fi
if [ "$under_load" -lt 2 ]; then echo "FAIL: fewer than 2 scrapes were taken while messages were arriving"; exit 1; fi
grep -E '^kaelix_(storage_syncs_total|server_received_bytes_total|executor_polls_total|process_allocations_total|thread_cpu_seconds)' "$WORK/scrape.txt" | head -n 12
echo "ok: $((scrapes + 1)) scrapes under load pass promtool check metrics"
