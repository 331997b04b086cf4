#!/usr/bin/env python3
"""Bulk flag upload from a CSV file, with progress.

    python bulk_upload.py --bundle platform-a --key consortium.key flags.csv

The CSV has a header row with an `identifier` column and optional `kind` (default --kind),
`category` (default --category), `confidence` (default 100), `reference` and `region`
columns. Every line is digested first; lines that cannot be (an invalid identifier, an
unknown category) are listed by line number and nothing is sent unless --skip-invalid is
given. Flags go in batches of 10,000; a failed batch stops the upload and says how many
flags were stored before it (re-running is safe: a flag submitted twice is updated).
"""

import argparse
import csv
import sys
import time

from flagshare_client import Category, Client, ConsortiumKey, Digester, Flag, FlagshareError, InvalidIdentifier


def read_flags(path, digester, default_kind, default_category, default_region):
    flags, problems = [], []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "identifier" not in reader.fieldnames:
            sys.exit(f"{path}: the header row has no 'identifier' column")
        for row in reader:
            line = reader.line_num
            try:
                kind = (row.get("kind") or default_kind).strip()
                category = Category((row.get("category") or default_category).strip().lower())
                confidence = int(row.get("confidence") or 100)
                digest = digester.digest(kind, row["identifier"] or "", (row.get("region") or default_region) or None)
                flags.append(Flag(digest, kind, category, confidence, reference=(row.get("reference") or "")))
            except (InvalidIdentifier, ValueError) as err:
                problems.append(f"line {line}: {err}")
    return flags, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--endpoint")
    parser.add_argument("--kind", default="email")
    parser.add_argument("--category", default="grooming")
    parser.add_argument("--region")
    parser.add_argument("--skip-invalid", action="store_true", help="send the valid lines even if some are not")
    args = parser.parse_args()

    key = ConsortiumKey.load(args.key)
    flags, problems = read_flags(args.csv, Digester(key), args.kind, args.category, args.region)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems and not args.skip_invalid:
        print(f"{len(problems)} line(s) cannot be sent; nothing was sent (fix them or pass --skip-invalid)", file=sys.stderr)
        return 1

    created = updated = quarantined = 0
    start = time.monotonic()
    with Client.from_bundle(args.bundle, endpoint=args.endpoint) as client:
        for offset in range(0, len(flags), 10_000):
            batch = flags[offset : offset + 10_000]
            try:
                result = client.submit(batch, key_id=key.key_id)
            except FlagshareError as err:
                print(f"\nstopped: {err.message} ({err.code.name}); {offset} flag(s) were stored before", file=sys.stderr)
                return 1
            created += result.n_created
            updated += result.n_updated
            quarantined += result.n_quarantined
            done = offset + len(batch)
            rate = done / max(time.monotonic() - start, 1e-9)
            print(f"\r{done:,}/{len(flags):,} flags sent ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"{created} created, {updated} updated, {len(problems)} line(s) skipped")
    if quarantined:
        print(f"{quarantined} new flag(s) held in the operator's flood quarantine until it releases them")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
