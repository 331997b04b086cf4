#!/usr/bin/env python3
"""How many digests per second the Python client's query_stream sustains against a local
`flagshare serve` (started here, on 127.0.0.1:0, with a fresh PKI), and Query beside it.

    clients/python/bench/run.sh              # builds flagshare optimised, then runs this
    python bench/query_stream.py --digests 1000000 --flags 100000 --runs 5

Each row is the median of --runs runs over the same digests; hits are digests one member
flagged, queried by another. Checks every run: the matches are exactly the flagged digests.
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from serve import Server  # noqa: E402

from flagshare_client import Client, Flag  # noqa: E402


def timed(label, runs, n, work, expect):
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        found = work()
        elapsed = time.perf_counter() - start
        if found != expect:
            sys.exit(f"{label}: {len(found)} matches, expected {len(expect)}: the benchmark's check failed")
        rates.append(n / elapsed)
    median = statistics.median(rates)
    print(f"{label:<44} {median:>12,.0f} digests/s   (runs: {', '.join(f'{r:,.0f}' for r in rates)})", flush=True)
    return median


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digests", type=int, default=1_000_000, help="digests per run (default 1,000,000)")
    parser.add_argument("--flags", type=int, default=100_000, help="flags loaded first (default 100,000)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.flags > args.digests:
        sys.exit("--flags must not exceed --digests")

    with tempfile.TemporaryDirectory() as scratch:
        root = pathlib.Path(scratch)
        server = Server(root / "data")
        try:
            for member in ("loader", "checker"):
                server.admin("member", "add", member, "--out", str(root / member))
            print(f"flagshare binary: {server.binary}")
            digests = [os.urandom(32) for _ in range(args.digests)]
            flagged = digests[:: max(1, args.digests // max(1, args.flags))][: args.flags]
            with Client.from_bundle(root / "loader", endpoint=server.endpoint) as loader:
                start = time.perf_counter()
                loader.submit([Flag(d, "email", "grooming", 80) for d in flagged], key_id=1)
                print(f"loaded {len(flagged):,} flags in {time.perf_counter() - start:.1f} s")
            misses = [os.urandom(32) for _ in range(args.digests)]
            flagged_set = set(flagged)
            hit_indexes = [i for i, d in enumerate(digests) if d in flagged_set]
            with Client.from_bundle(root / "checker", endpoint=server.endpoint) as checker:
                n = args.digests
                pct = 100 * len(flagged) // n
                timed(
                    "query_stream, 0% hits", args.runs, n,
                    lambda: [m.index for m in checker.query_stream(misses)], [],
                )
                timed(
                    f"query_stream, {pct}% hits", args.runs, n,
                    lambda: [m.index for m in checker.query_stream(digests)], hit_indexes,
                )
                timed(
                    f"query (unary, 10,000 per call), {pct}% hits", args.runs, n,
                    lambda: [m.index for m in checker.query(digests)], hit_indexes,
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
