#!/usr/bin/env bash
# CI: scrape /metrics of a running `kaelix serve` while `kaelix bench`
# publishes to a stored topic, and pass every scrape through
# `promtool check metrics` (format and Prometheus' naming lints). promtool
# comes from Debian's prometheus package, unpacked (the daemon is not
# installed). Usage: promtool_under_load.sh PATH/TO/kaelix
set -euo pipefail
KAELIX=$(realpath "$1")
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
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "NATS clients on" "$WORK/serve.log" && break; sleep 0.05; done
grep -q "NATS clients on" "$WORK/serve.log" || { cat "$WORK/serve.log"; exit 1; }
URL="http://127.0.0.1:$METRICS_PORT"
curl -sf "$URL/healthz" | head -n 1
"$KAELIX" bench --url "nats://127.0.0.1:$NATS_PORT" --quiet pub --msgs 2000000 --size 64 bench >"$WORK/bench.log" &
BENCH=$!
for i in 1 2 3; do
    sleep 1
    curl -sf "$URL/metrics" >"$WORK/scrape-$i.txt"
    "$PROMTOOL" check metrics <"$WORK/scrape-$i.txt"
done
wait "$BENCH"
curl -sf "$URL/metrics" >"$WORK/scrape-final.txt"
"$PROMTOOL" check metrics <"$WORK/scrape-final.txt"
published() { awk '$1 == "kaelix_broker_published_messages_total" { print $2 }' "$1"; }
first=$(published "$WORK/scrape-1.txt")
final=$(published "$WORK/scrape-final.txt")
echo "published during the first scrape: $first, at the end: $final"
if [ "$final" != "2000000" ]; then echo "FAIL: expected 2000000 published messages in the final scrape"; exit 1; fi
if [ "$first" = "$final" ]; then echo "FAIL: the first scrape was not taken under load"; exit 1; fi
echo "ok: 4 scrapes under load pass promtool check metrics"
