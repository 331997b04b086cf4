//! `Domain` over a temporary store: the rules as a caller meets them, without a server.

use super::*;
use crate::digest::Kind;
use crate::model::{Change, FOREIGN_MEMBER_BASE, LimitOverrides};
use crate::store::StoreOptions;

struct Fixture {
    domain: Domain,
    _dir: tempfile::TempDir,
}

fn open() -> Fixture {
    open_with(Policy::default())
}

fn open_with(policy: Policy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    Fixture {
        domain: Domain::open(store, policy).unwrap(),
        _dir: dir,
    }
}

/// A flood quarantine that holds every new flag past the first of the hour.
fn quarantine_after_one() -> Policy {
    Policy {
        quarantine_new_flags_per_hour: 1,
        ..Policy::default()
    }
}

pub(crate) fn admin() -> Caller {
    Caller {
        id: 0,
        name: "admin".to_owned(),
        role: Role::Admin,
        cert_sha256: [0; 32],
    }
}

/// Adds member `name` (its certificate's fingerprint the hash of its name).
pub(crate) async fn member(domain: &Domain, name: &str) -> Caller {
    let fingerprint = *blake3::hash(name.as_bytes()).as_bytes();
    let record = domain
        .add_principal(
            Actor::system(),
            name.to_owned(),
            Role::Member,
            crate::model::IssuedCertificate {
                sha256: fingerprint,
                not_after_ms: i64::MAX,
            },
        )
        .await
        .unwrap();
    Caller {
        id: record.id,
        name: record.name,
        role: Role::Member,
        cert_sha256: fingerprint,
    }
}

fn flag(digest: Digest, kind: Kind, category: Category) -> NewFlag {
    NewFlag {
        digest,
        kind,
        category,
        confidence: 70,
        observed_at_ms: None,
        expires_at_ms: None,
        reference: Vec::new(),
        distribution: None,
    }
}

