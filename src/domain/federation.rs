//! Federation: what this operator sends to peers that pull from it (its change log, as each
//! peer's policy allows), and how events pulled from a peer are applied.
//!
//! Identity: every flag of another operator is stored under a local id for its
//! `(origin operator, member pseudonym)` pair, so it is counted once however many paths it
//! arrives by. Its version is the origin's sequence number (`FLAG_VERSIONS`, kept after
//! removal as a tombstone): an upsert applies only if newer, a removal if not older, so
//! late or repeated events never resurrect a retracted flag. Events whose origin is this
//! operator are dropped, so rings do not loop.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::audit::{Actor, AuditEvent};
use super::{Inner, stage_removal, stage_upsert};
use crate::digest::{Digest, Kind};
use crate::error::{Error, Result};
use crate::model::{
    AuditOp, Category, Change, Distribution, FOREIGN_MEMBER_BASE, FlagKey, FlagRecord, ForeignMember, PrincipalId,
    RetractReason, is_foreign,
};

/// Most events per pulled batch.
pub const MAX_PULL_BATCH: usize = 10_000;

/// A peer as the operator configured it, with the pull cursor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// Also the name of the `peer` principal that the peer pulls from us with.
    pub name: String,
    /// Where to pull from; empty for a policy-only peer that only pulls from us.
    pub endpoint: String,
    /// Client bundle (issued by the peer's CA) on this server's file system.
    pub bundle_dir: String,
    pub paused: bool,
    /// Sequence number in the peer's change log up to which everything was applied.
    pub cursor: u64,
    pub last_sync_ms: i64,
    /// Categories sent to this peer; empty means all.
    pub categories: Vec<Category>,
    /// Whether flags received from other operators are passed on to this peer.
    pub pass_on: bool,
    /// Whether member names are sent, or only their stable pseudonyms.
    pub reveal_names: bool,
}

impl PeerRecord {
    /// A peer that only pulls from us, under the default policy: every category, no
    /// passing on, pseudonyms only.
    pub fn policy_only(name: &str) -> PeerRecord {
        PeerRecord {
            name: name.to_owned(),
            endpoint: String::new(),
            bundle_dir: String::new(),
            paused: false,
            cursor: 0,
            last_sync_ms: 0,
            categories: Vec::new(),
            pass_on: false,
            reveal_names: false,
        }
    }

    pub fn pulls(&self) -> bool {
        !self.endpoint.is_empty()
    }

    fn sends_category(&self, category: Category) -> bool {
        self.categories.is_empty() || self.categories.contains(&category)
    }
}

const PEER_V1: u8 = 1;

pub fn encode_peer(record: &PeerRecord) -> Vec<u8> {
    let mut out = vec![PEER_V1];
    serde_json::to_writer(&mut out, record).expect("a peer record serialises");
    out
}

pub fn decode_peer(bytes: &[u8]) -> Result<PeerRecord> {
    match bytes.split_first() {
        Some((&PEER_V1, json)) => {
            serde_json::from_slice(json).map_err(|err| Error::Internal(format!("unreadable peer record: {err}")))
        }
        _ => Err(Error::Internal("peer record of an unknown format".to_owned())),
    }
}

/// What happened to a flag, as federation sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOp {
    Upsert {
        confidence: u8,
        first_seen_ms: i64,
        last_seen_ms: i64,
        expires_at_ms: i64,
    },
    Retract(RetractReason),
    Expire,
}

/// One change of one flag, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the sender's change log.
    pub sequence: u64,
    pub origin: [u8; 8],
    pub origin_name: String,
    /// The flag's version at its origin.
    pub origin_sequence: u64,
    pub member_pseudonym: String,
    /// Empty unless the sender reveals member names to us.
    pub member_name: String,
    pub digest: Digest,
    pub kind: Kind,
    pub category: Category,
    pub op: EventOp,
}

/// A batch of the sender's change log, filtered for one peer.
#[derive(Debug, Clone, Default)]
pub struct OutgoingBatch {
    pub events: Vec<Event>,
    /// Everything up to here was considered (sent or filtered out).
    pub cursor: u64,
    /// The sender's newest sequence number, for the receiver's lag.
    pub head: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: u64,
    /// Already known (same or newer version), or from this operator itself.
    pub skipped: u64,
    /// Malformed or against the rules; logged and left out.
    pub rejected: u64,
}

