#!/usr/bin/env bash
# Import against seed on the embedded store, and the memory of a 1M-row import and export
# (issue #18). Prints figures; not a test.
#
#   bash bench/import.sh                      # 1M rows, 10k users
#   ROWS=100000 bash bench/import.sh          # smaller
#   BUILD="flock /tmp/lock cargo build --release" bash bench/import.sh   # how to build
#   GORGON_BIN=path/to/gorgon bash bench/import.sh   # a binary already built
#
# In one run: builds the release binary; `gorgon seed` of ROWS items into a fresh store (its
# items/s, which skips parsing and validation); a CSV of ROWS rows generated in time order with
# random owners among USERS users (as an export of another system would be: no id column, so
# every id is derived); `gorgon import items` of it into a fresh store holding those users, with
# --on-error abort (the default; on the embedded store one pass, whose stage is dropped if a row
# is bad) and with --on-error skip; then `gorgon export items` of the imported store. Peak RSS by
# /usr/bin/time -v.
set -euo pipefail

ROWS=${ROWS:-1000000}
USERS=${USERS:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BUILD=${BUILD:-cargo build --release}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gorgon-import-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ -z "${GORGON_BIN:-}" ]; then
    (cd "$ROOT" && $BUILD)
    GORGON_BIN="$TARGET/release/gorgon"
fi
# A copy: a shared target directory's binary may be replaced by another build meanwhile.
cp "$GORGON_BIN" "$WORK/gorgon"
G="$WORK/gorgon"
export RUST_LOG=warn

# Runs a command under /usr/bin/time -v; prints its output, keeps its peak RSS in $WORK/rss.
measured() {
    /usr/bin/time -v -o "$WORK/time.txt" "$@" | tee "$WORK/out.txt"
    awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$WORK/time.txt" >"$WORK/rss"
}

echo "== seed: $USERS users, $ROWS items"
measured "$G" seed --users "$USERS" --items "$ROWS" --data "$WORK/seeded"
SEED_RATE=$(sed -n 's/.*: \([0-9]*\) items\/s.*/\1/p' "$WORK/out.txt")
SEED_RSS=$(cat "$WORK/rss")
rm -rf "$WORK/seeded"

echo "== the import's store: $USERS users, no items"
"$G" seed --users "$USERS" --items 0 --data "$WORK/users" --quiet --user-ids-out "$WORK/users.txt" >/dev/null
cp -r "$WORK/users" "$WORK/users-skip"

echo "== a CSV of $ROWS rows"
python3 - "$WORK/users.txt" "$WORK/items.csv" "$ROWS" <<'EOF'
import csv, random, sys, time
users = open(sys.argv[1]).read().split()
rows = int(sys.argv[3])
words = ("river mountain coffee market signal harbor garden engine winter summer orbit lantern "
         "forest copper violet thunder meadow canyon pixel rocket ember glacier marble quartz "
         "falcon tiger otter maple cedar willow sparrow comet nebula prairie delta lagoon").split()
rng = random.Random(18)
start = 1_700_000_000_000
with open(sys.argv[2], "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["owner", "ts", "title", "body", "url", "lat", "lon", "keywords"])
    for n in range(rows):
        ms = start + n * 2000 + rng.randrange(2000)
        secs, milli = divmod(ms, 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03dZ" % milli
        out.writerow([
            rng.choice(users), ts,
            " ".join(rng.choices(words, k=rng.randrange(3, 7))),
            " ".join(rng.choices(words, k=rng.randrange(16, 26))),
            "https://example.com/%d" % n,
            "%.5f" % rng.uniform(-60, 70), "%.5f" % rng.uniform(-180, 180),
            "|".join(rng.sample(words, rng.randrange(1, 4))),
        ])
EOF
ls -la "$WORK/items.csv" | awk '{ printf "%.0f MB\n", $5 / 1e6 }'

echo "== import, --on-error abort (the default: on the embedded store one pass, the stage dropped if a row is bad)"
measured "$G" import items "$WORK/items.csv" --data "$WORK/users" --quiet
ABORT_RATE=$(sed -n 's/.*(\([0-9]*\) rows\/s).*/\1/p' "$WORK/out.txt")
ABORT_RSS=$(cat "$WORK/rss")

echo "== import, --on-error skip (one pass)"
measured "$G" import items "$WORK/items.csv" --data "$WORK/users-skip" --on-error skip --quiet
SKIP_RATE=$(sed -n 's/.*(\([0-9]*\) rows\/s).*/\1/p' "$WORK/out.txt")
SKIP_RSS=$(cat "$WORK/rss")
rm -rf "$WORK/users-skip"

echo "== the same file again (nothing to store)"
measured "$G" import items "$WORK/items.csv" --data "$WORK/users" --on-error skip --quiet
AGAIN_RATE=$(sed -n 's/.*(\([0-9]*\) rows\/s).*/\1/p' "$WORK/out.txt")

echo "== export of the $ROWS imported items"
measured "$G" export items --data "$WORK/users" --format csv --out "$WORK/export.csv" --quiet
EXPORT_RATE=$(sed -n 's/.*(\([0-9]*\)\/s).*/\1/p' "$WORK/out.txt")
EXPORT_RSS=$(cat "$WORK/rss")

echo
echo "| what | rows/s | peak RSS |"
echo "| --- | --- | --- |"
echo "| seed $ROWS items | $SEED_RATE | $SEED_RSS MiB |"
echo "| import $ROWS rows, --on-error abort | $ABORT_RATE | $ABORT_RSS MiB |"
echo "| import $ROWS rows, --on-error skip | $SKIP_RATE | $SKIP_RSS MiB |"
echo "| the same file again (all existing) | $AGAIN_RATE | |"
echo "| export $ROWS items as CSV | $EXPORT_RATE | $EXPORT_RSS MiB |"
awk -v a="$ABORT_RATE" -v s="$SKIP_RATE" -v seed="$SEED_RATE" \
    'BEGIN { printf "import / seed: %.2fx (abort), %.2fx (skip); goal >= 0.5x\n", a / seed, s / seed }'
