#!/usr/bin/env bash
# Prints sim/TOOLING.md's "Coverage on 1,000 seeds of every scenario" tables:
# the coverage table of a large run of every scenario, as markdown.
#
#   tools/coverage-tables.sh [path/to/kaelix] [jobs]
#
# Takes the release binary (default ./target/release/kaelix, built with
# `cargo build --release -p kaelix`, no planted bugs) and runs each scenario
# with its seed count below; each run must pass.
set -euo pipefail
kaelix="${1:-./target/release/kaelix}"
jobs="${2:-2}"
for entry in broadcast:1000 broker:1000 broker-durable:1000 broker-backpressure:1000 broker-plugins:1000 \
             membership-5:1000 membership-20:1000 membership-20-slow-node:1000 membership-100:100 \
             raft-partitions:2000 serve:500 serve-reload:1000 broker-replicated:300; do
    scenario="${entry%%:*}"
    seeds="${entry#*:}"
    out=$("$kaelix" sim run --scenario "$scenario" --seeds "$seeds" --quiet --jobs "$jobs")
    printf '### %s (%s seeds)\n```text\n' "$scenario" "$seeds"
    # Rows of the points this scenario reached, a count of the others,
    # then the points it reached but never fired (or whose assertion
    # never held).
    printf '%s\n' "$out" | sed -n '/^coverage over/,$p' | awk '
        /^coverage over/ || /^  kind / { print; next }
        /^  (buggify|sometimes) / { if ($5 > 0) print; else other++; next }
        /point\(s\) never fired:/ { print "  points of other scenarios never reached: " other+0; listing = 1; next }
        listing && /\(reached, never/ { print }
        END { if (!listing) print "  points of other scenarios never reached: " other+0 }'
    printf '```\n'
done