/// This operator's federation identity and the members of other operators it knows.
pub struct Federation {
    pub operator_id: [u8; 8],
    pub operator_name: String,
    pseudonym_key: [u8; 32],
    foreign: Mutex<ForeignMembers>,
}

#[derive(Default)]
struct ForeignMembers {
    /// By local id: the outgoing path looks one up for every change of a foreign flag.
    by_id: HashMap<PrincipalId, ForeignMember>,
    /// (origin operator, pseudonym) → local id: the identity events arrive with.
    by_identity: HashMap<([u8; 8], String), PrincipalId>,
    next_id: PrincipalId,
}

impl Federation {
    pub fn new(
        operator_id: [u8; 8],
        operator_name: String,
        pseudonym_key: [u8; 32],
        members: Vec<ForeignMember>,
    ) -> Federation {
        let next_id = members
            .iter()
            .map(|member| member.id + 1)
            .max()
            .unwrap_or(FOREIGN_MEMBER_BASE);
        let by_identity = members
            .iter()
            .map(|member| ((member.origin, member.pseudonym.clone()), member.id))
            .collect();
        let by_id = members.into_iter().map(|member| (member.id, member)).collect();
        Federation {
            operator_id,
            operator_name,
            pseudonym_key,
            foreign: Mutex::new(ForeignMembers {
                by_id,
                by_identity,
                next_id,
            }),
        }
    }

    /// The stable opaque name of a local member, the same for every peer.
    pub fn pseudonym(&self, member_name: &str) -> String {
        let hash = blake3::keyed_hash(&self.pseudonym_key, member_name.as_bytes());
        format!("m-{}", &hash.to_hex()[..16])
    }

    fn foreign_by_id(&self, id: PrincipalId) -> Option<ForeignMember> {
        let foreign = self.foreign.lock().expect("foreign members lock poisoned");
        foreign.by_id.get(&id).cloned()
    }
}

pub fn display_name(origin_name: &str, member_name: &str, pseudonym: &str) -> String {
    let member = if member_name.is_empty() { pseudonym } else { member_name };
    format!("{origin_name}/{member}")
}

/// The part of the change log after `after` that `peer` may see.
pub(super) fn outgoing(inner: &Inner, peer: &PeerRecord, after: u64, max: usize) -> Result<OutgoingBatch> {
    let head = *inner.writer();
    let changes = inner.store.changes_after(after, max.clamp(1, MAX_PULL_BATCH))?;
    let mut batch = OutgoingBatch {
        events: Vec::with_capacity(changes.len()),
        cursor: changes.last().map_or(after, |(sequence, _)| *sequence),
        head,
    };
    let federation = &inner.federation;
    for (sequence, change) in changes {
        if change.distribution == Distribution::Local {
            continue;
        }
        let foreign = is_foreign(change.key.member);
        let sendable = match &change.change {
            Change::Upsert(_) => peer.sends_category(change.key.category) && (!foreign || peer.pass_on),
            // Every receiver expires a flag itself at the same time: only the origin says so.
            Change::Expire => !foreign,
            // Retractions reach every peer that may have the flag, whatever the policy now.
            Change::Retract(_) => true,
        };
        if !sendable {
            continue;
        }
        let (origin, origin_name, origin_sequence, member_pseudonym, member_name) = if foreign {
            let Some(member) = federation.foreign_by_id(change.key.member) else {
                tracing::warn!(
                    member = change.key.member,
                    "change of an unknown foreign member; not sent"
                );
                continue;
            };
            let name = member
                .display
                .strip_prefix(&format!("{}/", member.origin_name))
                .filter(|name| *name != member.pseudonym && peer.reveal_names)
                .unwrap_or("")
                .to_owned();
            (
                member.origin,
                member.origin_name,
                change.origin_sequence,
                member.pseudonym,
                name,
            )
        } else {
            let name = inner.registry.name_of(change.key.member);
            (
                federation.operator_id,
                federation.operator_name.clone(),
                sequence,
                federation.pseudonym(&name),
                if peer.reveal_names { name } else { String::new() },
            )
        };
        let op = match change.change {
            Change::Upsert(entry) => EventOp::Upsert {
                confidence: entry.confidence,
                first_seen_ms: entry.first_seen_ms,
                last_seen_ms: entry.last_seen_ms,
                expires_at_ms: entry.expires_at_ms,
            },
            Change::Retract(reason) => EventOp::Retract(reason),
            Change::Expire => EventOp::Expire,
        };
        batch.events.push(Event {
            sequence,
            origin,
            origin_name,
            origin_sequence,
            member_pseudonym,
            member_name,
            digest: change.key.digest,
            kind: change.key.kind,
            category: change.key.category,
            op,
        });
    }
    Ok(batch)
}

