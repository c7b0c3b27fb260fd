#!/usr/bin/env bash
# Runs the side-by-side benchmarks of issue 6: FleetMQ, Mosquitto and rumqttd driven by
# the same scenarios of fleetmq-bench, rounds alternating between the brokers, each
# broker a process of its own on this machine. Installs what it needs first:
#   - Mosquitto from the Debian package (apt-get install mosquitto),
#   - rumqttd 0.20.0 from crates.io (cargo install, into ~/.cache/fleetmq/rumqttd-0.20.0),
#   - release builds of fleetmq and fleetmq-bench.
# Results go to crates/bench/results/<scenario>-<revision>.json; BENCHMARKS.md says which rows came from
# which file.
#
#   scripts/bench-side-by-side.sh                 # every scenario built so far
#   CONNECTIONS=10000 scripts/bench-side-by-side.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/crates/bench/results}"
RUMQTTD_VERSION=0.20.0
RUMQTTD_ROOT="$HOME/.cache/fleetmq/rumqttd-$RUMQTTD_VERSION"
CONNECTIONS="${CONNECTIONS:-19000}"
RATE="${RATE:-5000}"
RUNS="${RUNS:-3}"

log() { echo "bench-side-by-side: $*" >&2; }

if [[ ! -x /usr/sbin/mosquitto ]]; then
    log "installing mosquitto (Debian package)"
    apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
    # The package starts a system broker on 1883; the benchmark runs its own.
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
if [[ ! -x "$RUMQTTD_ROOT/bin/rumqttd" ]]; then
    log "building rumqttd $RUMQTTD_VERSION from crates.io (a few minutes, once)"
    # Not --locked: its lock file pins a metrics release that today's rustc refuses.
    cargo install rumqttd --version "$RUMQTTD_VERSION" --root "$RUMQTTD_ROOT"
fi

log "building fleetmq and fleetmq-bench (release)"
cargo build --release -p fleetmq -p fleetmq-bench
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"

# Every connection is a file in the bench and in the broker: as many as allowed (the
# hard limit; raising that needs CAP_SYS_RESOURCE, which this sandbox does not give).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$OUT"
REVISION="$(git rev-parse --short HEAD)"

"$TARGET/fleetmq-bench" --fleetmq-bin "$TARGET/fleetmq" --fleetmq-revision "$REVISION" \
    --out "$OUT/connection-storm-$REVISION.json" \
    connection-storm --brokers fleetmq,mosquitto,rumqttd \
    --connections "$CONNECTIONS" --rate "$RATE" --runs "$RUNS"
