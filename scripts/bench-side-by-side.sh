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
#   scripts/bench-side-by-side.sh                 # every scenario, 3 rounds (about 50 min)
#   SCENARIOS="fan-in fan-out" RUNS=1 scripts/bench-side-by-side.sh
#   SCENARIOS=point-to-point P2P_VARIANTS="0-16 1-16" STEP_FACTOR=1.1 P2P_START_RATE=25000 \
#       SUFFIX=-fine BROKERS=fleetmq,mosquitto scripts/bench-side-by-side.sh
#   CONNECTIONS=50000 scripts/bench-side-by-side.sh  # where the open-files limit allows
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/crates/bench/results}"
RUMQTTD_VERSION=0.20.0
RUMQTTD_ROOT="$HOME/.cache/fleetmq/rumqttd-$RUMQTTD_VERSION"
CONNECTIONS="${CONNECTIONS:-19000}"
RATE="${RATE:-5000}"
RUNS="${RUNS:-3}"
BROKERS="${BROKERS:-fleetmq,mosquitto,rumqttd}"
SCENARIOS="${SCENARIOS:-connection-storm point-to-point fan-out fan-in persistent}"
# Each run waits (up to 20 s) for the 1-minute load to fall to this first; the JSON
# records the load each run started at. A run that saturates both cores leaves the
# 1-minute average near 2 for a while, hence the default.
MAX_LOAD="${MAX_LOAD:-2.5}"
# Appended to every result file's name, to keep a second pass beside the first
# (SUFFIX=-fine).
SUFFIX="${SUFFIX:-}"

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
ROWS="$OUT/side-by-side-$REVISION$SUFFIX.md"

plot() { echo "$OUT/$1$SUFFIX-$REVISION.svg"; }

# One scenario: its JSON, its printed summary, its markdown rows and ratios into $ROWS.
# Its files are named "$1$SUFFIX-$REVISION" (plot() names the plot the same way).
bench() {
    local name="$1$SUFFIX"
    shift
    log "$name"
    set +e
    "$TARGET/fleetmq-bench" --fleetmq-bin "$TARGET/fleetmq" --fleetmq-revision "$REVISION" \
        --max-load "$MAX_LOAD" --load-wait 20s \
        --out "$OUT/$name-$REVISION.json" "$@" | tee "$OUT/$name-$REVISION.txt"
    # 2: the runs went through but saw broker problems (listed in the JSON): recorded, go on.
    local status="${PIPESTATUS[0]}"
    set -e
    if [[ "$status" != 0 && "$status" != 2 ]]; then
        log "$name failed (exit $status)"
        exit "$status"
    fi
    {
        echo
        echo "### $name"
        echo
        sed -n 's/^  \(|.*|\)$/\1/p' "$OUT/$name-$REVISION.txt"
        grep '^  fleetmq/' "$OUT/$name-$REVISION.txt" | sed 's/^  /- /' || true
        # Scenarios without peers (persistent) print one median line per figure.
        grep -E '^  [^ |].* median ' "$OUT/$name-$REVISION.txt" | sed 's/^  /- /' || true
    } >>"$ROWS"
}

# The traffic sweeps: each step 0.5 s warm-up, 2 s measured, 0.5 s for late messages;
# the rate grows by STEP_FACTOR a step. A finer sweep around the knee tells a target
# between two steps of 1.25 (STEP_FACTOR=1.1 P2P_START_RATE=25000, FANIN_START_RATE=50000).
STEP_FACTOR="${STEP_FACTOR:-1.25}"
P2P_START_RATE="${P2P_START_RATE:-5000}"
FANIN_START_RATE="${FANIN_START_RATE:-4000}"
# point-to-point variants, qos-payload
P2P_VARIANTS="${P2P_VARIANTS:-0-16 0-256 1-16 1-256}"
STEPS=(--warmup 500ms --step 2s --drain 500ms --step-factor "$STEP_FACTOR" --runs "$RUNS")
echo "# Side by side, revision $REVISION ($(date -u +%F)), $RUNS rounds" >"$ROWS"
for scenario in $SCENARIOS; do
    case "$scenario" in
        connection-storm)
            bench connection-storm connection-storm --brokers "$BROKERS" \
                --connections "$CONNECTIONS" --rate "$RATE" --runs "$RUNS"
            ;;
        point-to-point)
            for variant in $P2P_VARIANTS; do
                qos="${variant%-*}"
                payload="${variant#*-}"
                bench "point-to-point-q$qos-$payload" point-to-point --brokers "$BROKERS" \
                    --qos "$qos" --payload "$payload" --start-rate "$P2P_START_RATE" "${STEPS[@]}" \
                    --plot "$(plot "point-to-point-q$qos-$payload")"
            done
            ;;
        fan-out)
            for publishers in 1 5; do
                bench "fan-out-$publishers" fan-out --brokers "$BROKERS" \
                    --publishers "$publishers" --start-rate 20 --max-steps 32 "${STEPS[@]}" \
                    --plot "$(plot "fan-out-$publishers")"
            done
            ;;
        fan-in)
            bench fan-in fan-in --brokers "$BROKERS" --start-rate "$FANIN_START_RATE" \
                "${STEPS[@]}" --plot "$(plot fan-in)"
            ;;
        persistent)
            # FleetMQ only: three nodes, 10% of the subscribers offline for 30 s.
            bench persistent-3-nodes persistent-qos1 --nodes 3 --publishers 30 \
                --subscribers 100 --rate 3000 --warmup 5s --duration 45s \
                --offline-fraction 0.1 --offline-at 5s --offline-for 30s --runs "$RUNS"
            ;;
        *)
            log "unknown scenario $scenario"
            exit 2
            ;;
    esac
done
log "rows and ratios: $ROWS"