/// Applies a pulled batch and advances the peer's cursor in one commit. `events` holds
/// each event or why it could not be read.
pub(super) fn apply(
    inner: &Inner,
    peer_name: &str,
    events: Vec<std::result::Result<Event, String>>,
    cursor: u64,
    now: i64,
) -> Result<ApplyOutcome> {
    let mut outcome = ApplyOutcome::default();
    let mut last_sequence = inner.writer();
    let mut peer = inner
        .peer(peer_name)?
        .ok_or_else(|| Error::NotFound(format!("peer: no peer named '{peer_name}'")))?;
    if cursor < peer.cursor {
        return Err(Error::invalid(format!(
            "cursor: {cursor} is behind the stored cursor {} of peer '{peer_name}'",
            peer.cursor
        )));
    }
    let mut valid = Vec::with_capacity(events.len());
    for event in events {
        match event.and_then(|event| check_event(&event, now).map(|()| event)) {
            Ok(event) if event.origin == inner.federation.operator_id => outcome.skipped += 1,
            Ok(event) => valid.push(event),
            Err(reason) => {
                tracing::warn!(peer = peer_name, %reason, "rejected a federated event");
                outcome.rejected += 1;
            }
        }
    }

    let mut batch = inner.store.batch();
    let members: Vec<PrincipalId> = valid
        .iter()
        .map(|event| inner.foreign_member_id(event))
        .collect::<Result<_>>()?;
    // Written with every batch that uses them: a member registered in memory by a batch
    // whose commit then failed is still persisted by the next one.
    for id in members.iter().collect::<BTreeSet<_>>() {
        if let Some(member) = inner.federation.foreign_by_id(*id) {
            batch.put_foreign_member(&member);
        }
    }
    let keys: Vec<FlagKey> = valid
        .iter()
        .zip(&members)
        .map(|(event, member)| FlagKey {
            digest: event.digest,
            member: *member,
            kind: event.kind,
            category: event.category,
        })
        .collect();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort_unstable();
    sorted_keys.dedup();
    let mut versions: HashMap<FlagKey, u64> = sorted_keys
        .iter()
        .copied()
        .zip(inner.store.get_flag_versions(&sorted_keys)?)
        .filter_map(|(key, version)| version.map(|version| (key, version)))
        .collect();
    let digests: Vec<Digest> = sorted_keys
        .iter()
        .map(|key| key.digest)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut summaries = inner.read_summaries(&digests)?;
    let mut touched = BTreeSet::new();
    let mut sequence = *last_sequence;

    for (event, key) in valid.iter().zip(&keys) {
        let version = versions.get(key).copied();
        let entries = summaries.get_mut(&key.digest).expect("every digest was read");
        match &event.op {
            EventOp::Upsert {
                confidence,
                first_seen_ms,
                last_seen_ms,
                expires_at_ms,
            } => {
                if version.is_some_and(|version| version >= event.origin_sequence) || *expires_at_ms <= now {
                    outcome.skipped += 1;
                    continue;
                }
                let record = FlagRecord {
                    confidence: *confidence,
                    first_seen_ms: *first_seen_ms,
                    last_seen_ms: *last_seen_ms,
                    expires_at_ms: *expires_at_ms,
                    created_at_ms: now,
                    updated_at_ms: now,
                    key_id: 0,
                    reference: Vec::new(),
                    distribution: Distribution::Federated,
                    origin_sequence: event.origin_sequence,
                };
                stage_upsert(&mut batch, &mut sequence, entries, key, &record, now);
            }
            EventOp::Retract(_) | EventOp::Expire => {
                if version.is_some_and(|version| version > event.origin_sequence) {
                    outcome.skipped += 1;
                    continue;
                }
                let change = match event.op {
                    EventOp::Retract(reason) => Change::Retract(reason),
                    _ => Change::Expire,
                };
                match entries.iter().position(|entry| entry.same_flag(key)) {
                    Some(position) => {
                        let entry = entries.remove(position);
                        stage_removal(
                            &mut batch,
                            &mut sequence,
                            key.digest,
                            &entry,
                            change,
                            event.origin_sequence,
                            now,
                        );
                    }
                    None => {
                        // Unknown here: remember the version so a late upsert stays out.
                        batch.put_flag_version(key, event.origin_sequence);
                        versions.insert(*key, event.origin_sequence);
                        outcome.skipped += 1;
                        continue;
                    }
                }
            }
        }
        batch.put_flag_version(key, event.origin_sequence);
        versions.insert(*key, event.origin_sequence);
        touched.insert(key.digest);
        outcome.applied += 1;
    }
    for digest in &touched {
        batch.put_summary(digest, &summaries[digest]);
    }
    peer.cursor = cursor;
    peer.last_sync_ms = now;
    batch.put_peer(&peer.name, &encode_peer(&peer));
    let n_events = outcome.applied + outcome.skipped + outcome.rejected;
    if n_events > 0 {
        let actor = Actor {
            id: None,
            name: format!("peer:{peer_name}"),
        };
        let event = AuditEvent::new(actor, AuditOp::FederationApply)
            .counts(n_events, outcome.applied)
            .detail(format!(
                "cursor {cursor}; {} skipped, {} rejected",
                outcome.skipped, outcome.rejected
            ));
        inner.commit_audited(batch, event, now)?;
    } else {
        inner.store.commit(batch)?;
    }
    *last_sequence = sequence;
    Ok(outcome)
}

