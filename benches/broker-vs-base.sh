#!/usr/bin/env bash
# The broker bench's side-by-side table (Kaelix, tokio broadcast, crossbeam)
# built at a base commit and at the working tree, run alternately so both
# see the same machine load; prints the publish -> deliver rows of each run.
#
#   benches/broker-vs-base.sh [BASE] [ROUNDS]
#
# BASE defaults to 3d62dd2 (before issue 11's storage work), ROUNDS to 3.
# Each side builds in its own target directory (the first build of the base
# is cold: about 5-10 min on 2 cores); BASE_TREE and BASE_TARGET_DIR name an
# existing checkout of BASE and its target directory to reuse them. Compare medians: the machine is
# shared and noisy. The peers' columns move too: they carry the same
# `Message` type, so a smaller `Message` speeds them up as well.
set -euo pipefail
base=${1:-3d62dd2}
rounds=${2:-3}
root=$(git rev-parse --show-toplevel)
scratch=${TMPDIR:-/tmp}/kaelix-broker-vs-base
mkdir -p "$scratch"
wt=${BASE_TREE:-$scratch/tree-$base}
if [ ! -d "$wt" ]; then
    git -C "$root" worktree add -q --detach "$wt" "$base"
fi

# Builds the broker bench in $1 with target dir $2; prints its executable.
build() {
    (cd "$1" && CARGO_TARGET_DIR="$2" cargo bench -p kaelix-benches --bench broker --no-run \
        --message-format=json 2>/dev/null) |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "broker" and m.get("executable"):
        print(m["executable"])'
}

base_bin=$(build "$wt" "${BASE_TARGET_DIR:-$scratch/target-base}")
head_bin=$(build "$root" "${CARGO_TARGET_DIR:-$root/target}")
echo "base $base: $base_bin"
echo "head $(git -C "$root" rev-parse --short HEAD) (+ working tree): $head_bin"
for round in $(seq 1 "$rounds"); do
    for side in base head; do
        bin=$base_bin
        [ "$side" = head ] && bin=$head_bin
        echo "== round $round, $side"
        # An argument that matches no criterion bench: only the table runs.
        "$bin" zzznomatch 2>&1 | grep -E '^  (1->|load average|build \(|clone \+ stamp)'
    done
done
