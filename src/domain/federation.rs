//! Federation: what this operator sends to peers that pull from it (its change log, as each
//! peer's policy allows), and how events pulled from a peer are applied.
//!
//! Authority: a peer speaks for itself only. Its operator id comes from the bundle its
//! operator issued to us (`client.toml`), and an event of that origin is believed from it.
//! An event of another origin (passed on by the peer) is believed only when it carries that
//! origin's signature and the origin's key is known here (`signing`): no peer can raise,
//! retract or rename what another operator said. Each flag's version is its origin's sequence
//! number (`FLAG_VERSIONS`, kept after removal as a tombstone): an upsert applies only if
//! newer, a removal if not older. A peer's flags live at most as long as this operator's own
//! retention allows, and each origin's members and flags per digest are bounded.
//! Events whose origin is this operator are dropped, so rings do not loop.

use std::collections::{BTreeSet, HashMap};

use super::audit::{Actor, AuditEvent};
use super::foreign::{Registered, display_name};
use super::principals::{self, Caller};
use super::signing::{self, PUBLIC_KEY_LEN};
use super::state::{Removal, State, stage_dispute_cleanup, stage_removal, stage_upsert};
use crate::digest::{Digest, Kind};
use crate::error::{Error, Result};
use crate::model::{
    AuditOp, Category, Change, Distribution, FlagKey, FlagRecord, OriginSignature, RetractReason, is_foreign,
};

/// Most events per pulled batch.
pub const MAX_PULL_BATCH: usize = 10_000;
/// Batches in a row with nothing valid in them after which a peer is paused: a peer that
/// sends only garbage costs one batch each time, not a stream of them forever.
pub const MAX_BAD_BATCHES: u32 = 3;

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
    /// The peer's database identity (hex) the cursor belongs to: sent back with it, so a
    /// peer restored from a backup makes us pull again from 0 instead of skipping.
    #[serde(default)]
    pub remote_db_identity: String,
    pub last_sync_ms: i64,
    /// Categories sent to this peer; empty means all.
    pub categories: Vec<Category>,
    /// Whether flags received from other operators are passed on to this peer.
    pub pass_on: bool,
    /// Whether member names are sent, or only their stable pseudonyms.
    pub reveal_names: bool,
    /// The peer's operator id (hex), from the bundle its operator issued: the only origin
    /// whose events are believed from this peer without a signature.
    #[serde(default)]
    pub operator_id: String,
    /// The peer operator's Ed25519 public key (hex): events of its origin passed on by
    /// another peer are believed when this key verifies their signature. A record with a
    /// key and no endpoint only names an origin this server trusts the signatures of.
    #[serde(default)]
    pub operator_key: String,
    /// Events refused from this peer, ever, and why the latest one was.
    #[serde(default)]
    pub n_rejected: u64,
    #[serde(default)]
    pub last_rejection: String,
    /// Batches in a row that held nothing valid; at `MAX_BAD_BATCHES` the peer is paused.
    #[serde(default)]
    pub n_bad_batches: u32,
    /// Why the server paused the peer by itself (empty when an admin paused it, or it runs).
    #[serde(default)]
    pub pause_reason: String,
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
            remote_db_identity: String::new(),
            last_sync_ms: 0,
            categories: Vec::new(),
            pass_on: false,
            reveal_names: false,
            operator_id: String::new(),
            operator_key: String::new(),
            n_rejected: 0,
            last_rejection: String::new(),
            n_bad_batches: 0,
            pause_reason: String::new(),
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

pub fn encode_peer(record: &PeerRecord) -> Result<Vec<u8>> {
    let mut out = vec![PEER_V1];
    serde_json::to_writer(&mut out, record).map_err(|err| Error::Internal(format!("peer record: {err}")))?;
    Ok(out)
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
    /// The origin's signature over `signing::canonical_bytes`, or empty.
    pub signature: Vec<u8>,
}

