#!/usr/bin/env bash
# Installs what the test suite needs, on a fresh Debian machine or a used one.
#
#   - Debian packages: mosquitto-clients (mosquitto_pub / mosquitto_sub) and, when the
#     python3 on PATH cannot create a virtual environment, python3-venv.
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

for cmd in mosquitto_pub mosquitto_sub "$PYTHON"; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is still missing after installation"
done
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || die "$PYTHON cannot create virtual environments (python3-venv missing?)"

# --- Python virtual environment ---------------------------------------------------------
[[ -f "$REQUIREMENTS" ]] || die "missing $REQUIREMENTS"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating virtual environment $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "python3 -m venv $VENV failed"
fi

# The stamp records which requirements (and which interpreter) the venv was filled from.
stamp_file="$VENV/.fleetmq-requirements.sha256"
want_stamp="$( { cat "$REQUIREMENTS"; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$stamp_file" 2>/dev/null || true)"

if [[ "$want_stamp" != "$have_stamp" ]]; then
    log "installing Python packages from ${REQUIREMENTS#"$ROOT"/}"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$REQUIREMENTS" || die "pip install -r $REQUIREMENTS failed"
    rm -f "$stamp_file"
fi

# Check every pin against what is really installed, whether pip ran or not.
"$VENV/bin/python" - "$REQUIREMENTS" <<'PY' || die "the virtual environment does not match the pins"
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
import paho.mqtt  # noqa: E402  (the import itself is part of the check)
import pytest  # noqa: E402,F401
if not version("paho-mqtt").startswith("2."):
    bad.append("paho-mqtt must be 2.x")
for b in bad:
    print(f"install-test-deps: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
echo "$want_stamp" >"$stamp_file"

log "ok: $(mosquitto_pub --help 2>/dev/null | head -n1 || true); venv $VENV"