/// The domain rules a foreign event must meet, as a local submission would.
fn check_event(event: &Event, now: i64) -> std::result::Result<(), String> {
    let pseudonym_ok = !event.member_pseudonym.is_empty()
        && event.member_pseudonym.len() <= 64
        && event.member_pseudonym.chars().all(|c| c.is_ascii_graphic());
    if !pseudonym_ok {
        return Err(format!(
            "event {}: member_id must be 1 to 64 printable ASCII characters",
            event.sequence
        ));
    }
    if event.member_name.len() > 64 || event.origin_name.is_empty() || event.origin_name.len() > 128 {
        return Err(format!(
            "event {}: member or operator name too long or empty",
            event.sequence
        ));
    }
    if event.origin_sequence == 0 {
        return Err(format!("event {}: origin_sequence must be at least 1", event.sequence));
    }
    if let EventOp::Upsert {
        confidence,
        first_seen_ms,
        last_seen_ms,
        ..
    } = event.op
    {
        if confidence > 100 {
            return Err(format!(
                "event {}: confidence {confidence} is above 100",
                event.sequence
            ));
        }
        if first_seen_ms > last_seen_ms || last_seen_ms > now + super::flags::MAX_CLOCK_SKEW_MS {
            return Err(format!(
                "event {}: first_seen/last_seen are out of order or in the future",
                event.sequence
            ));
        }
    }
    Ok(())
}

impl Inner {
    pub(super) fn peer(&self, name: &str) -> Result<Option<PeerRecord>> {
        self.store.get_peer(name)?.map(|bytes| decode_peer(&bytes)).transpose()
    }

    pub(super) fn peers(&self) -> Result<Vec<PeerRecord>> {
        self.store
            .load_peers()?
            .iter()
            .map(|bytes| decode_peer(bytes))
            .collect()
    }

