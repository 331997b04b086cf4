//! Conversions between the generated `pb` types and the domain, with the wire-level checks
//! (lengths, enum values, timestamps). Every message names the field and item index.

use std::fmt::{self, Display};

use prost_types::Timestamp;

use crate::domain::feed::{FeedItem, FeedOp};
use crate::domain::{
    AuditFilter, Event, EventOp, FlagSelector, HeldFlag, Match, NewFlag, PeerRecord, PrincipalView, Rejected,
    RetractOutcome, Stats, SubmitOutcome, VerifyReport,
};
use crate::error::{Error, Result};
use crate::model::{AuditEntry, AuditOp, PrincipalRecord, PrincipalStats};
use crate::pb;
use crate::wire::{
    category_from_pb, category_to_pb, digest_from_bytes, distribution_from_pb, kind_from_pb, kind_to_pb,
    ms_from_timestamp, optional_category_from_pb, optional_kind_from_pb, principal_status_to_pb, retract_reason_of,
    retract_reason_to_pb, role_to_pb, timestamp_from_ms,
};

/// `flags[index].name`, formatted only when an error names it: building the string for
/// every field of every flag was a measurable part of a bulk load.
struct ItemField {
    index: usize,
    name: &'static str,
}

impl Display for ItemField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flags[{}].{}", self.index, self.name)
    }
}

pub fn new_flags_from_pb(flags: Vec<pb::Flag>) -> Result<Vec<NewFlag>> {
    new_flags_from_pb_at(flags, 0)
}

/// As `new_flags_from_pb`, the items numbered from `first_index` in errors.
pub fn new_flags_from_pb_at(flags: Vec<pb::Flag>, first_index: usize) -> Result<Vec<NewFlag>> {
    crate::domain::flags::check_batch_len("flags", flags.len())?;
    flags
        .into_iter()
        .enumerate()
        .map(|(index, flag)| {
            let index = first_index + index;
            let field = |name| ItemField { index, name };
            Ok(NewFlag {
                digest: digest_from_bytes(field("digest"), &flag.digest)?,
                kind: kind_from_pb(field("kind"), flag.kind)?,
                category: category_from_pb(field("category"), flag.category)?,
                confidence: flag.confidence,
                observed_at_ms: flag
                    .observed_at
                    .as_ref()
                    .map(|ts| ms_from_timestamp(field("observed_at"), ts))
                    .transpose()?,
                expires_at_ms: flag
                    .expires_at
                    .as_ref()
                    .map(|ts| ms_from_timestamp(field("expires_at"), ts))
                    .transpose()?,
                reference: flag.reference,
                distribution: distribution_from_pb(field("distribution"), flag.distribution)?,
            })
        })
        .collect()
}

pub fn held_flag_to_pb(held: HeldFlag) -> pb::HeldFlag {
    pb::HeldFlag {
        digest: held.key.digest.to_vec(),
        kind: kind_to_pb(held.key.kind) as i32,
        category: category_to_pb(held.key.category) as i32,
        confidence: u32::from(held.confidence),
        held_since: Some(timestamp_from_ms(held.held_since_ms)),
        expires_at: Some(timestamp_from_ms(held.expires_at_ms)),
    }
}

pub fn match_to_pb(found: Match) -> pb::Match {
    pb::Match {
        index: found.index,
        digest: found.digest.to_vec(),
        n_members: found.members.len() as u32,
        members: found.members,
        categories: found.categories.into_iter().map(|c| category_to_pb(c) as i32).collect(),
        kinds: found.kinds.into_iter().map(|k| kind_to_pb(k) as i32).collect(),
        first_seen: Some(timestamp_from_ms(found.first_seen_ms)),
        last_seen: Some(timestamp_from_ms(found.last_seen_ms)),
        max_confidence: u32::from(found.max_confidence),
        flagged_by_caller: found.flagged_by_caller,
        n_disputes: found.n_disputes,
    }
}

pub fn submit_outcome_to_pb(outcome: SubmitOutcome) -> pb::SubmitResponse {
    pb::SubmitResponse {
        n_created: outcome.n_created,
        n_updated: outcome.n_updated,
        n_quarantined: outcome.n_quarantined,
        sequence: outcome.sequence,
    }
}

