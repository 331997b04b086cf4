#!/usr/bin/env python3
"""Recomputes the digests in docs/digest-v1-vectors.json with the Python `blake3` package,
independently of the Rust code, from the normal forms and the spec's key derivation.

    pip install blake3 && python3 scripts/check-digest-vectors.py
"""
import json
import pathlib
import sys

import blake3

CONTEXT = "flagshare 2026-11 identifier digest v1 "

doc = json.loads((pathlib.Path(__file__).parent.parent / "docs" / "digest-v1-vectors.json").read_text())
key = bytes.fromhex(doc["key"])
failures = 0
for vector in doc["vectors"]:
    kind_key = blake3.blake3(key, derive_key_context=CONTEXT + vector["kind"]).digest()
    digest = blake3.blake3(vector["normalized"].encode("utf-8"), key=kind_key).hexdigest()
    if digest != vector["digest"]:
        failures += 1
        print(f"MISMATCH {vector['kind']} {vector['normalized']!r}: {digest} != {vector['digest']}")
print(f"{len(doc['vectors']) - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
