#!/usr/bin/env bash
# Prints sim/TOOLING.md's "Shrinking every planted bug" table: for every
# planted bug, its first failing seed, `kaelix sim shrink` on it (faults and
# workload operations before and after, candidate runs, time, 1-minimality)
# and `kaelix sim replay --schedule` of the result (same check? identical
# trace hash?), as markdown rows.
#
#   tools/shrink-table.sh [path/to/kaelix]
#
# Takes a release binary with planted bugs (default ./target/release/kaelix,
# built with `cargo build --release -p kaelix --features planted-bugs`).
set -euo pipefail
kaelix="${1:-./target/release/kaelix}"
work=$(mktemp -d /tmp/kaelix-shrink-table.XXXXXX)
trap 'rm -rf "$work"' EXIT

bugs=$("$kaelix" sim list | grep -F '[planted bug]' | awk '{print $1}')
[ -n "$bugs" ] || { echo "shrink-table.sh: $kaelix lists no planted bug (build it with --features planted-bugs)" >&2; exit 2; }

echo '| planted bug | seed | faults before | after | fault runs | workload ops before | after | workload runs | time | 1-minimal | replay of shrunk schedule and workload |'
echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|'
for bug in $bugs; do
    seeds=200
    case "$bug" in raft-*) seeds=2000 ;; esac
    "$kaelix" sim run --scenario "$bug" --seeds "$seeds" --no-determinism-check --quiet > "$work/run.log" || true
    seed=$(grep -m1 'FAILED seed' "$work/run.log" | sed 's/.*FAILED seed \([0-9]*\):.*/\1/' || true)
    if [ -z "$seed" ]; then
        echo "| $bug | not caught in $seeds seeds | | | | | | | | | |"
        continue
    fi
    "$kaelix" sim shrink --scenario "$bug" --seed "$seed" --out "$work/s.json" --quiet --max-seconds 120 > "$work/shrink.log" || true
    # shrunk      41 -> 8 faults in 36 candidate runs, 35.7 s (1-minimal)
    read -r f_before f_after f_runs secs < <(sed -n 's/^shrunk *\([0-9]*\) -> \([0-9]*\) faults in \([0-9]*\) candidate runs, \([0-9.]*\) s.*/\1 \2 \3 \4/p' "$work/shrink.log")
    minimal="faults: $(grep -q '^shrunk.*(1-minimal)' "$work/shrink.log" && echo yes || echo NO)"
    if grep -q '^workload    not shrunk' "$work/shrink.log"; then
        w_before="— (no client operations)"; w_after="—"; w_runs="—"
    else
        read -r w_before w_after w_runs < <(sed -n 's/^workload *\([0-9]*\) -> \([0-9]*\) operations in \([0-9]*\) candidate runs.*/\1 \2 \3/p' "$work/shrink.log")
        minimal="$minimal, workload: $(grep -q '^workload.*(1-minimal)' "$work/shrink.log" && echo yes || echo NO)"
    fi
    "$kaelix" sim replay --scenario "$bug" --seed "$seed" --schedule "$work/s.json" > "$work/replay.log" || true
    same=$(grep -q 'same check fails' "$work/replay.log" && echo "same check" || echo "NOT the same check")
    hash=$(grep -q '(identical)' "$work/replay.log" && echo "identical hash" || echo "DIFFERENT hash")
    echo "| $bug | $seed | $f_before | $f_after | $f_runs | $w_before | $w_after | $w_runs | ${secs}s | $minimal | $same, $hash |"
done