pub fn selectors_from_pb(selectors: Vec<pb::FlagSelector>) -> Result<Vec<FlagSelector>> {
    crate::domain::flags::check_batch_len("flags", selectors.len())?;
    selectors
        .into_iter()
        .enumerate()
        .map(|(index, selector)| {
            let field = |name| ItemField { index, name };
            Ok(FlagSelector {
                digest: digest_from_bytes(field("digest"), &selector.digest)?,
                kind: optional_kind_from_pb(field("kind"), selector.kind)?,
                category: optional_category_from_pb(field("category"), selector.category)?,
            })
        })
        .collect()
}

pub fn retract_outcome_to_pb(outcome: RetractOutcome) -> pb::RetractResponse {
    pb::RetractResponse {
        n_retracted: outcome.n_retracted,
        unmatched_indexes: outcome.unmatched_indexes,
        sequence: outcome.sequence,
    }
}

pub fn principal_to_pb(record: &PrincipalRecord) -> pb::Principal {
    principal_view_to_pb(&PrincipalView {
        record: record.clone(),
        stats: PrincipalStats::default(),
    })
}

pub fn principal_view_to_pb(view: &PrincipalView) -> pb::Principal {
    let record = &view.record;
    pb::Principal {
        name: record.name.clone(),
        role: role_to_pb(record.role) as i32,
        status: principal_status_to_pb(record.status) as i32,
        created_at: Some(timestamp_from_ms(record.created_at_ms)),
        certificate_sha256: hex::encode(record.cert_sha256),
        last_seen: (view.stats.last_seen_ms > 0).then(|| timestamp_from_ms(view.stats.last_seen_ms)),
        n_flags_submitted: view.stats.n_flags_submitted,
        n_queries: view.stats.n_queries,
        n_digests_queried: view.stats.n_digests_queried,
        certificate_expires_at: (record.cert_not_after_ms > 0).then(|| timestamp_from_ms(record.cert_not_after_ms)),
    }
}

pub fn audit_entry_to_pb(entry: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        sequence: entry.sequence,
        at: Some(timestamp_from_ms(entry.at_ms)),
        principal: entry.principal,
        op: entry.op,
        n_items: entry.n_items,
        n_changed: entry.n_changed,
        detail: entry.detail,
        digests: entry.digests,
        prev_hash: entry.prev_hash,
    }
}

pub const DEFAULT_AUDIT_LIST_LIMIT: u32 = 1_000;

pub fn audit_filter_from_pb(request: pb::ListAuditRequest) -> Result<AuditFilter> {
    let op = match request.op.as_str() {
        "" => None,
        text => Some(
            text.parse::<AuditOp>()
                .map_err(|reason| Error::invalid(format!("op: {reason}")))?,
        ),
    };
    let digest = match request.digest.len() {
        0 => None,
        _ => Some(digest_from_bytes("digest", &request.digest)?),
    };
    Ok(AuditFilter {
        principal: (!request.principal.is_empty()).then_some(request.principal),
        op,
        since_ms: request.since.map(|t| ms_from_timestamp("since", &t)).transpose()?,
        until_ms: request.until.map(|t| ms_from_timestamp("until", &t)).transpose()?,
        digest,
        limit: if request.limit == 0 {
            DEFAULT_AUDIT_LIST_LIMIT as usize
        } else {
            request.limit as usize
        },
    })
}

pub fn verify_report_to_pb(report: VerifyReport) -> pb::VerifyAuditResponse {
    let (broken_sequence, problem) = report.broken.clone().unwrap_or_default();
    pb::VerifyAuditResponse {
        ok: report.broken.is_none(),
        n_checked: report.n_checked,
        first_sequence: report.first_sequence,
        last_sequence: report.last_sequence,
        head_hash: hex::encode(report.head_hash),
        broken_sequence,
        problem,
    }
}

pub fn stats_to_pb(stats: Stats) -> pb::GetStatsResponse {
    fn named<K: std::fmt::Display>(map: std::collections::BTreeMap<K, u64>) -> std::collections::HashMap<String, u64> {
        map.into_iter().map(|(key, n)| (key.to_string(), n)).collect()
    }
    let optional_time = |ms: i64| (ms != 0).then(|| timestamp_from_ms(ms));
    pb::GetStatsResponse {
        n_digests: stats.n_digests,
        n_active_flags: stats.n_active_flags,
        n_expired_flags: stats.n_expired_flags,
        active_flags_by_kind: named(stats.active_by_kind),
        active_flags_by_category: named(stats.active_by_category),
        active_principals_by_role: named(stats.principals_by_role),
        disk_bytes: stats.disk_bytes,
        oldest_flag: optional_time(stats.oldest_flag_ms),
        newest_flag: optional_time(stats.newest_flag_ms),
        change_sequence: stats.change_sequence,
        audit_sequence: stats.audit_sequence,
        flags_expired_purged: stats.flags_expired_purged,
        audit_entries_pruned: stats.audit_entries_pruned,
        operator_id: String::new(),
        operator_key: String::new(),
    }
}

