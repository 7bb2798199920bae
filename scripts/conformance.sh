#!/usr/bin/env bash
# The main job: set-up, then the built-in conformance suites on the embedded local mesh.
# Extra arguments go to pytest (e.g. --mesh-report=report.yaml, -k reachability).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/scripts/setup.sh"
cd "$repo"
start=$(date +%s%N)
status=0
# The dev extra's pytest plugins (hypothesis, pytest-benchmark) serve the project's own tests;
# the suites need neither, and loading them costs ~0.5 s of a 20 s budget on a busy machine.
.venv/bin/pytest -p no:cacheprovider -p no:hypothesispytest -p no:benchmark conformance/ "$@" \
  || status=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf 'meshconform: conformance run took %d.%03d s (exit %d)\n' $((ms / 1000)) $((ms % 1000)) "$status"
exit "$status"
