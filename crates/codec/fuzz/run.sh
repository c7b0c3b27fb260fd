#!/usr/bin/env bash
# Fuzzes the codec's decoder for SECONDS seconds (default 60), starting from
# the committed seed corpus. Usage: crates/codec/fuzz/run.sh [SECONDS]
set -euo pipefail

seconds="${1:-60}"
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install --locked cargo-fuzz
fi

# New inputs go to a scratch directory listed first, so the committed seed
# corpus stays small; crashes land in artifacts/decode/.
work="corpus-work/decode"
mkdir -p "$work"
cargo +nightly fuzz run decode "$work" corpus/decode -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10