/// Why an event from a peer was refused: which event (the sender's sequence), which
/// field, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {sequence}: {field}: {reason}")]
pub struct Rejected {
    pub sequence: u64,
    pub field: &'static str,
    pub reason: String,
}

impl Rejected {
    pub fn new(sequence: u64, field: &'static str, reason: impl Into<String>) -> Rejected {
        Rejected {
            sequence,
            field,
            reason: reason.into(),
        }
    }
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: u64,
    /// Already known (same or newer version), or from this operator itself.
    pub skipped: u64,
    /// Malformed, against the rules, or not the peer's to say; logged, counted, left out.
    pub rejected: u64,
    /// The first refusal of the batch.
    pub first_rejection: Option<Rejected>,
    /// Set when this batch made the server pause the peer.
    pub paused: bool,
}

/// The part of the change log after `after` that `peer` may see. With `signed`, this
/// operator's own events carry its signature (the peer passes them on); events of other
/// operators are passed on only with the signature their origin gave them.
pub(super) fn outgoing(
    state: &State,
    peer: &PeerRecord,
    after: u64,
    max: usize,
    signed: bool,
) -> Result<OutgoingBatch> {
    let (changes, head) = state.changes_to_head(after, max.clamp(1, MAX_PULL_BATCH))?;
    let mut batch = OutgoingBatch {
        events: Vec::with_capacity(changes.len()),
        // Nothing after `after`: everything up to the head is covered (rows up to it may
        // have been deleted), else up to the last row read.
        cursor: changes.last().map_or(after.max(head), |(sequence, _)| *sequence),
        head,
    };
    let federation = &state.federation;
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
            Change::Dispute => false,
        };
        // What cannot be proven to come from its origin is not passed on.
        if !sendable || (foreign && change.signature.is_none()) {
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
            let name = state.registry.name_of(change.key.member);
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
                // Passed on exactly as the origin signed it; the receiver caps it itself.
                expires_at_ms: change
                    .signature
                    .as_ref()
                    .map_or(entry.expires_at_ms, |signed| signed.expires_at_ms),
            },
            Change::Retract(reason) => EventOp::Retract(reason),
            Change::Expire => EventOp::Expire,
            Change::Dispute => continue,
        };
        let mut event = Event {
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
            signature: Vec::new(),
        };
        if let Some(kept) = change.signature {
            event.signature = kept.signature;
        }
        batch.events.push(event);
    }
    if signed {
        // This operator's own events are the ones without a signature yet.
        let own = federation.operator_id;
        let mut own_events: Vec<Event> = Vec::new();
        let mut positions = Vec::new();
        for (position, event) in batch.events.iter_mut().enumerate() {
            if event.origin == own && event.signature.is_empty() {
                own_events.push(std::mem::replace(event, placeholder()));
                positions.push(position);
            }
        }
        signing::sign_all(&federation.origin_key, &mut own_events);
        for (position, event) in positions.into_iter().zip(own_events) {
            batch.events[position] = event;
        }
    }
    Ok(batch)
}

/// A stand-in while an event is out being signed.
fn placeholder() -> Event {
    Event {
        sequence: 0,
        origin: [0; 8],
        origin_name: String::new(),
        origin_sequence: 0,
        member_pseudonym: String::new(),
        member_name: String::new(),
        digest: [0; 32],
        kind: crate::digest::Kind::Other,
        category: Category::Other,
        op: EventOp::Expire,
        signature: Vec::new(),
    }
}

/// The known keys of other operators, by operator id (from the peer records).
fn known_keys(state: &State) -> Result<HashMap<[u8; 8], [u8; PUBLIC_KEY_LEN]>> {
    Ok(state
        .peers()?
        .iter()
        .filter_map(|peer| {
            let id = parse_operator_id(&peer.operator_id)?;
            let key: [u8; PUBLIC_KEY_LEN] = hex::decode(&peer.operator_key).ok()?.try_into().ok()?;
            Some((id, key))
        })
        .collect())
}