pub fn event_to_pb(event: Event) -> pb::FederatedEvent {
    let mut out = pb::FederatedEvent {
        sequence: event.sequence,
        origin_operator: event.origin.to_vec(),
        origin_operator_name: event.origin_name,
        origin_sequence: event.origin_sequence,
        member_id: event.member_pseudonym,
        member_name: event.member_name,
        digest: event.digest.to_vec(),
        kind: kind_to_pb(event.kind) as i32,
        category: category_to_pb(event.category) as i32,
        signature: event.signature,
        ..Default::default()
    };
    match event.op {
        EventOp::Upsert {
            confidence,
            first_seen_ms,
            last_seen_ms,
            expires_at_ms,
        } => {
            out.op = pb::federated_event::Op::Upsert as i32;
            out.confidence = u32::from(confidence);
            out.first_seen = Some(timestamp_from_ms(first_seen_ms));
            out.last_seen = Some(timestamp_from_ms(last_seen_ms));
            out.expires_at = Some(timestamp_from_ms(expires_at_ms));
        }
        EventOp::Retract(reason) => {
            out.op = pb::federated_event::Op::Retract as i32;
            out.reason = retract_reason_to_pb(reason) as i32;
        }
        EventOp::Expire => out.op = pb::federated_event::Op::Expire as i32,
    }
    out
}

/// A received event, or why it is malformed (naming the sender's sequence number and the
/// field).
pub fn event_from_pb(event: pb::FederatedEvent) -> std::result::Result<Event, Rejected> {
    let sequence = event.sequence;
    let reject = |field: &'static str, reason: String| Rejected::new(sequence, field, reason);
    let wire =
        |field: &'static str| move |err: Error| Rejected::new(sequence, field, strip_field(&err.to_string(), field));
    let origin: [u8; 8] = event.origin_operator.as_slice().try_into().map_err(|_| {
        reject(
            "origin_operator",
            format!("{} bytes, expected 8", event.origin_operator.len()),
        )
    })?;
    let digest = digest_from_bytes("digest", &event.digest).map_err(wire("digest"))?;
    let kind = kind_from_pb("kind", event.kind).map_err(wire("kind"))?;
    if event.signature.len() > crate::domain::signing::MAX_SIGNATURE_BYTES {
        return Err(reject(
            "signature",
            format!(
                "{} bytes, the most a signature with its path takes is {}",
                event.signature.len(),
                crate::domain::signing::MAX_SIGNATURE_BYTES
            ),
        ));
    }
    let category = category_from_pb("category", event.category).map_err(wire("category"))?;
    let time = |field: &'static str, ts: &Option<Timestamp>| -> std::result::Result<i64, Rejected> {
        let ts = ts.as_ref().ok_or_else(|| reject(field, "is required".to_owned()))?;
        ms_from_timestamp(field, ts).map_err(wire(field))
    };
    let op = match pb::federated_event::Op::try_from(event.op) {
        Ok(pb::federated_event::Op::Upsert) => EventOp::Upsert {
            confidence: u8::try_from(event.confidence)
                .ok()
                .filter(|confidence| *confidence <= 100)
                .ok_or_else(|| reject("confidence", format!("{} is above 100", event.confidence)))?,
            first_seen_ms: time("first_seen", &event.first_seen)?,
            last_seen_ms: time("last_seen", &event.last_seen)?,
            expires_at_ms: time("expires_at", &event.expires_at)?,
        },
        Ok(pb::federated_event::Op::Retract) => EventOp::Retract(
            retract_reason_of(event.reason)
                .ok_or_else(|| reject("reason", format!("unknown retract reason {}", event.reason)))?,
        ),
        Ok(pb::federated_event::Op::Expire) => EventOp::Expire,
        _ => return Err(reject("op", format!("unknown op {}", event.op))),
    };
    Ok(Event {
        sequence,
        origin,
        origin_name: event.origin_operator_name,
        origin_sequence: event.origin_sequence,
        member_pseudonym: event.member_id,
        member_name: event.member_name,
        digest,
        kind,
        category,
        op,
        signature: event.signature,
    })
}

/// `"field: reason"` → `"reason"`, for messages re-attached to a `Rejected` field.
fn strip_field(message: &str, field: &str) -> String {
    message
        .strip_prefix(field)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(message)
        .to_owned()
}

