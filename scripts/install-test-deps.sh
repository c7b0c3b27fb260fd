#!/usr/bin/env bash
# Installs what the test suite needs, on a fresh Debian machine or a used one.
#
#   - Debian packages: mosquitto-clients (mosquitto_pub / mosquitto_sub), openssl (test
#     certificates), a JDK and Maven (Kafka) and, when the
#     python3 on PATH cannot create a virtual environment, python3-venv.
#   - cargo-fuzz (for crates/codec/fuzz/run.sh), when `cargo +nightly fuzz` does not run.
#   - helm (for the Helm chart checks), built with `go install` when missing.
#   - A Python virtual environment at $FLEETMQ_VENV (default: <repo>/.venv) with the exact
#     versions pinned in tests/python/requirements.txt.
#
# Idempotent and fast when everything is already there: apt is not touched when the
# commands exist, pip is not run when the venv already holds the pinned requirements.
# Anything that cannot be installed makes the script exit non-zero.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLEETMQ_VENV:-$ROOT/.venv}"
REQUIREMENTS="$ROOT/tests/python/requirements.txt"
PYTHON="${PYTHON:-python3}"

log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- Debian packages --------------------------------------------------------------------
apt_packages=()
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
    apt_packages+=(mosquitto-clients)
fi
command -v "$PYTHON" >/dev/null 2>&1 || apt_packages+=(python3)
# The TLS listener tests make their certificates with the openssl command-line tool.
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
# The Kafka bridge tests run a real Apache Kafka (deploy/kafka/kafka.sh): a JDK 17 or
# newer runs it, Maven fetches it from Maven Central.
java_major() {
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
}
if ! command -v java >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1 \
    || [[ "$(java_major)" -lt 17 ]]; then
    apt_packages+=(default-jdk-headless)
fi
command -v mvn >/dev/null 2>&1 || apt_packages+=(maven)
if command -v "$PYTHON" >/dev/null 2>&1 && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_packages+=(python3-venv)
fi

if ((${#apt_packages[@]})); then
    log "installing Debian packages: ${apt_packages[*]}"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${apt_packages[*]}"
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q || die "apt-get update failed"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${apt_packages[@]}" \
        || die "apt-get install ${apt_packages[*]} failed"
fi

for cmd in mosquitto_pub mosquitto_sub openssl "$PYTHON" java javac mvn; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is still missing after installation"
done
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || die "$PYTHON cannot create virtual environments (python3-venv missing?)"

# --- cargo-fuzz, for crates/codec/fuzz/run.sh (cargo fuzz needs the nightly toolchain) ---
CARGO_FUZZ_VERSION=0.13.2
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    rustup toolchain list 2>/dev/null | grep -q '^nightly' \
        || die "the nightly Rust toolchain is missing (cargo fuzz needs it)"
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo +nightly install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz \
        || die "cargo install cargo-fuzz failed"
    cargo +nightly fuzz --version >/dev/null 2>&1 || die "cargo fuzz does not run after install"
fi

# --- helm, for the chart checks (tests/python/test_deploy.py): built from the Go module
# proxy (no prebuilt binaries can be downloaded here), once; cached in $(go env GOPATH)/bin.
HELM_VERSION=v3.22.0
GOBIN_DIR="$(go env GOPATH 2>/dev/null)/bin"
if ! "$GOBIN_DIR/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    command -v go >/dev/null 2>&1 || die "Go is needed to build helm (golang from Debian, or the Go toolchain)"
    log "building helm $HELM_VERSION from the Go module proxy (a few minutes, once)"
    go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "go install helm failed"
fi

# --- Apache Kafka for the bridge tests (jars from Maven Central, cached) ------------------
bash "$ROOT/deploy/kafka/kafka.sh" fetch || die "fetching Apache Kafka from Maven Central failed"

# --- Python virtual environment ---------------------------------------------------------
[[ -f "$REQUIREMENTS" ]] || die "missing $REQUIREMENTS"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating virtual environment $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "python3 -m venv $VENV failed"
fi

# Checks every pin against what is really installed in the venv.
check_pins() {
    "$VENV/bin/python" - "$REQUIREMENTS" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    if not want:
        bad.append(f"{line}: not pinned with ==")
        continue
    try:
        have = version(name.strip())
    except PackageNotFoundError:
        bad.append(f"{name}: not installed")
        continue
    if have != want.strip():
        bad.append(f"{name}: {have} installed, {want} pinned")
try:
    import paho.mqtt  # noqa: F401
    import pytest  # noqa: F401
    if not version("paho-mqtt").startswith("2."):
        bad.append("paho-mqtt must be 2.x")
except Exception as e:  # noqa: BLE001
    bad.append(f"import failed: {e!r}")
for b in bad:
    print(f"install-test-deps: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# The stamp records which requirements (and which interpreter) the venv was filled from;
# pip runs when it differs or when the installed packages do not match the pins.
stamp_file="$VENV/.fleetmq-requirements.sha256"
want_stamp="$( { cat "$REQUIREMENTS"; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$stamp_file" 2>/dev/null || true)"

if [[ "$want_stamp" != "$have_stamp" ]] || ! check_pins 2>/dev/null; then
    log "installing Python packages from ${REQUIREMENTS#"$ROOT"/}"
    rm -f "$stamp_file"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$REQUIREMENTS" || die "pip install -r $REQUIREMENTS failed"
    check_pins || die "the virtual environment $VENV does not match the pins after pip install"
fi
echo "$want_stamp" >"$stamp_file"

log "ok: $(command -v mosquitto_pub), $(command -v mosquitto_sub); venv $VENV with" \
    "$("$VENV/bin/python" -c 'from importlib.metadata import version as v; print("paho-mqtt", v("paho-mqtt"), "pytest", v("pytest"))')"
