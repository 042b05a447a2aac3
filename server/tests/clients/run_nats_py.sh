#!/usr/bin/env bash
# nats-py against a real `kaelix serve` process: the basics, then a client
# that stays connected across a drain (SIGTERM, exit 0) and a restart on the
# same data directory. Usage: run_nats_py.sh PATH/TO/kaelix
set -euo pipefail
KAELIX=$(realpath "$1")
cd "$(dirname "$0")"
VENV=${NATS_PY_VENV:-/tmp/kaelix-nats-py-venv}
if ! "$VENV/bin/python" -c 'import nats' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q nats-py==2.16.0
fi
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="nats://127.0.0.1:$PORT"
CONFIG="$DATA/kaelix.toml"
printf '[[topics]]\nname = "orders"\nstorage = "durable"\n' > "$CONFIG"
start() {
    "$KAELIX" serve --data-dir "$DATA/data" --config "$CONFIG" --nats-listen "127.0.0.1:$PORT" \
        --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >>"$DATA/serve.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do
        grep -q "NATS clients on" "$DATA/serve.log" && return 0
        sleep 0.05
    done
    echo "FAIL: kaelix serve did not start"; cat "$DATA/serve.log"; exit 1
}
stop() {
    kill -TERM "$SERVER"
    local rc=0
    wait "$SERVER" || rc=$?
    if [ "$rc" -ne 0 ]; then echo "FAIL: drain exited $rc"; cat "$DATA/serve.log"; exit 1; fi
    echo "ok: SIGTERM drained and exited 0"
}
start
"$VENV/bin/python" nats_py_check.py "$URL" basics
"$VENV/bin/python" nats_py_check.py "$URL" restart > "$DATA/restart.out" 2>&1 &
CLIENT=$!
for _ in $(seq 200); do grep -q READY-FOR-RESTART "$DATA/restart.out" && break; sleep 0.05; done
grep -q READY-FOR-RESTART "$DATA/restart.out" || { cat "$DATA/restart.out"; exit 1; }
: > "$DATA/serve.log"
stop
start
rc=0; wait "$CLIENT" || rc=$?
cat "$DATA/restart.out"
stop
rm -rf "$DATA"
exit "$rc"
