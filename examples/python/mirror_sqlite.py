#!/usr/bin/env python3
"""A local SQLite table of every flagged digest, kept current from flagshare's Subscribe
feed, so sign-up checks can run against it without a round trip.

    python mirror_sqlite.py --bundle platform-b --db flagged.sqlite          # runs until stopped
    python mirror_sqlite.py --bundle platform-b --db flagged.sqlite --once   # stop when caught up

Each feed batch is applied in one transaction together with its cursor, so a crash or a
restart resumes exactly where the table is: nothing is missed, nothing applied twice. When
the server can no longer continue the cursor (compacted past it, or restored from a
backup), the table is rebuilt from a fresh snapshot.
"""

import argparse
import signal
import sqlite3
import sys

from flagshare_client import Client, CursorExpired, FlagshareError

SCHEMA = """
CREATE TABLE IF NOT EXISTS flagged (
    digest BLOB PRIMARY KEY,
    n_members INTEGER NOT NULL,
    members TEXT NOT NULL,
    categories TEXT NOT NULL,
    kinds TEXT NOT NULL,
    max_confidence INTEGER NOT NULL,
    n_disputes INTEGER NOT NULL,
    last_seen TEXT
);
CREATE TABLE IF NOT EXISTS feed_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), cursor TEXT NOT NULL);
"""


def stored_cursor(db) -> str:
    row = db.execute("SELECT cursor FROM feed_cursor WHERE id = 1").fetchone()
    return row[0] if row else ""


def apply(db, batch, first_of_snapshot: bool) -> None:
    with db:  # one transaction: the rows and the cursor move together
        if first_of_snapshot:
            db.execute("DELETE FROM flagged")
        for event in batch.events:
            state = event.state
            if state is None:
                db.execute("DELETE FROM flagged WHERE digest = ?", (event.digest,))
                continue
            db.execute(
                "INSERT OR REPLACE INTO flagged VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.digest,
                    state.n_members,
                    ",".join(state.members),
                    ",".join(c.value for c in state.categories),
                    ",".join(k.value for k in state.kinds),
                    state.max_confidence,
                    state.n_disputes,
                    state.last_seen.isoformat() if state.last_seen else None,
                ),
            )
        if batch.cursor:
            db.execute("INSERT OR REPLACE INTO feed_cursor VALUES (1, ?)", (batch.cursor,))


def mirror(client, db, once: bool) -> None:
    while True:
        cursor = stored_cursor(db)
        subscription = client.subscribe(cursor)
        signal.signal(signal.SIGTERM, lambda *_: subscription.close())
        first = not cursor
        try:
            for batch in subscription:
                apply(db, batch, first_of_snapshot=first)
                first = False
                if batch.caught_up:
                    count = db.execute("SELECT count(*) FROM flagged").fetchone()[0]
                    print(f"caught up: {count} flagged digest(s)", file=sys.stderr, flush=True)
                    if once:
                        subscription.close()
                        return
            return
        except CursorExpired as err:
            print(f"re-snapshot: {err.message}", file=sys.stderr)
            with db:
                db.execute("DELETE FROM feed_cursor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--endpoint")
    parser.add_argument("--db", required=True, help="SQLite file (created if missing)")
    parser.add_argument("--once", action="store_true", help="stop once caught up")
    args = parser.parse_args()
    db = sqlite3.connect(args.db)
    db.executescript(SCHEMA)
    try:
        with Client.from_bundle(args.bundle, endpoint=args.endpoint) as client:
            mirror(client, db, args.once)
    except FlagshareError as err:
        print(f"mirror stopped: {err}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
