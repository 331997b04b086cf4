#!/usr/bin/env bash
# flagshare against a Redis baseline, side by side, in one run: prints one table.
#
#   bench/run.sh                         # N = 10,000,000 digests
#   FLAGSHARE_BENCH_N=1000000 bench/run.sh
#
# Installs Debian's redis-server when it is missing (sudo when not root). flagshare is
# built fully optimised: the dev profile already builds every dependency (RocksDB
# included) at opt-level 3, and CARGO_PROFILE_DEV_OPT_LEVEL=3 raises flagshare itself,
# so no second 25-minute RocksDB build is needed for a release profile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "bench: installing Debian's redis-server" >&2
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
# The package may start a system Redis on 6379; the benchmark starts its own on a free port.

export CARGO_PROFILE_DEV_OPT_LEVEL=3
exec scripts/cargo bench --profile dev --bench versus_redis