/// Most endpoints one peer may list (the nodes of a replicated peer operator).
pub const MAX_PEER_ENDPOINTS: usize = 8;

pub fn peer_from_pb(request: pb::ConfigurePeerRequest) -> Result<PeerRecord> {
    if request.endpoint.is_empty() != request.bundle_dir.is_empty() {
        return Err(Error::invalid(
            "endpoint, bundle_dir: give both (to pull from the peer) or neither (a peer that only pulls from us)",
        ));
    }
    // One endpoint, or a comma-separated list of a replicated peer's nodes: each pull tries
    // them in order, up to 10 s each, so the list is short.
    let endpoints = crate::client::split_endpoints(&request.endpoint);
    if endpoints.len() > MAX_PEER_ENDPOINTS {
        return Err(Error::invalid(format!(
            "endpoint: {} endpoints, at most {MAX_PEER_ENDPOINTS}",
            endpoints.len()
        )));
    }
    if let Some(bad) = endpoints.iter().find(|endpoint| !endpoint.starts_with("https://")) {
        return Err(Error::invalid(format!("endpoint: '{bad}' must start with https://")));
    }
    if !request.endpoint.is_empty() && endpoints.is_empty() {
        return Err(Error::invalid("endpoint: no endpoint in the list"));
    }
    if !request.bundle_dir.is_empty() && !std::path::Path::new(&request.bundle_dir).is_absolute() {
        return Err(Error::invalid(format!(
            "bundle_dir: '{}' must be an absolute path on the server",
            request.bundle_dir
        )));
    }
    let categories = request
        .categories
        .iter()
        .enumerate()
        .map(|(index, value)| category_from_pb(format!("categories[{index}]"), *value))
        .collect::<Result<Vec<_>>>()?;
    Ok(PeerRecord {
        name: request.name,
        operator_id: request.operator_id,
        endpoint: request.endpoint,
        bundle_dir: request.bundle_dir,
        paused: request.paused,
        cursor: 0,
        last_sync_ms: 0,
        categories,
        pass_on: request.pass_on,
        reveal_names: request.reveal_names,
        operator_key: request.operator_key,
        ..PeerRecord::policy_only("")
    })
}

pub fn peer_config_to_pb(record: &PeerRecord) -> pb::ConfigurePeerRequest {
    pb::ConfigurePeerRequest {
        name: record.name.clone(),
        endpoint: record.endpoint.clone(),
        bundle_dir: record.bundle_dir.clone(),
        paused: record.paused,
        categories: record.categories.iter().map(|c| category_to_pb(*c) as i32).collect(),
        pass_on: record.pass_on,
        reveal_names: record.reveal_names,
        operator_id: record.operator_id.clone(),
        operator_key: record.operator_key.clone(),
    }
}

