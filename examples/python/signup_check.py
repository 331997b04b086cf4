#!/usr/bin/env python3
"""Sign-up check: digest a new account's email address and phone number, ask flagshare,
and print a verdict a reviewer can act on.

    python signup_check.py --bundle platform-b --key consortium.key \\
        --email "Offender+alt@Example.com" --phone "07400 123456" --region GB

Exit code 0: no match; 2: at least one identifier is flagged (hold the account for
review); 1: the check could not be made (fail closed or open as your policy says).
"""

import argparse
import sys

from flagshare_client import Client, ConsortiumKey, Digester, FlagshareError, InvalidIdentifier


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="folder of the bundle your operator issued")
    parser.add_argument("--key", required=True, help="consortium key file")
    parser.add_argument("--endpoint", help="server address, if not the bundle's")
    parser.add_argument("--email")
    parser.add_argument("--phone")
    parser.add_argument("--region", help="default region of phone numbers without +country code, e.g. GB")
    args = parser.parse_args()

    digester = Digester(ConsortiumKey.load(args.key))
    checks = []  # (label, digest)
    for kind, raw in (("email", args.email), ("phone", args.phone)):
        if not raw:
            continue
        try:
            normal, digest = digester.normalize_and_digest(kind, raw, args.region)
        except InvalidIdentifier as err:
            # Not an error of the check: an identifier that cannot match anything.
            print(f"{kind}: not checked: {err.reason}")
            continue
        checks.append((f"{kind} {normal}", digest))
    if not checks:
        print("nothing to check")
        return 0

    try:
        with Client.from_bundle(args.bundle, endpoint=args.endpoint, timeout=5.0) as client:
            matches = client.query([digest for _, digest in checks])
    except (FlagshareError, ValueError) as err:
        print(f"check failed: {err}", file=sys.stderr)
        return 1

    by_index = {match.index: match for match in matches}
    for i, (label, _) in enumerate(checks):
        match = by_index.get(i)
        if match is None:
            print(f"{label}: no match")
            continue
        categories = ", ".join(c.value for c in match.categories)
        print(f"{label}: FLAGGED by {match.n_members} platform(s): {', '.join(match.members)}")
        print(f"    categories: {categories}; highest confidence {match.max_confidence}")
        print(f"    first seen {match.first_seen:%Y-%m-%d}, last seen {match.last_seen:%Y-%m-%d}")
        if match.n_disputes:
            print(f"    disputed {match.n_disputes} time(s) by other platforms: weigh the flag accordingly")
        if match.flagged_by_caller:
            print("    your platform flagged it too")
    if matches:
        print("verdict: HOLD for review: a trust & safety reviewer decides; flagshare is evidence, not proof")
        return 2
    print("verdict: no match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