    /// The local id of the event's member, registering it (in `batch`) when new.
    fn foreign_member_id(&self, event: &Event) -> Result<PrincipalId> {
        let display = display_name(&event.origin_name, &event.member_name, &event.member_pseudonym);
        let mut foreign = self.federation.foreign.lock().expect("foreign members lock poisoned");
        let identity = (event.origin, event.member_pseudonym.clone());
        let known = foreign.by_identity.get(&identity).copied();
        if let Some(member) = known.and_then(|id| foreign.by_id.get_mut(&id)) {
            // A name revealed later (or an operator renamed) replaces what was shown.
            if member.display != display && (!event.member_name.is_empty() || member.origin_name != event.origin_name) {
                member.display = display;
                member.origin_name = event.origin_name.clone();
                self.registry.set_foreign_name(member.id, member.display.clone());
            }
            return Ok(member.id);
        }
        let id = foreign.next_id;
        if id == PrincipalId::MAX {
            return Err(Error::Internal("foreign member ids are exhausted".to_owned()));
        }
        foreign.next_id += 1;
        let member = ForeignMember {
            id,
            origin: event.origin,
            origin_name: event.origin_name.clone(),
            pseudonym: event.member_pseudonym.clone(),
            display,
        };
        self.registry.set_foreign_name(id, member.display.clone());
        foreign.by_identity.insert(identity, id);
        foreign.by_id.insert(id, member);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Caller, Domain, Policy};
    use crate::model::Role;
    use crate::store::{Store, StoreOptions};

    fn upsert(origin_sequence: u64, confidence: u8, now: i64) -> Event {
        Event {
            sequence: origin_sequence,
            origin: [7; 8],
            origin_name: "op-x".to_owned(),
            origin_sequence,
            member_pseudonym: "m-0123".to_owned(),
            member_name: String::new(),
            digest: [9; 32],
            kind: Kind::Email,
            category: Category::Grooming,
            op: EventOp::Upsert {
                confidence,
                first_seen_ms: now - 10,
                last_seen_ms: now - 5,
                expires_at_ms: now + 60_000,
            },
        }
    }

    #[tokio::test]
    async fn bad_events_are_rejected_and_versions_keep_late_events_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let domain = Domain::open(store, Policy::default()).unwrap();
        let admin = Caller {
            id: 1,
            name: "admin".to_owned(),
            role: Role::Admin,
        };
        domain
            .configure_peer(admin, PeerRecord::policy_only("x"))
            .await
            .unwrap();
        let now = crate::util::now_ms();
        let own = Event {
            origin: domain.federation().operator_id,
            ..upsert(4, 50, now)
        };
        let mut unnamed = upsert(5, 50, now);
        unnamed.member_pseudonym = String::new();
        let outcome = domain
            .apply_federated(
                "x".to_owned(),
                vec![
                    Ok(upsert(10, 50, now)),
                    Err("event 11: digest: 31 bytes".to_owned()),
                    Ok(upsert(12, 101, now)),
                    Ok(unnamed),
                    Ok(own),
                ],
                12,
            )
            .await
            .unwrap();
        assert_eq!(
            outcome,
            ApplyOutcome {
                applied: 1,
                skipped: 1,
                rejected: 3
            }
        );
        assert_eq!(domain.peer("x".to_owned()).await.unwrap().unwrap().cursor, 12);

        let retract = |origin_sequence| Event {
            op: EventOp::Retract(RetractReason::FalsePositive),
            ..upsert(origin_sequence, 0, now)
        };
        let apply = |events: Vec<Event>, cursor| {
            let domain = domain.clone();
            async move {
                domain
                    .apply_federated("x".to_owned(), events.into_iter().map(Ok).collect(), cursor)
                    .await
                    .unwrap()
            }
        };
        // An older version of the same flag, arriving late, changes nothing.
        assert_eq!(apply(vec![upsert(8, 99, now)], 13).await.skipped, 1);
        assert_eq!(apply(vec![retract(20)], 14).await.applied, 1);
        // The tombstone keeps a late upsert from resurrecting the retracted flag.
        assert_eq!(apply(vec![upsert(15, 70, now)], 15).await.skipped, 1);
        let stored = domain.store().get_summaries(&[[9; 32]]).unwrap();
        assert!(stored[0].as_ref().is_none_or(|entries| entries.is_empty()));
        // A newer upsert (re-flagged at the origin) applies again.
        assert_eq!(apply(vec![upsert(21, 70, now)], 16).await.applied, 1);
        let err = domain.apply_federated("x".to_owned(), Vec::new(), 3).await.unwrap_err();
        assert!(err.to_string().contains("cursor: 3 is behind"), "{err}");
    }
}
