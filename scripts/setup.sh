#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build flagshare, only when it is missing.
# The rocksdb crate runs bindgen on every build, and bindgen needs libclang plus clang's
# resource headers (stdbool.h). jemalloc (the server's allocator) is built by its
# configure script and make. Nothing else outside crates.io is needed: protos are
# compiled by the pure-Rust `protox` crate, so no protoc.
set -euo pipefail

have_libclang() {
  local lib
  lib=$(ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so* 2>/dev/null | head -n 1 || true)
  [ -n "$lib" ] || return 1
  ls /usr/lib/llvm-*/lib/clang/*/include/stdbool.h >/dev/null 2>&1
}

missing=()
have_libclang || missing+=(libclang-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing Debian's ${missing[*]} (libclang for RocksDB's bindings, make for jemalloc)" >&2
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
have_libclang || { echo "setup: libclang still not found after installing libclang-dev" >&2; exit 1; }
command -v make >/dev/null 2>&1 || { echo "setup: make still not found after installing it" >&2; exit 1; }
