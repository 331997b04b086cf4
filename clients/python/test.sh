#!/usr/bin/env bash
# The Python client's tests, as CI runs them: a virtual environment with the package and
# its test dependencies from the package registry, a check that the generated gRPC modules
# match proto/, the unit tests (the whole conformance corpus among them) and the
# end-to-end tests against a real `flagshare serve`.
#
#   clients/python/test.sh        # after scripts/cargo build (or set FLAGSHARE_BIN)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${FLAGSHARE_PYTHON_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-dev.txt" -e "$here[test]"
"$venv/bin/python" "$here/generate.py" --check
cd "$here"
"$venv/bin/python" -m pytest -q