/// Waits (at most 10 s) until the presence filter is in use, so that reads go through it.
async fn presence_ready(domain: &Domain) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !domain.state.store.rocks_reading().presence_ready {
        assert!(std::time::Instant::now() < deadline, "the presence scan did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn changes(domain: &Domain) -> Vec<(u64, crate::model::ChangeRecord)> {
    domain.store().changes_after(0, 100_000).unwrap()
}

#[tokio::test]
async fn a_panic_under_the_writer_lock_fails_one_call_and_later_writes_go_on() {
    let fixture = open();
    let domain = &fixture.domain;
    let alpha = member(domain, "alpha").await;
    domain.state.panic_in_next_commit();
    let failed = domain
        .submit(alpha.clone(), vec![flag([1; 32], Kind::Email, Category::Grooming)], 1)
        .await;
    assert!(matches!(failed, Err(Error::Internal(_))), "{failed:?}");
    // Nothing of the failed call is stored, and the lock is usable.
    assert!(domain.query(alpha.clone(), vec![[1; 32]]).await.unwrap().is_empty());
    let outcome = domain
        .submit(alpha.clone(), vec![flag([2; 32], Kind::Email, Category::Grooming)], 1)
        .await
        .unwrap();
    assert_eq!(outcome.n_created, 1);
    assert_eq!(domain.query(alpha, vec![[2; 32]]).await.unwrap().len(), 1);
}

#[tokio::test]
async fn one_origin_cannot_fill_a_digest_past_its_bound() {
    let fixture = open();
    let domain = &fixture.domain;
    let digest = [7; 32];
    // 36 flags per member (6 kinds x 6 categories); 28 members stay under 1,024.
    let all_flags: Vec<NewFlag> = Kind::ALL
        .iter()
        .flat_map(|kind| Category::ALL.iter().map(move |category| flag(digest, *kind, *category)))
        .collect();
    let mut n_stored = 0;
    let mut refused = None;
    for i in 0..29 {
        let caller = member(domain, &format!("m{i}")).await;
        match domain.submit(caller, all_flags.clone(), 1).await {
            Ok(outcome) => n_stored += outcome.n_created as usize,
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    assert_eq!(n_stored, 28 * 36);
    let err = refused.expect("the 29th member's batch passes the bound");
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    assert!(err.to_string().contains("from this origin"), "{err}");
    // The refused batch wrote nothing; the digest still answers.
    let entries = domain.store().get_summaries(&[digest]).unwrap()[0].clone().unwrap();
    assert_eq!(entries.len(), 28 * 36);
}

#[tokio::test]
async fn an_update_deletes_the_upsert_it_supersedes_and_a_retraction_leaves_a_thin_tombstone() {
    let fixture = open();
    let domain = &fixture.domain;
    let alpha = member(domain, "alpha").await;
    let digest = [3; 32];
    for _ in 0..3 {
        domain
            .submit(alpha.clone(), vec![flag(digest, Kind::Email, Category::Grooming)], 1)
            .await
            .unwrap();
    }
    let upserts: Vec<_> = changes(domain)
        .into_iter()
        .filter(|(_, change)| matches!(change.change, Change::Upsert(_)))
        .collect();
    assert_eq!(upserts.len(), 1, "one record per live flag");
    domain
        .retract(
            alpha,
            vec![FlagSelector {
                digest,
                kind: None,
                category: None,
            }],
            RetractReason::AppealUpheld,
        )
        .await
        .unwrap();
    let left = changes(domain);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1.change, Change::Retract(RetractReason::AppealUpheld));
}

#[tokio::test]
async fn a_resubmission_keeps_a_local_flag_local_and_a_downgrade_withdraws_it_from_peers() {
    let fixture = open();
    let domain = &fixture.domain;
    domain
        .configure_peer(admin(), PeerRecord::policy_only("peer-x"))
        .await
        .unwrap();
    let alpha = member(domain, "alpha").await;
    let (shared, kept_local) = ([4; 32], [5; 32]);
    let mut local = flag(kept_local, Kind::Email, Category::Grooming);
    local.distribution = Some(Distribution::Local);
    domain
        .submit(
            alpha.clone(),
            vec![flag(shared, Kind::Email, Category::Grooming), local],
            1,
        )
        .await
        .unwrap();
    // Again without a distribution: the local one stays local.
    domain
        .submit(
            alpha.clone(),
            vec![flag(kept_local, Kind::Email, Category::Grooming)],
            1,
        )
        .await
        .unwrap();
    // The shared one is made local: peers are told to withdraw it.
    let mut downgrade = flag(shared, Kind::Email, Category::Grooming);
    downgrade.distribution = Some(Distribution::Local);
    domain.submit(alpha, vec![downgrade], 1).await.unwrap();

    let peer = Caller {
        id: 99,
        name: "peer-x".to_owned(),
        role: Role::Peer,
        cert_sha256: [9; 32],
    };
    let sent = federation::outgoing(
        &domain.state,
        &domain.state.peer(&peer.name).unwrap().unwrap(),
        0,
        100,
        false,
    )
    .unwrap();
    let ops: Vec<(Digest, EventOp)> = sent
        .events
        .iter()
        .map(|event| (event.digest, event.op.clone()))
        .collect();
    assert_eq!(
        ops,
        vec![(shared, EventOp::Retract(RetractReason::Unshared))],
        "only the withdrawal leaves; the superseded federated upsert is gone from the log"
    );
}

#[tokio::test]
async fn a_dispute_dies_with_the_flag_it_disputed() {
    let fixture = open();
    let domain = &fixture.domain;
    let alpha = member(domain, "alpha").await;
    let beta = member(domain, "beta").await;
    let digest = [6; 32];
    let submit = |caller: Caller| domain.submit(caller, vec![flag(digest, Kind::Email, Category::Grooming)], 1);
    submit(alpha.clone()).await.unwrap();
    domain
        .dispute(beta.clone(), digest, "alpha".to_owned(), String::new())
        .await
        .unwrap();
    assert_eq!(domain.query(beta.clone(), vec![digest]).await.unwrap()[0].n_disputes, 1);
    let dispute_changes = changes(domain)
        .iter()
        .filter(|(_, change)| change.change == Change::Dispute)
        .count();
    assert_eq!(dispute_changes, 1, "a dispute is a change a feed can follow");
    domain
        .retract(
            alpha.clone(),
            vec![FlagSelector {
                digest,
                kind: None,
                category: None,
            }],
            RetractReason::FalsePositive,
        )
        .await
        .unwrap();
    submit(alpha).await.unwrap();
    assert_eq!(
        domain.query(beta, vec![digest]).await.unwrap()[0].n_disputes,
        0,
        "the new flag does not inherit the old flag's dispute"
    );
}

fn event(origin: [u8; 8], sequence: u64, pseudonym: &str, now: i64) -> Event {
    Event {
        sequence,
        origin,
        origin_name: "op-x".to_owned(),
        origin_sequence: sequence,
        member_pseudonym: pseudonym.to_owned(),
        member_name: String::new(),
        digest: [9; 32],
        kind: Kind::Email,
        category: Category::Grooming,
        op: EventOp::Upsert {
            confidence: 50,
            first_seen_ms: now - 10,
            last_seen_ms: now - 5,
            expires_at_ms: now + 60_000,
        },
        signature: Vec::new(),
    }
}

async fn peer_from(domain: &Domain, origin: [u8; 8]) {
    let mut record = PeerRecord::policy_only("x");
    record.operator_id = hex::encode(origin);
    domain.configure_peer(admin(), record).await.unwrap();
}

#[tokio::test]
async fn a_peer_speaks_only_for_itself_and_within_its_bounds() {
    let fixture = open();
    let domain = &fixture.domain;
    let origin = [7; 8];
    peer_from(domain, origin).await;
    let now = crate::util::now_ms();
    let apply = |events: Vec<std::result::Result<Event, Rejected>>, cursor| {
        let domain = domain.clone();
        async move {
            domain
                .apply_federated("x".to_owned(), events, cursor, String::new())
                .await
                .unwrap()
        }
    };
    let forged = event([8; 8], 2, "m-1", now);
    let own = Event {
        origin: domain.federation().operator_id,
        ..event(origin, 3, "m-1", now)
    };
    let mut too_long = event(origin, 4, "m-1", now);
    too_long.op = EventOp::Upsert {
        confidence: 50,
        first_seen_ms: now - 10,
        last_seen_ms: now - 5,
        expires_at_ms: i64::MAX,
    };
    let outcome = apply(
        vec![
            Ok(forged),
            Err(Rejected::new(3, "digest", "31 bytes")),
            Ok(own),
            Ok(too_long),
        ],
        4,
    )
    .await;
    assert_eq!((outcome.applied, outcome.skipped, outcome.rejected), (1, 1, 2));
    assert!(
        outcome.first_rejection.unwrap().to_string().contains("origin_operator"),
        "the forged origin is the first refusal"
    );
    // The over-long expiry was capped at this operator's own retention.
    let entries = domain.store().get_summaries(&[[9; 32]]).unwrap()[0].clone().unwrap();
    assert!(
        entries[0].expires_at_ms <= now + DEFAULT_TTL_MS + 60_000,
        "{}",
        entries[0].expires_at_ms
    );
    assert!(entries[0].member >= FOREIGN_MEMBER_BASE);
    let stored = domain.peer("x".to_owned()).await.unwrap().unwrap();
    assert_eq!(stored.n_rejected, 2);
    assert!(stored.last_rejection.contains("digest"), "{}", stored.last_rejection);

    // The origin's members are bounded.
    let many: Vec<_> = (0..(DEFAULT_MAX_FOREIGN_MEMBERS_PER_ORIGIN as u64 + 10))
        .map(|i| Ok(event(origin, 10 + i, &format!("m-{i}"), now)))
        .collect();
    let outcome = apply(many, 10_000).await;
    assert_eq!(
        domain.federation().n_members_of(&origin),
        DEFAULT_MAX_FOREIGN_MEMBERS_PER_ORIGIN
    );
    assert!(outcome.rejected >= 10, "{outcome:?}");
}

#[tokio::test]
async fn versions_keep_late_events_out_and_a_peer_of_only_bad_events_is_paused() {
    let fixture = open();
    let domain = &fixture.domain;
    let origin = [7; 8];
    peer_from(domain, origin).await;
    let now = crate::util::now_ms();
    let apply = |events: Vec<Event>, cursor| {
        let domain = domain.clone();
        async move {
            domain
                .apply_federated(
                    "x".to_owned(),
                    events.into_iter().map(Ok).collect(),
                    cursor,
                    String::new(),
                )
                .await
                .unwrap()
        }
    };
    let retract = |sequence| Event {
        op: EventOp::Retract(RetractReason::FalsePositive),
        ..event(origin, sequence, "m-1", now)
    };
    assert_eq!(apply(vec![event(origin, 10, "m-1", now)], 10).await.applied, 1);
    // An older version of the same flag, arriving late, changes nothing.
    assert_eq!(apply(vec![event(origin, 8, "m-1", now)], 11).await.skipped, 1);
    assert_eq!(apply(vec![retract(20)], 12).await.applied, 1);
    // The tombstone keeps a late upsert from resurrecting the retracted flag.
    assert_eq!(apply(vec![event(origin, 15, "m-1", now)], 13).await.skipped, 1);
    assert!(domain.store().get_summaries(&[[9; 32]]).unwrap()[0].is_none());
    // A newer upsert (re-flagged at the origin) applies again.
    assert_eq!(apply(vec![event(origin, 21, "m-1", now)], 14).await.applied, 1);
    let err = domain
        .apply_federated("x".to_owned(), Vec::new(), 3, String::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cursor: 3 is behind"), "{err}");

    for cursor in 15..15 + u64::from(federation::MAX_BAD_BATCHES) {
        let outcome = apply(vec![event([1; 8], cursor, "m-1", now)], cursor).await;
        assert_eq!(outcome.rejected, 1);
        assert_eq!(outcome.paused, cursor == 14 + u64::from(federation::MAX_BAD_BATCHES));
    }
    let peer = domain.peer("x".to_owned()).await.unwrap().unwrap();
    assert!(peer.paused);
    assert!(
        peer.pause_reason.contains("only refused events"),
        "{}",
        peer.pause_reason
    );
}

#[tokio::test]
async fn a_foreign_member_no_flag_or_tombstone_names_is_forgotten() {
    let fixture = open();
    let domain = &fixture.domain;
    let origin = [7; 8];
    peer_from(domain, origin).await;
    let now = crate::util::now_ms();
    let kept = event(origin, 1, "m-kept", now);
    let gone = Event {
        digest: [8; 32],
        ..event(origin, 2, "m-gone", now)
    };
    let gone_retracted = Event {
        op: EventOp::Retract(RetractReason::Other),
        ..event(origin, 3, "m-gone", now)
    };
    let gone_retracted = Event {
        digest: [8; 32],
        ..gone_retracted
    };
    domain
        .apply_federated(
            "x".to_owned(),
            vec![Ok(kept), Ok(gone), Ok(gone_retracted)],
            3,
            String::new(),
        )
        .await
        .unwrap();
    assert_eq!(domain.federation().n_members_of(&origin), 2);
    // The tombstone still names m-gone: it stays.
    assert_eq!(maintenance::forget_orphaned_members(&domain.state, now).unwrap(), 0);
    // Past the tombstone retention, nothing names it.
    maintenance::delete_old_tombstones(&domain.state, now + 60_000).unwrap();
    assert_eq!(maintenance::forget_orphaned_members(&domain.state, now).unwrap(), 1);
    assert_eq!(domain.federation().n_members_of(&origin), 1);
    let stored: Vec<String> = domain
        .store()
        .load_foreign_members()
        .unwrap()
        .into_iter()
        .map(|member| member.pseudonym)
        .collect();
    assert_eq!(stored, vec!["m-kept"]);
}

#[tokio::test]
async fn held_flags_are_listed_a_page_at_a_time_to_their_member_and_to_admins() {
    let fixture = open_with(quarantine_after_one());
    let domain = &fixture.domain;
    let (flooder, other) = (member(domain, "flooder").await, member(domain, "other").await);
    let n = 2 * HELD_PAGE + 7;
    let flags: Vec<NewFlag> = (0..=n as u32)
        .map(|i| {
            flag(
                *blake3::hash(&i.to_be_bytes()).as_bytes(),
                Kind::Email,
                Category::Grooming,
            )
        })
        .collect();
    let outcome = domain.submit(flooder.clone(), flags.clone(), 1).await.unwrap();
    assert_eq!((outcome.n_created, outcome.n_quarantined), (1, n as u32));

    let mut pages = Vec::new();
    let mut after = Vec::new();
    loop {
        let (page, next) = domain.held_flags(flooder.clone(), None, after).await.unwrap();
        pages.push(page.len());
        after = next;
        if after.is_empty() {
            break;
        }
    }
    assert_eq!(pages, [HELD_PAGE, HELD_PAGE, 7]);
    // An admin's listing: every held flag exactly once, in digest order, the live one aside.
    let mut all = Vec::new();
    let mut after = Vec::new();
    loop {
        let (page, next) = domain
            .held_flags(admin(), Some("flooder".to_owned()), after)
            .await
            .unwrap();
        all.extend(page);
        if next.is_empty() {
            break;
        }
        after = next;
    }
    let mut expected: Vec<Digest> = flags.iter().map(|f| f.digest).collect();
    expected.sort_unstable();
    let listed: Vec<Digest> = all.iter().map(|held| held.key.digest).collect();
    assert_eq!(listed.len(), n);
    assert!(listed.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(listed.iter().all(|digest| expected.binary_search(digest).is_ok()));
    assert!(
        all.iter()
            .all(|held| held.confidence == 70 && held.key.member == flooder.id)
    );

    // Another member holds none and sees none of the flooder's.
    let (none, next) = domain.held_flags(other, None, Vec::new()).await.unwrap();
    assert!(none.is_empty() && next.is_empty());
    // A cursor that is not one is refused by field.
    let bad = domain.held_flags(flooder, None, vec![0; 5]).await;
    assert!(
        matches!(&bad, Err(Error::InvalidArgument(message)) if message.starts_with("page_after: 5 bytes")),
        "{bad:?}"
    );
    let unknown = domain.held_flags(admin(), Some("nobody".to_owned()), Vec::new()).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
}

#[tokio::test]
async fn a_suspended_members_held_flags_are_never_released_and_a_withdrawal_deletes_them() {
    let fixture = open_with(quarantine_after_one());
    let domain = &fixture.domain;
    let flooder = member(domain, "flooder").await;
    let flags: Vec<NewFlag> = (0..5u8)
        .map(|i| flag([i; 32], Kind::Email, Category::Grooming))
        .collect();
    let outcome = domain.submit(flooder.clone(), flags, 1).await.unwrap();
    assert_eq!((outcome.n_created, outcome.n_quarantined), (1, 4));

    domain
        .set_principal_status(admin(), "flooder".to_owned(), PrincipalStatus::Suspended, false)
        .await
        .unwrap();
    let refused = domain.quarantine_release(admin(), "flooder".to_owned()).await;
    assert!(
        matches!(&refused, Err(Error::FailedPrecondition(message)) if message.contains("suspended")),
        "{refused:?}"
    );
    let held = domain
        .held_flags(admin(), Some("flooder".to_owned()), Vec::new())
        .await
        .unwrap()
        .0;
    assert_eq!(held.len(), 4, "a refused release leaves them held");

    let (_, n_withdrawn) = domain
        .set_principal_status(admin(), "flooder".to_owned(), PrincipalStatus::Removed, true)
        .await
        .unwrap();
    assert_eq!(n_withdrawn, 5, "the live flag and the four held ones");
    let held = domain
        .held_flags(admin(), Some("flooder".to_owned()), Vec::new())
        .await
        .unwrap()
        .0;
    assert!(held.is_empty());
    assert!(domain.quarantine_list().await.unwrap().is_empty());
}

fn digest_of(i: u32) -> Digest {
    *blake3::hash(&i.to_be_bytes()).as_bytes()
}

#[tokio::test]
async fn an_import_block_merges_with_what_is_stored_and_reads_as_submitted_flags() {
    let fixture = open();
    let domain = &fixture.domain;
    presence_ready(domain).await;
    let (alpha, beta) = (member(domain, "alpha").await, member(domain, "beta").await);
    // Alpha already flagged digest 7; beta's import holds it too, and one flag twice.
    domain
        .submit(
            alpha.clone(),
            vec![flag(digest_of(7), Kind::Email, Category::Grooming)],
            1,
        )
        .await
        .unwrap();
    let mut flags: Vec<NewFlag> = (0..5_000)
        .map(|i| flag(digest_of(i), Kind::Email, Category::Grooming))
        .collect();
    flags.push(flag(digest_of(3), Kind::Email, Category::Grooming));
    let outcome = domain.import_block(beta.clone(), flags.clone(), 1).await.unwrap();
    assert_eq!((outcome.n_created, outcome.n_updated), (5_000, 1));

    let digests: Vec<Digest> = (0..5_000).map(digest_of).collect();
    let matches = domain.query(alpha.clone(), digests.clone()).await.unwrap();
    assert_eq!(matches.len(), 5_000);
    let seven = matches.iter().find(|m| m.digest == digest_of(7)).unwrap();
    assert_eq!(seven.members, ["alpha", "beta"]);
    // The change log holds one upsert per flag, as if submitted; the audit names the import.
    let upserts = changes(domain)
        .iter()
        .filter(|(_, change)| matches!(change.change, Change::Upsert(_)))
        .count();
    assert_eq!(upserts, 5_001);
    let filter = AuditFilter {
        principal: None,
        op: Some(AuditOp::Import),
        since_ms: None,
        until_ms: None,
        digest: None,
        limit: 100,
    };
    let imports = domain.list_audit(admin(), filter).await.unwrap();
    assert_eq!(imports.len(), 1);
    assert_eq!((imports[0].n_items, imports[0].n_changed), (5_001, 5_001));
    assert!(domain.verify_audit(admin()).await.unwrap().broken.is_none());

    // The same import again: updates only, nothing new.
    let again = domain.import_block(beta, flags, 1).await.unwrap();
    assert_eq!((again.n_created, again.n_updated), (0, 5_001));
    assert_eq!(domain.query(alpha, digests).await.unwrap().len(), 5_000);
    assert!(domain.state.store.pending_import().unwrap().is_none());
}

/// An import block of 1,000 new flags by "alpha" (beside member "beta"), stopped by the
/// test hook at `point` (1: before its commit, 2: before its ingestion), as if killed.
struct StoppedImport {
    dir: tempfile::TempDir,
    domain: Domain,
    alpha: Caller,
    beta: Caller,
    flags: Vec<NewFlag>,
    digests: Vec<Digest>,
    head_before: u64,
}

async fn import_stopped_at(point: u8) -> StoppedImport {
    let dir = tempfile::tempdir().unwrap();
    let flags: Vec<NewFlag> = (0..1_000)
        .map(|i| flag(digest_of(i), Kind::Email, Category::Grooming))
        .collect();
    let digests: Vec<Digest> = flags.iter().map(|f| f.digest).collect();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let domain = Domain::open(store, Policy::default()).unwrap();
    let alpha = member(&domain, "alpha").await;
    let beta = member(&domain, "beta").await;
    let head_before = domain.state.head().unwrap();
    domain
        .state
        .stop_import
        .store(point, std::sync::atomic::Ordering::SeqCst);
    let stopped = domain.import_block(alpha.clone(), flags.clone(), 1).await;
    assert!(matches!(stopped, Err(Error::Internal(_))), "{stopped:?}");
    StoppedImport {
        dir,
        domain,
        alpha,
        beta,
        flags,
        digests,
        head_before,
    }
}

#[tokio::test]
async fn an_import_block_stopped_before_its_ingestion_is_invisible_then_whole_after_a_restart() {
    let StoppedImport {
        dir,
        domain,
        alpha,
        beta,
        digests,
        head_before,
        ..
    } = import_stopped_at(2).await;
    {
        // Committed, not ingested: no query and no reader of the change log sees it.
        assert!(domain.query(beta.clone(), digests.clone()).await.unwrap().is_empty());
        let (items, covered, head) = domain.feed_changes(beta.clone(), 0, 0).await.unwrap();
        assert_eq!(head, head_before);
        assert!(items.iter().all(|item| item.sequence <= head_before), "{covered}");
        assert!(domain.state.store.pending_import().unwrap().is_some());
    }
    drop(domain);
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let domain = Domain::open(store, Policy::default()).unwrap();
    assert!(domain.state.store.pending_import().unwrap().is_none());
    // The block finished at open is in the presence filter's scan.
    presence_ready(&domain).await;
    assert_eq!(domain.query(beta.clone(), digests).await.unwrap().len(), 1_000);
    let (items, _, head) = domain.feed_changes(beta, 0, 0).await.unwrap();
    assert_eq!(head, head_before + 1_000);
    assert_eq!(items.iter().filter(|item| item.sequence > head_before).count(), 1_000);
    let staging: Vec<_> = std::fs::read_dir(domain.state.store.staging_dir())
        .map(|entries| entries.flatten().collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "the file moved into the database");
    drop(alpha);
}

#[tokio::test]
async fn an_import_block_stopped_before_its_commit_is_undone_after_a_restart() {
    let StoppedImport {
        dir,
        domain,
        alpha,
        beta,
        flags,
        digests,
        head_before,
    } = import_stopped_at(1).await;
    {
        // Its change-log rows are written, behind the hold: no reader sees them.
        assert_eq!(domain.store().changes_after(head_before, 10_000).unwrap().len(), 1_000);
        let (items, _, head) = domain.feed_changes(beta.clone(), head_before, 0).await.unwrap();
        assert!(items.is_empty());
        assert_eq!(head, head_before);
        // Its summary rows wait in the staging folder.
        assert!(
            std::fs::read_dir(domain.store().staging_dir())
                .unwrap()
                .next()
                .is_some()
        );
    }
    drop(domain);
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let domain = Domain::open(store, Policy::default()).unwrap();
    // Undone: no row, no flag, no audit entry, no staged file; the same import then goes
    // through whole.
    assert!(!domain.store().staging_dir().exists());
    assert!(domain.store().changes_after(head_before, 10_000).unwrap().is_empty());
    assert_eq!(domain.state.head().unwrap(), head_before);
    assert!(domain.query(beta.clone(), digests.clone()).await.unwrap().is_empty());
    assert!(domain.state.store.pending_import().unwrap().is_none());
    let outcome = domain.import_block(alpha, flags, 1).await.unwrap();
    assert_eq!(outcome.n_created, 1_000);
    assert_eq!(domain.query(beta, digests).await.unwrap().len(), 1_000);
    assert!(domain.verify_audit(admin()).await.unwrap().broken.is_none());
}

#[tokio::test]
async fn an_admin_exempts_one_member_from_the_quarantine_audited_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy {
        quarantine_new_flags_per_hour: 1,
        ..Policy::default()
    };
    let flags = |from: u32| -> Vec<NewFlag> {
        (from..from + 5)
            .map(|i| flag(digest_of(i), Kind::Email, Category::Grooming))
            .collect()
    };
    {
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let domain = Domain::open(store, policy.clone()).unwrap();
        let migrator = member(&domain, "migrator").await;
        let other = member(&domain, "other").await;
        let exempt = LimitOverrides {
            quarantine_new_flags_per_hour: Some(0),
            ..LimitOverrides::default()
        };
        domain
            .set_limits(admin(), "migrator".to_owned(), exempt, false)
            .await
            .unwrap();
        assert_eq!(domain.quarantine_threshold_of("migrator"), Some(0));
        assert_eq!(domain.quarantine_threshold_of("other"), Some(1));
        let outcome = domain.import_block(migrator, flags(0), 1).await.unwrap();
        assert_eq!((outcome.n_created, outcome.n_quarantined), (5, 0));
        let outcome = domain.submit(other.clone(), flags(100), 1).await.unwrap();
        assert_eq!((outcome.n_created, outcome.n_quarantined), (1, 4));
        // An import meets the quarantine as Submit does.
        let outcome = domain.import_block(other, flags(300), 1).await.unwrap();
        assert_eq!((outcome.n_created, outcome.n_quarantined), (0, 5));
        let filter = AuditFilter {
            principal: None,
            op: Some(AuditOp::SetLimits),
            since_ms: None,
            until_ms: None,
            digest: None,
            limit: 10,
        };
        let audited = domain.list_audit(admin(), filter).await.unwrap();
        assert!(
            audited[0].detail.contains("migrator: quarantine_new_flags_per_hour=0"),
            "{audited:?}"
        );
    }
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let domain = Domain::open(store, policy).unwrap();
    assert_eq!(domain.quarantine_threshold_of("migrator"), Some(0));
    let migrator = Caller {
        id: domain.state.registry.by_name("migrator").unwrap().id,
        name: "migrator".to_owned(),
        role: Role::Member,
        cert_sha256: *blake3::hash(b"migrator").as_bytes(),
    };
    let outcome = domain.submit(migrator, flags(200), 1).await.unwrap();
    assert_eq!(outcome.n_quarantined, 0);
}

#[tokio::test]
async fn bulk_work_runs_at_a_lower_cpu_priority_and_leaves_other_threads_alone() {
    let own = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
    let before = own();
    let inside = super::state::bulk(move || Ok(own())).await.unwrap();
    assert!(inside > before, "bulk work at nice {inside}, the caller at {before}");
    assert_eq!(own(), before, "the caller's thread keeps its priority");
    // A failure inside is the caller's error, not a lost result.
    let failed = super::state::bulk(|| -> Result<(), Error> { Err(Error::invalid("x".to_owned())) }).await;
    assert!(matches!(failed, Err(Error::InvalidArgument(_))), "{failed:?}");
}

/// Copies the folder `from` into the new folder `to` (a closed store).
fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// What a replicated log rests on: state changes take their time from the caller (the
/// facade stamps it) and never read the clock, so two copies of one store given the same
/// operations at the same times end alike, change log and audit chain included, however
/// far apart in real time they run.
#[test]
fn the_same_operations_at_the_same_times_leave_two_copies_of_a_store_alike() {
    let root = tempfile::tempdir().unwrap();
    let (first, second) = (root.path().join("first"), root.path().join("second"));
    drop(
        Domain::open(
            Store::open(&first, &StoreOptions::default()).unwrap(),
            Policy::default(),
        )
        .unwrap(),
    );
    copy_folder(&first, &second);
    let run = |dir: &std::path::Path| {
        let domain = Domain::open(Store::open(dir, &StoreOptions::default()).unwrap(), Policy::default()).unwrap();
        let state = &domain.state;
        let mut now = 1_800_000_000_000;
        let mut tick = || {
            now += 1_000;
            now
        };
        let certificate = |name: &str| crate::model::IssuedCertificate {
            sha256: *blake3::hash(name.as_bytes()).as_bytes(),
            not_after_ms: i64::MAX,
        };
        let mut callers = Vec::new();
        for name in ["alpha", "beta"] {
            let record = state
                .add_principal(&Actor::system(), name, Role::Member, certificate(name), tick())
                .unwrap();
            callers.push(Caller {
                id: record.id,
                name: record.name,
                role: Role::Member,
                cert_sha256: certificate(name).sha256,
            });
        }
        let digests: Vec<Digest> = (0u8..20).map(|i| *blake3::hash(&[i]).as_bytes()).collect();
        let new_flags: Vec<NewFlag> = digests
            .iter()
            .map(|digest| flag(*digest, Kind::Email, Category::Grooming))
            .collect();
        let sorted = |caller: &Caller, flags: &[NewFlag]| SortedFlags::new(caller.id, flags.to_vec());
        state
            .submit(&callers[0], sorted(&callers[0], &new_flags), 1, tick())
            .unwrap();
        state
            .submit(&callers[1], sorted(&callers[1], &new_flags[..5]), 1, tick())
            .unwrap();
        state.query(&callers[1], &digests, tick()).unwrap();
        let selectors = [FlagSelector {
            digest: digests[3],
            kind: None,
            category: None,
        }];
        state
            .retract(&callers[0], &selectors, RetractReason::AppealUpheld, tick())
            .unwrap();
        state
            .dispute(&callers[1], digests[4], "alpha", "not ours", tick())
            .unwrap();
        let limits = LimitOverrides {
            flags_submitted_per_second: Some(50),
            ..LimitOverrides::default()
        };
        state.set_limits(&admin(), "beta", limits, false, tick()).unwrap();
        state
            .rotate_certificate(&admin(), "beta", certificate("beta-2"), tick())
            .unwrap();
        super::federation::configure_peer(state, &admin(), PeerRecord::policy_only("peer-x"), tick()).unwrap();
        super::federation::remove_peer(state, &admin(), "peer-x", tick()).unwrap();
        state
            .set_principal_status(&admin(), "alpha", PrincipalStatus::Suspended, true, tick())
            .unwrap();
        state.list_principals(&admin(), tick()).unwrap();
        let report = audit::verify(&state.store).unwrap();
        assert!(report.broken.is_none(), "{report:?}");
        let changes = state.store.changes_after(0, 100_000).unwrap();
        assert!(changes.len() >= 25, "{}", changes.len());
        (report.head_hash, report.n_checked, format!("{changes:?}"))
    };
    let one = run(&first);
    // Real time moves on between the two; what they stored must not.
    #[allow(clippy::disallowed_methods)] // a plain test thread
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(one, run(&second));
}

/// The flood quarantine's hourly count is stored with the flags it counts: a restart within
/// the hour does not give a member a fresh allowance.
#[tokio::test]
async fn a_restart_continues_the_quarantine_window() {
    let dir = tempfile::tempdir().unwrap();
    let reopen = || {
        Domain::open(
            Store::open(dir.path(), &StoreOptions::default()).unwrap(),
            quarantine_after_one(),
        )
        .unwrap()
    };
    let domain = reopen();
    let flooder = member(&domain, "flooder").await;
    let digest = |i: u8| *blake3::hash(&[i]).as_bytes();
    let first = domain
        .submit(
            flooder.clone(),
            vec![flag(digest(1), Kind::Email, Category::Grooming)],
            1,
        )
        .await
        .unwrap();
    assert_eq!((first.n_created, first.n_quarantined), (1, 0));
    drop(domain);

    let domain = reopen();
    let second = domain
        .submit(flooder, vec![flag(digest(2), Kind::Email, Category::Grooming)], 1)
        .await
        .unwrap();
    assert_eq!(
        (second.n_created, second.n_quarantined),
        (0, 1),
        "the hour's allowance was used before the restart"
    );
}

/// The audit entries in the store, oldest first (as written; nothing queued).
fn stored_audit(store: &Store) -> Vec<crate::model::AuditEntry> {
    store
        .audit_entries_from(0)
        .map(|item| crate::store::codec::decode_audit(&item.unwrap().1).unwrap())
        .collect()
}

#[tokio::test]
async fn read_entries_are_queued_then_committed_before_the_next_write_in_call_order() {
    let fixture = open();
    let domain = &fixture.domain;
    let alpha = member(domain, "alpha").await;
    let written = stored_audit(domain.store()).len();
    for i in 0..5u8 {
        domain.query(alpha.clone(), vec![[i; 32]]).await.unwrap();
    }
    // Answered, not written yet.
    assert_eq!(stored_audit(domain.store()).len(), written);

    domain
        .submit(alpha.clone(), vec![flag([9; 32], Kind::Email, Category::Grooming)], 1)
        .await
        .unwrap();
    let entries = stored_audit(domain.store());
    let ops: Vec<&str> = entries[written..].iter().map(|entry| entry.op.as_str()).collect();
    assert_eq!(ops, ["query", "query", "query", "query", "query", "submit"]);
    let queried: Vec<u64> = entries[written..written + 5]
        .iter()
        .map(|entry| entry.n_items)
        .collect();
    assert_eq!(queried, [1; 5]);
    // One chain, and the member's counters count every query.
    assert!(audit::verify(domain.store()).unwrap().broken.is_none());
    let views = domain.list_principals(admin()).await.unwrap();
    let stats = views.iter().find(|view| view.record.name == "alpha").unwrap().stats;
    assert_eq!((stats.n_queries, stats.n_digests_queried), (5, 5));
}

#[tokio::test]
async fn a_full_read_queue_is_committed_by_the_read_that_finds_it_full_and_a_close_commits_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let domain = Domain::open(store, Policy::default()).unwrap();
    let alpha = member(&domain, "alpha").await;
    let written = stored_audit(domain.store()).len();
    let n_reads = MAX_PENDING_READS + 10;
    for _ in 0..n_reads {
        domain.query(alpha.clone(), vec![[1; 32]]).await.unwrap();
    }
    // The queue never held more than its bound: the read that found it full wrote it.
    assert_eq!(stored_audit(domain.store()).len(), written + MAX_PENDING_READS);

    drop(domain);
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let entries = stored_audit(&store);
    assert_eq!(entries.len(), written + n_reads);
    assert!(entries[written..].iter().all(|entry| entry.op == "query"));
    assert!(audit::verify(&store).unwrap().broken.is_none());
}

#[tokio::test]
async fn queued_read_entries_hold_a_bounded_number_of_matched_digests() {
    let fixture = open();
    let domain = &fixture.domain;
    let alpha = member(domain, "alpha").await;
    let beta = member(domain, "beta").await;
    let digests: Vec<Digest> = (0..5_000).map(digest_of).collect();
    let flags = digests
        .iter()
        .map(|digest| flag(*digest, Kind::Email, Category::Grooming))
        .collect();
    domain.submit(alpha, flags, 1).await.unwrap();
    let written = stored_audit(domain.store()).len();
    // Each query's entry holds its 5,000 matched digests: the queue takes 20 of them
    // (100,000 digests), and the 21st query writes those 20 first.
    for _ in 0..21 {
        assert_eq!(domain.query(beta.clone(), digests.clone()).await.unwrap().len(), 5_000);
    }
    let entries = stored_audit(domain.store());
    assert_eq!(entries.len(), written + MAX_PENDING_READ_DIGESTS / 5_000);
    assert!(entries[written..].iter().all(|entry| entry.digests.len() == 5_000));
}