/// The names this operator gave other operators' ids (its peer records' names).
fn known_origin_names(state: &State) -> Result<HashMap<[u8; 8], String>> {
    Ok(state
        .peers()?
        .into_iter()
        .filter_map(|peer| Some((parse_operator_id(&peer.operator_id)?, peer.name)))
        .collect())
}

/// Whether this server passes flags on to any peer: then it asks its own sources for
/// signed events, which it keeps to pass on.
pub(super) fn wants_signatures(state: &State) -> Result<bool> {
    Ok(state.peers()?.iter().any(|peer| peer.pass_on))
}

/// The signature (with its path) to keep with an applied event, if it has one.
fn kept_signature(event: &Event) -> Option<OriginSignature> {
    if event.signature.is_empty() {
        return None;
    }
    let signature = event.signature.clone();
    let expires_at_ms = match event.op {
        EventOp::Upsert { expires_at_ms, .. } => expires_at_ms,
        EventOp::Retract(_) | EventOp::Expire => 0,
    };
    Some(OriginSignature {
        signature,
        expires_at_ms,
    })
}

/// Applies a pulled batch and advances the peer's cursor in one commit. `events` holds
/// each event or why it could not be read.
pub(super) fn apply(
    state: &State,
    peer_name: &str,
    events: Vec<std::result::Result<Event, Rejected>>,
    cursor: u64,
    remote_db_identity: String,
    now: i64,
) -> Result<ApplyOutcome> {
    let mut outcome = ApplyOutcome::default();
    let mut last_sequence = state.writer()?;
    let mut peer = state
        .peer(peer_name)?
        .ok_or_else(|| Error::NotFound(format!("peer: no peer named '{peer_name}'")))?;
    if cursor < peer.cursor && remote_db_identity == peer.remote_db_identity {
        return Err(Error::invalid(format!(
            "cursor: {cursor} is behind the stored cursor {} of peer '{peer_name}'",
            peer.cursor
        )));
    }
    let peer_origin = parse_operator_id(&peer.operator_id);
    let keys = known_keys(state)?;
    let origin_names = known_origin_names(state)?;
    // Signatures are kept only to pass events on; a server that passes nothing on saves
    // the few hundred bytes of each.
    let keep_signatures = wants_signatures(state)?;
    let kept_signature = |event: &Event| if keep_signatures { kept_signature(event) } else { None };
    let mut rejections: Vec<Rejected> = Vec::new();
    let mut valid = Vec::with_capacity(events.len());
    for event in events {
        let checked = event.and_then(|mut event| {
            check_event(&event, peer_origin, &keys, state.federation.operator_id, now)?;
            if Some(event.origin) != peer_origin {
                // A relayed event's names are the relay's words: the origin is named as
                // this operator configured it, and its member by what is already known.
                event.member_name = String::new();
                if let Some(name) = origin_names.get(&event.origin) {
                    event.origin_name = name.clone();
                }
            }
            Ok(event)
        });
        match checked {
            Ok(event) if event.origin == state.federation.operator_id => outcome.skipped += 1,
            Ok(event) => valid.push(event),
            Err(rejected) => rejections.push(rejected),
        }
    }
    // Events of other origins than the peer's are believed only with a valid signature.
    let (relayed_at, relayed): (Vec<usize>, Vec<([u8; PUBLIC_KEY_LEN], &Event)>) = valid
        .iter()
        .enumerate()
        .filter(|(_, event)| Some(event.origin) != peer_origin)
        .filter_map(|(index, event)| keys.get(&event.origin).map(|key| (index, (*key, event))))
        .unzip();
    let mut bad: HashMap<usize, String> = HashMap::new();
    for (index, result) in relayed_at.into_iter().zip(signing::verify_all(&relayed)) {
        if let Err(reason) = result {
            bad.insert(index, reason);
        }
    }
    if !bad.is_empty() {
        let mut index = 0;
        valid.retain(|event| {
            let keep = match bad.remove(&index) {
                Some(reason) => {
                    rejections.push(Rejected::new(event.sequence, "signature", reason));
                    false
                }
                None => true,
            };
            index += 1;
            keep
        });
    }

    let mut batch = state.store.batch();
    let mut renames: Vec<String> = Vec::new();
    // Each valid event's member, registered within the origin's bound.
    let mut accepted: Vec<(Event, FlagKey)> = Vec::with_capacity(valid.len());
    let mut touched_members = BTreeSet::new();
    for event in valid {
        let display = (Some(event.origin) == peer_origin)
            .then(|| display_name(&event.origin_name, &event.member_name, &event.member_pseudonym));
        let registered = state.federation.register(
            event.origin,
            &event.origin_name,
            &event.member_pseudonym,
            display,
            state.policy.max_foreign_members_per_origin,
        );
        let member = match registered {
            Ok(Registered::Known(id)) => id,
            Ok(registered) => {
                if let Registered::Renamed(_, old, new) = &registered
                    && renames.len() < 8
                {
                    renames.push(format!("'{old}' is now '{new}'"));
                }
                let id = registered.id();
                if let Some(record) = state.federation.foreign_by_id(id) {
                    state.registry.set_foreign_name(id, record.display);
                }
                id
            }
            Err(reason) => {
                rejections.push(Rejected {
                    sequence: event.sequence,
                    field: "member_id",
                    reason,
                });
                continue;
            }
        };
        touched_members.insert(member);
        let key = FlagKey {
            digest: event.digest,
            member,
            kind: event.kind,
            category: event.category,
        };
        accepted.push((event, key));
    }
    // Written with every batch that uses them: a member registered in memory by a batch
    // whose commit then failed is still persisted by the next one.
    for id in &touched_members {
        if let Some(member) = state.federation.foreign_by_id(*id) {
            batch.put_foreign_member(&member);
        }
    }
    let mut sorted_keys: Vec<FlagKey> = accepted.iter().map(|(_, key)| *key).collect();
    sorted_keys.sort_unstable();
    sorted_keys.dedup();
    let mut versions: HashMap<FlagKey, u64> = sorted_keys
        .iter()
        .copied()
        .zip(state.store.get_flag_versions(&sorted_keys)?)
        .filter_map(|(key, version)| version.map(|version| (key, version)))
        .collect();
    let digests: Vec<Digest> = sorted_keys
        .iter()
        .map(|key| key.digest)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut summaries = state.read_summaries(&digests)?;
    let mut touched = BTreeSet::new();
    let mut sequence = *last_sequence;

    for (event, key) in &accepted {
        let version = versions.get(key).copied();
        let Some(entries) = summaries.get_mut(&key.digest) else {
            continue;
        };
        match &event.op {
            EventOp::Upsert {
                confidence,
                first_seen_ms,
                last_seen_ms,
                expires_at_ms,
            } => {
                // A peer's flag lives no longer than this operator's own would.
                let expires_at_ms = (*expires_at_ms).min(state.policy.longest_expiry(key.category, now));
                if version.is_some_and(|version| version >= event.origin_sequence) || expires_at_ms <= now {
                    outcome.skipped += 1;
                    continue;
                }
                if let Err(reason) = state.check_room(entries, key) {
                    rejections.push(Rejected {
                        sequence: event.sequence,
                        field: "digest",
                        reason,
                    });
                    continue;
                }
                let record = FlagRecord {
                    confidence: *confidence,
                    first_seen_ms: *first_seen_ms,
                    last_seen_ms: *last_seen_ms,
                    expires_at_ms,
                    created_at_ms: now,
                    updated_at_ms: now,
                    key_id: 0,
                    reference: Vec::new(),
                    distribution: Distribution::Federated,
                    origin_sequence: event.origin_sequence,
                };
                stage_upsert(
                    &mut batch,
                    &mut sequence,
                    entries,
                    key,
                    &record,
                    kept_signature(event),
                    now,
                );
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
                            Removal {
                                change,
                                origin_sequence: event.origin_sequence,
                                signature: kept_signature(event),
                            },
                            now,
                        );
                        stage_dispute_cleanup(state, &mut batch, &key.digest, entries, key.member);
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
        if let Some(entries) = summaries.get(digest) {
            batch.put_summary(digest, entries)?;
        }
    }

    outcome.rejected = rejections.len() as u64;
    outcome.first_rejection = rejections.first().cloned();
    for rejected in rejections.iter().take(4) {
        tracing::warn!(peer = peer_name, %rejected, "refused a federated event");
    }
    if let Some(last) = rejections.last() {
        peer.n_rejected += outcome.rejected;
        peer.last_rejection = last.to_string();
    }
    let n_events = outcome.applied + outcome.skipped + outcome.rejected;
    if outcome.rejected > 0 && outcome.applied + outcome.skipped == 0 {
        peer.n_bad_batches += 1;
        if peer.n_bad_batches >= MAX_BAD_BATCHES {
            peer.paused = true;
            peer.pause_reason = format!(
                "paused by the server: {} batches in a row held only refused events (latest: {})",
                peer.n_bad_batches, peer.last_rejection
            );
            outcome.paused = true;
            tracing::warn!(peer = peer_name, reason = %peer.pause_reason, "federation peer paused");
        }
    } else if n_events > 0 {
        peer.n_bad_batches = 0;
    }
    peer.cursor = cursor;
    peer.remote_db_identity = remote_db_identity;
    peer.last_sync_ms = now;
    batch.put_peer(&peer.name, &encode_peer(&peer)?);
    if n_events > 0 {
        let actor = Actor {
            id: None,
            name: format!("peer:{peer_name}"),
        };
        let mut detail = format!(
            "cursor {cursor}; {} skipped, {} rejected",
            outcome.skipped, outcome.rejected
        );
        if let Some(first) = &outcome.first_rejection {
            detail.push_str(&format!(" (first: {first})"));
        }
        if !renames.is_empty() {
            detail.push_str(&format!("; renamed: {}", renames.join(", ")));
        }
        if outcome.paused {
            detail.push_str("; peer paused");
        }
        let event = AuditEvent::new(actor, AuditOp::FederationApply)
            .counts(n_events, outcome.applied)
            .detail(detail);
        state.commit_audited(batch, event, now)?;
    } else {
        state.store.commit(batch)?;
    }
    *last_sequence = sequence;
    Ok(outcome)
}

/// Parses a stored operator id (16 hex characters).
pub fn parse_operator_id(text: &str) -> Option<[u8; 8]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// A member or operator name as it may be shown: printable, no `/` (it separates the
/// operator from the member in a match), bounded.
fn check_shown_name(
    sequence: u64,
    field: &'static str,
    text: &str,
    max_len: usize,
    required: bool,
) -> std::result::Result<(), Rejected> {
    if text.is_empty() {
        return if required {
            Err(Rejected::new(sequence, field, "must be set"))
        } else {
            Ok(())
        };
    }
    if text.len() > max_len {
        return Err(Rejected::new(
            sequence,
            field,
            format!("{} bytes, the limit is {max_len}", text.len()),
        ));
    }
    if text.chars().any(|c| c.is_control() || c == '/') {
        return Err(Rejected::new(sequence, field, "holds a control character or '/'"));
    }
    Ok(())
}

/// The rules a foreign event must meet: the peer's authority over its origin, and what a
/// local submission must meet.
fn check_event(
    event: &Event,
    peer_origin: Option<[u8; 8]>,
    known_keys: &HashMap<[u8; 8], [u8; PUBLIC_KEY_LEN]>,
    own_origin: [u8; 8],
    now: i64,
) -> std::result::Result<(), Rejected> {
    let sequence = event.sequence;
    // Our own events coming back round a ring are dropped by the caller, not refused.
    if event.origin != own_origin && Some(event.origin) != peer_origin {
        if !known_keys.contains_key(&event.origin) {
            return Err(Rejected::new(
                sequence,
                "origin_operator",
                format!(
                    "{} is not this peer's operator and its key is not known here; a peer speaks only for itself",
                    hex::encode(event.origin)
                ),
            ));
        }
        if event.signature.is_empty() {
            return Err(Rejected::new(
                sequence,
                "signature",
                format!(
                    "an event of operator {} passed on without its signature",
                    hex::encode(event.origin)
                ),
            ));
        }
        // Whether it verifies under the key is checked for the whole batch at once.
    }
    let pseudonym_ok = !event.member_pseudonym.is_empty()
        && event.member_pseudonym.len() <= 64
        && event
            .member_pseudonym
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !pseudonym_ok {
        return Err(Rejected::new(
            sequence,
            "member_id",
            "must be 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' and '.'",
        ));
    }
    if !event.member_name.is_empty() && principals::validate_principal_name(&event.member_name).is_err() {
        return Err(Rejected::new(
            sequence,
            "member_name",
            "must be 1 to 64 characters of a-z, 0-9, '-', '_' and '.'",
        ));
    }
    check_shown_name(sequence, "origin_operator_name", &event.origin_name, 128, true)?;
    if event.origin_sequence == 0 {
        return Err(Rejected::new(sequence, "origin_sequence", "must be at least 1"));
    }
    if let EventOp::Upsert {
        confidence,
        first_seen_ms,
        last_seen_ms,
        ..
    } = event.op
    {
        if confidence > 100 {
            return Err(Rejected::new(
                sequence,
                "confidence",
                format!("{confidence} is above 100"),
            ));
        }
        if first_seen_ms > last_seen_ms || last_seen_ms > now.saturating_add(super::flags::MAX_CLOCK_SKEW_MS) {
            return Err(Rejected::new(
                sequence,
                "last_seen",
                "first_seen/last_seen are out of order or in the future",
            ));
        }
    }
    Ok(())
}

/// Adds or reconfigures a peer; the cursor, the counts and the operator id of an existing
/// peer are kept (an id comes only from a bundle).
pub(super) fn configure_peer(state: &State, admin: &Caller, mut record: PeerRecord, now: i64) -> Result<PeerRecord> {
    principals::validate_principal_name(&record.name)?;
    if !record.operator_id.is_empty() && parse_operator_id(&record.operator_id).is_none() {
        return Err(Error::invalid(format!(
            "operator_id: '{}' is not 16 hex characters",
            record.operator_id
        )));
    }
    if !record.operator_key.is_empty()
        && hex::decode(&record.operator_key).map_or(true, |key| key.len() != PUBLIC_KEY_LEN)
    {
        return Err(Error::invalid(format!(
            "operator_key: '{}' is not 64 hex characters",
            record.operator_key
        )));
    }
    let _writer = state.writer()?;
    if let Some(existing) = state.peer(&record.name)? {
        record.cursor = existing.cursor;
        record.remote_db_identity = existing.remote_db_identity;
        record.last_sync_ms = existing.last_sync_ms;
        record.n_rejected = existing.n_rejected;
        record.last_rejection = existing.last_rejection;
        if record.operator_id.is_empty() {
            record.operator_id = existing.operator_id;
        }
        if record.operator_key.is_empty() {
            record.operator_key = existing.operator_key;
        }
    }
    // An admin's word resets the server's own pause.
    record.n_bad_batches = 0;
    record.pause_reason = String::new();
    let mut batch = state.store.batch();
    batch.put_peer(&record.name, &encode_peer(&record)?);
    let categories: Vec<&str> = record.categories.iter().map(|c| c.as_str()).collect();
    let event = AuditEvent::new(admin.into(), AuditOp::ConfigurePeer).detail(format!(
        "{}: endpoint '{}', operator '{}' key '{}', paused {}, categories [{}], pass_on {}, reveal_names {}",
        record.name,
        record.endpoint,
        record.operator_id,
        record.operator_key,
        record.paused,
        categories.join(","),
        record.pass_on,
        record.reveal_names
    ));
    state.commit_audited(batch, event, now)?;
    Ok(record)
}

/// Digests whose flags are dropped per commit when a peer's snapshot starts over.
const RESNAPSHOT_CHUNK: usize = 1_000;

/// Starts a peer's pull over from 0: the peer could not continue our cursor (its database
/// was restored from a backup or replaced, or our cursor is older than its tombstones).
/// What we hold of the peer's own flags may no longer be true, so they are dropped with
/// their versions first (in commits of bounded size), and its snapshot brings back what it
/// still holds. Flags of third operators it passed on stay (they are theirs to retract).
/// Returns how many flags were dropped.
pub(super) fn reset_peer_cursor(state: &State, name: &str, reason: &str, now: i64) -> Result<u64> {
    let peer = state
        .peer(name)?
        .ok_or_else(|| Error::NotFound(format!("name: no peer named '{name}'")))?;
    let mut n_dropped = 0u64;
    if let Some(origin) = parse_operator_id(&peer.operator_id) {
        let of_peer = |member: crate::model::PrincipalId| state.federation.origin_of(member) == Some(origin);
        // Found without the lock; each chunk is re-read under it.
        let mut candidates: Vec<Digest> = Vec::new();
        for row in state.store.all_summaries() {
            let (digest, entries) = row?;
            if entries
                .iter()
                .any(|entry| is_foreign(entry.member) && of_peer(entry.member))
            {
                candidates.push(digest);
            }
        }
        n_dropped = state.remove_where(
            &candidates,
            RESNAPSHOT_CHUNK,
            |entry| is_foreign(entry.member) && of_peer(entry.member),
            |_| Ok(Removal::local(Change::Retract(RetractReason::Withdrawn))),
            true,
            |n| {
                let actor = Actor {
                    id: None,
                    name: format!("peer:{name}"),
                };
                AuditEvent::new(actor, AuditOp::FederationApply)
                    .counts(n, n)
                    .detail("flags of the peer dropped before its new snapshot")
            },
            now,
        )?;
    }
    let _writer = state.writer()?;
    let mut peer = state
        .peer(name)?
        .ok_or_else(|| Error::NotFound(format!("name: no peer named '{name}'")))?;
    let old_cursor = peer.cursor;
    peer.cursor = 0;
    peer.remote_db_identity = String::new();
    let mut batch = state.store.batch();
    batch.put_peer(name, &encode_peer(&peer)?);
    let actor = Actor {
        id: None,
        name: format!("peer:{name}"),
    };
    let event = AuditEvent::new(actor, AuditOp::FederationApply).detail(format!(
        "cursor {old_cursor} refused by the peer ({reason}); {n_dropped} of its flags dropped; pulling again from 0"
    ));
    state.commit_audited(batch, event, now)?;
    tracing::warn!(
        peer = name,
        old_cursor,
        n_dropped,
        reason,
        "federation peer asks for a new snapshot; pulling from 0"
    );
    Ok(n_dropped)
}

pub(super) fn remove_peer(state: &State, admin: &Caller, name: &str, now: i64) -> Result<()> {
    let _writer = state.writer()?;
    if state.peer(name)?.is_none() {
        return Err(Error::NotFound(format!("name: no peer named '{name}'")));
    }
    let mut batch = state.store.batch();
    batch.delete_peer(name);
    let event = AuditEvent::new(admin.into(), AuditOp::ConfigurePeer).detail(format!("{name}: removed"));
    state.commit_audited(batch, event, now)?;
    state.remove_peer_principal(admin, name, now)?;
    Ok(())
}

impl State {
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
}
