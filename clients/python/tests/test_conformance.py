"""Every case of docs/digest-v1-conformance.jsonl, which the Rust implementation writes."""

import json
import pathlib

import pytest

from flagshare_client import ConsortiumKey, Digester, InvalidIdentifier, normalize

CORPUS = pathlib.Path(__file__).resolve().parents[3] / "docs" / "digest-v1-conformance.jsonl"


def load():
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    cases = [json.loads(line) for line in lines[1:]]
    assert len(cases) == header["cases"]
    return header, cases


HEADER, CASES = load()
DIGESTER = Digester(ConsortiumKey(key_id=HEADER["key_id"], secret=bytes.fromhex(HEADER["key"])))


def test_corpus_is_large_and_covers_every_error_class():
    assert len(CASES) >= 3000
    classes = {case["error"] for case in CASES if "error" in case}
    assert {"empty", "space_or_control", "no_at", "many_at", "empty_local_part", "bad_domain", "too_long",
            "no_region", "bad_phone", "no_platform", "bad_platform", "empty_name", "bad_ip"} <= classes


def test_every_case():
    failures = []
    for n, case in enumerate(CASES, start=2):
        where = f"line {n} ({case['group']}, {case['kind']}, {ascii(case['input'])[:80]})"
        try:
            normal = normalize(case["kind"], case["input"], case["region"])
        except InvalidIdentifier as err:
            if case.get("error") != err.error_class:
                failures.append(f"{where}: raised {err.error_class} ({err.reason}), expected {case.get('normal', case.get('error'))!r}")
            continue
        if "error" in case:
            failures.append(f"{where}: gave {ascii(normal)}, expected error {case['error']}")
        elif normal != case["normal"]:
            failures.append(f"{where}: gave {ascii(normal)}, expected {ascii(case['normal'])}")
        elif DIGESTER.digest_normalized(case["kind"], normal).hex() != case["digest"]:
            failures.append(f"{where}: digest differs")
    assert not failures, f"{len(failures)} of {len(CASES)} cases fail:\n" + "\n".join(failures[:60])
