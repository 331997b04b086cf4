#!/usr/bin/env bash
# The Python client's query_stream against a local flagshare, built fully optimised as
# bench/run.sh builds it (no second RocksDB build). Arguments go to query_stream.py.
#
#   clients/python/bench/run.sh                      # 1,000,000 digests, 10% flagged, 5 runs
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
CARGO_PROFILE_DEV_OPT_LEVEL=3 "$root/scripts/cargo" build --quiet --bin flagshare
binary="$(mktemp -d)/flagshare"
cp "$CARGO_TARGET_DIR/debug/flagshare" "$binary"
venv="${FLAGSHARE_PYTHON_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -e "$here"
fi
FLAGSHARE_BIN="$binary" "$venv/bin/python" "$here/bench/query_stream.py" "$@"