/// A feed item as the wire carries it.
pub fn feed_item_to_pb(item: FeedItem) -> pb::FeedEvent {
    let (op, reason) = match item.op {
        FeedOp::Snapshot => (pb::feed_event::Op::Snapshot, 0),
        FeedOp::Upsert => (pb::feed_event::Op::Upsert, 0),
        FeedOp::Retract(reason) => (pb::feed_event::Op::Retract, retract_reason_to_pb(reason) as i32),
        FeedOp::Expire => (pb::feed_event::Op::Expire, 0),
        FeedOp::Dispute => (pb::feed_event::Op::Dispute, 0),
    };
    let (kind, category, member) = match item.flag {
        Some((kind, category, member)) => (kind_to_pb(kind) as i32, category_to_pb(category) as i32, member),
        None => (0, 0, String::new()),
    };
    pb::FeedEvent {
        sequence: item.sequence,
        op: op as i32,
        digest: item.digest.to_vec(),
        kind,
        category,
        member,
        reason,
        state: item.state.map(match_to_pb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_events_name_their_sequence_and_field() {
        let good = pb::FederatedEvent {
            sequence: 42,
            origin_operator: vec![1; 8],
            origin_operator_name: "op".to_owned(),
            origin_sequence: 7,
            member_id: "m-1".to_owned(),
            digest: vec![3; 32],
            kind: pb::IdentifierKind::Email as i32,
            category: pb::Category::Grooming as i32,
            op: pb::federated_event::Op::Retract as i32,
            reason: pb::RetractReason::Duplicate as i32,
            ..Default::default()
        };
        assert!(event_from_pb(good.clone()).is_ok());
        let cases = [
            (
                pb::FederatedEvent {
                    origin_operator: vec![1; 3],
                    ..good.clone()
                },
                "event 42: origin_operator: 3 bytes, expected 8",
            ),
            (
                pb::FederatedEvent {
                    digest: vec![3; 31],
                    ..good.clone()
                },
                "event 42: digest: expected 32 bytes, got 31",
            ),
            (
                pb::FederatedEvent { op: 9, ..good.clone() },
                "event 42: op: unknown op 9",
            ),
            (
                pb::FederatedEvent {
                    op: pb::federated_event::Op::Upsert as i32,
                    confidence: 101,
                    ..good.clone()
                },
                "event 42: confidence: 101 is above 100",
            ),
            (
                pb::FederatedEvent {
                    op: pb::federated_event::Op::Upsert as i32,
                    confidence: 10,
                    ..good.clone()
                },
                "event 42: first_seen: is required",
            ),
            (
                pb::FederatedEvent {
                    op: pb::federated_event::Op::Upsert as i32,
                    confidence: 10,
                    first_seen: Some(Timestamp { seconds: 1, nanos: 0 }),
                    last_seen: Some(Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    }),
                    expires_at: Some(Timestamp { seconds: 1, nanos: 0 }),
                    ..good
                },
                "event 42: last_seen:",
            ),
        ];
        for (event, expected) in cases {
            let err = event_from_pb(event).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn timestamp() -> impl Strategy<Value = Option<Timestamp>> {
        proptest::option::of((any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }))
    }

    fn federated_event() -> impl Strategy<Value = pb::FederatedEvent> {
        (
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..12),
                "\\PC{0,20}",
                any::<u64>(),
            ),
            (
                "\\PC{0,20}",
                "\\PC{0,20}",
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            (any::<i32>(), any::<i32>(), any::<i32>(), any::<u32>()),
            (timestamp(), timestamp(), timestamp(), any::<i32>()),
            proptest::collection::vec(any::<u8>(), 0..70),
        )
            .prop_map(
                |(
                    (sequence, origin, origin_name, origin_sequence),
                    (member_id, member_name, digest),
                    (kind, category, op, confidence),
                    (first_seen, last_seen, expires_at, reason),
                    signature,
                )| pb::FederatedEvent {
                    sequence,
                    origin_operator: origin,
                    origin_operator_name: origin_name,
                    origin_sequence,
                    member_id,
                    member_name,
                    digest,
                    kind: kind % 10,
                    category: category % 10,
                    op: op % 5,
                    confidence,
                    first_seen,
                    last_seen,
                    expires_at,
                    reason: reason % 10,
                    signature,
                },
            )
    }

    fn flag() -> impl Strategy<Value = pb::Flag> {
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            (any::<i32>(), any::<i32>(), any::<u32>(), any::<i32>()),
            (timestamp(), timestamp()),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(
                |(digest, (kind, category, confidence, distribution), (observed_at, expires_at), reference)| pb::Flag {
                    digest,
                    kind: kind % 10,
                    category: category % 10,
                    confidence,
                    observed_at,
                    expires_at,
                    reference,
                    distribution: distribution % 5,
                },
            )
    }

    proptest! {
        #[test]
        fn any_federated_event_converts_or_is_refused(event in federated_event()) {
            let sequence = event.sequence;
            match event_from_pb(event.clone()) {
                Ok(converted) => {
                    // What converts goes back out the same.
                    let back = event_to_pb(converted);
                    prop_assert_eq!(back.digest, event.digest);
                    prop_assert_eq!(back.origin_sequence, event.origin_sequence);
                }
                Err(rejected) => prop_assert_eq!(rejected.sequence, sequence),
            }
        }

        #[test]
        fn any_flag_batch_converts_or_is_refused(flags in proptest::collection::vec(flag(), 0..5)) {
            if let Ok(converted) = new_flags_from_pb(flags.clone()) {
                prop_assert_eq!(converted.len(), flags.len());
                let _ = crate::domain::flags::validate_new_flags(&converted, crate::util::now_ms());
            }
        }

        #[test]
        fn any_selector_batch_converts_or_is_refused(
            selectors in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), any::<i32>(), any::<i32>()), 0..5),
        ) {
            let selectors: Vec<pb::FlagSelector> = selectors
                .into_iter()
                .map(|(digest, kind, category)| pb::FlagSelector { digest, kind, category })
                .collect();
            let _ = selectors_from_pb(selectors);
        }
    }
}
