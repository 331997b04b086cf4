"""flagshare_client: digest identifiers as docs/digest-v1.md says, and talk to a flagshare
server as a member platform, with the bundle its operator issued.

    from flagshare_client import Client, ConsortiumKey, Digester

    digester = Digester(ConsortiumKey.load("consortium.key"))
    with Client.from_bundle("platform-b") as client:
        for match in client.query([digester.digest("email", "Offender+alt@Example.com")]):
            print(match.members, match.categories, match.max_confidence, match.n_disputes)
"""

from .client import (
    MAX_BATCH,
    Bundle,
    Category,
    Client,
    CursorExpired,
    DisputeResult,
    Distribution,
    FeedBatch,
    FeedEvent,
    FeedOp,
    Flag,
    FlagshareError,
    HeldFlag,
    ImportResult,
    Match,
    RetractReason,
    RetractResult,
    Selector,
    SubmitResult,
    Subscription,
)
from .digest import DIGEST_LEN, ConsortiumKey, Digester, KeyFileError
from .normalize import InvalidIdentifier, Kind, normalize

__all__ = [
    "DIGEST_LEN",
    "MAX_BATCH",
    "Bundle",
    "Category",
    "Client",
    "ConsortiumKey",
    "CursorExpired",
    "Digester",
    "DisputeResult",
    "Distribution",
    "FeedBatch",
    "FeedEvent",
    "FeedOp",
    "Flag",
    "FlagshareError",
    "HeldFlag",
    "ImportResult",
    "InvalidIdentifier",
    "KeyFileError",
    "Kind",
    "Match",
    "RetractReason",
    "RetractResult",
    "Selector",
    "SubmitResult",
    "Subscription",
    "normalize",
]
