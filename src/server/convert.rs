//! Conversions between the generated `pb` types and the domain, with the wire-level checks
//! (lengths, enum values, timestamps). Every message names the field and item index.

use std::fmt::{self, Display};

use prost_types::Timestamp;
use tonic::Status;

use crate::digest::{DIGEST_LEN, Digest, Kind};
use crate::domain::{
    AuditFilter, Event, EventOp, FlagSelector, Match, NewFlag, PeerRecord, PrincipalView, RetractOutcome, Stats,
    SubmitOutcome, VerifyReport,
};
use crate::error::{Error, Result};
use crate::model::{
    AuditEntry, AuditOp, Category, Distribution, PrincipalRecord, PrincipalStats, PrincipalStatus, RetractReason, Role,
};
use crate::pb;

/// The one place library errors become gRPC statuses. Storage and internal details are
/// logged, never sent.
pub fn status_from_error(err: Error) -> Status {
    match err {
        Error::InvalidArgument(message) => Status::invalid_argument(message),
        Error::ResourceExhausted(message) => Status::resource_exhausted(message),
        Error::NotFound(message) => Status::not_found(message),
        Error::AlreadyExists(message) => Status::already_exists(message),
        Error::Unauthenticated(message) => Status::unauthenticated(message),
        Error::PermissionDenied(message) => Status::permission_denied(message),
        Error::FailedPrecondition(message) => Status::failed_precondition(message),
        err @ (Error::Storage(_) | Error::Internal(_)) => {
            tracing::error!(error = %err, "internal error");
            Status::internal("internal error")
        }
    }
}

pub fn ms_from_timestamp(field: impl Display, timestamp: &Timestamp) -> Result<i64> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(Error::invalid(format!(
            "{field}: nanos {} is outside 0..1e9",
            timestamp.nanos
        )));
    }
    timestamp
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(timestamp.nanos / 1_000_000)))
        .ok_or_else(|| Error::invalid(format!("{field}: {} seconds is out of range", timestamp.seconds)))
}

pub fn timestamp_from_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn digest_from_bytes(field: impl Display, bytes: &[u8]) -> Result<Digest> {
    bytes
        .try_into()
        .map_err(|_| Error::invalid(format!("{field}: expected {DIGEST_LEN} bytes, got {}", bytes.len())))
}

pub fn kind_from_pb(field: impl Display, value: i32, required: bool) -> Result<Option<Kind>> {
    match pb::IdentifierKind::try_from(value) {
        Ok(pb::IdentifierKind::Unspecified) if required => Err(Error::invalid(format!("{field}: must be set"))),
        Ok(pb::IdentifierKind::Unspecified) => Ok(None),
        Ok(_) => Ok(Kind::from_u8(value as u8)),
        Err(_) => Err(Error::invalid(format!("{field}: unknown identifier kind {value}"))),
    }
}

pub fn kind_to_pb(kind: Kind) -> pb::IdentifierKind {
    pb::IdentifierKind::try_from(kind as i32).unwrap_or(pb::IdentifierKind::Unspecified)
}

pub fn category_from_pb(field: impl Display, value: i32, required: bool) -> Result<Option<Category>> {
    match pb::Category::try_from(value) {
        Ok(pb::Category::Unspecified) if required => Err(Error::invalid(format!("{field}: must be set"))),
        Ok(pb::Category::Unspecified) => Ok(None),
        Ok(_) => Ok(Category::from_u8(value as u8)),
        Err(_) => Err(Error::invalid(format!("{field}: unknown category {value}"))),
    }
}

pub fn category_to_pb(category: Category) -> pb::Category {
    pb::Category::try_from(category as i32).unwrap_or(pb::Category::Unspecified)
}

/// `None` for unspecified (the operator's default).
pub fn distribution_from_pb(field: impl Display, value: i32) -> Result<Option<Distribution>> {
    match pb::Distribution::try_from(value) {
        Ok(pb::Distribution::Unspecified) => Ok(None),
        Ok(_) => Ok(Distribution::from_u8(value as u8)),
        Err(_) => Err(Error::invalid(format!("{field}: unknown distribution {value}"))),
    }
}

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
    crate::domain::flags::check_batch_len("flags", flags.len())?;
    flags
        .into_iter()
        .enumerate()
        .map(|(index, flag)| {
            let field = |name| ItemField { index, name };
            Ok(NewFlag {
                digest: digest_from_bytes(field("digest"), &flag.digest)?,
                kind: kind_from_pb(field("kind"), flag.kind, true)?.expect("required"),
                category: category_from_pb(field("category"), flag.category, true)?.expect("required"),
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

/// Splits a packed `N x 32` byte string into digests.
pub fn digests_from_packed(packed: &[u8]) -> Result<Vec<Digest>> {
    if !packed.len().is_multiple_of(DIGEST_LEN) {
        return Err(Error::invalid(format!(
            "digests: {} bytes is not a whole number of {DIGEST_LEN}-byte digests",
            packed.len()
        )));
    }
    crate::domain::flags::check_batch_len("digests", packed.len() / DIGEST_LEN)?;
    Ok(packed
        .chunks_exact(DIGEST_LEN)
        .map(|chunk| chunk.try_into().expect("exact chunk"))
        .collect())
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
                kind: kind_from_pb(field("kind"), selector.kind, false)?,
                category: category_from_pb(field("category"), selector.category, false)?,
            })
        })
        .collect()
}

/// A member's retraction reason; `withdrawn` is the operator's alone.
pub fn retract_reason_from_pb(value: i32) -> Result<RetractReason> {
    match pb::RetractReason::try_from(value)
        .ok()
        .and_then(|_| RetractReason::from_u8(value as u8))
    {
        Some(RetractReason::Withdrawn) => Err(Error::invalid(
            "reason: withdrawn is set by the operator when it withdraws a member's flags",
        )),
        Some(reason) => Ok(reason),
        None => Err(Error::invalid(format!("reason: unknown retract reason {value}"))),
    }
}

pub fn retract_outcome_to_pb(outcome: RetractOutcome) -> pb::RetractResponse {
    pb::RetractResponse {
        n_retracted: outcome.n_retracted,
        unmatched_indexes: outcome.unmatched_indexes,
        sequence: outcome.sequence,
    }
}

pub fn role_from_pb(value: i32) -> Result<Role> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Unspecified) => Err(Error::invalid("role: must be set")),
        Ok(_) => Ok(Role::from_u8(value as u8).expect("pb roles mirror model roles")),
        Err(_) => Err(Error::invalid(format!("role: unknown role {value}"))),
    }
}

pub fn status_from_pb(value: i32) -> Result<PrincipalStatus> {
    match pb::PrincipalStatus::try_from(value) {
        Ok(pb::PrincipalStatus::Unspecified) => Err(Error::invalid("status: must be set")),
        Ok(_) => Ok(PrincipalStatus::from_u8(value as u8).expect("pb statuses mirror model statuses")),
        Err(_) => Err(Error::invalid(format!("status: unknown status {value}"))),
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
        role: record.role as i32,
        status: record.status as i32,
        created_at: Some(timestamp_from_ms(record.created_at_ms)),
        certificate_sha256: hex::encode(record.cert_sha256),
        last_seen: (view.stats.last_seen_ms > 0).then(|| timestamp_from_ms(view.stats.last_seen_ms)),
        n_flags_submitted: view.stats.n_flags_submitted,
        n_queries: view.stats.n_queries,
        n_digests_queried: view.stats.n_digests_queried,
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
        DIGEST_LEN => Some(request.digest.as_slice().try_into().expect("32 bytes")),
        n => {
            return Err(Error::invalid(format!("digest: {n} bytes, expected {DIGEST_LEN}")));
        }
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
            out.reason = reason as i32;
        }
        EventOp::Expire => out.op = pb::federated_event::Op::Expire as i32,
    }
    out
}

/// A received event, or why it is malformed (naming the sender's sequence number).
pub fn event_from_pb(event: pb::FederatedEvent) -> std::result::Result<Event, String> {
    let at = |field: &str| format!("event {}: {field}", event.sequence);
    let wire = |err: Error| format!("event {}: {err}", event.sequence);
    let origin: [u8; 8] = event.origin_operator.as_slice().try_into().map_err(|_| {
        format!(
            "{} {} bytes, expected 8",
            at("origin_operator"),
            event.origin_operator.len()
        )
    })?;
    let digest = digest_from_bytes("digest", &event.digest).map_err(wire)?;
    let kind = kind_from_pb("kind", event.kind, true).map_err(wire)?.expect("required");
    let category = category_from_pb("category", event.category, true)
        .map_err(wire)?
        .expect("required");
    let time = |field: &str, ts: &Option<Timestamp>| -> std::result::Result<i64, String> {
        let ts = ts.as_ref().ok_or_else(|| format!("{} is required", at(field)))?;
        ms_from_timestamp(field, ts).map_err(wire)
    };
    let op = match pb::federated_event::Op::try_from(event.op) {
        Ok(pb::federated_event::Op::Upsert) => EventOp::Upsert {
            confidence: u8::try_from(event.confidence)
                .ok()
                .filter(|confidence| *confidence <= 100)
                .ok_or_else(|| format!("{} {} is above 100", at("confidence"), event.confidence))?,
            first_seen_ms: time("first_seen", &event.first_seen)?,
            last_seen_ms: time("last_seen", &event.last_seen)?,
            expires_at_ms: time("expires_at", &event.expires_at)?,
        },
        Ok(pb::federated_event::Op::Retract) => EventOp::Retract(
            pb::RetractReason::try_from(event.reason)
                .ok()
                .and_then(|_| RetractReason::from_u8(event.reason as u8))
                .ok_or_else(|| format!("{} unknown retract reason {}", at("reason"), event.reason))?,
        ),
        Ok(pb::federated_event::Op::Expire) => EventOp::Expire,
        _ => return Err(format!("{} unknown op {}", at("op"), event.op)),
    };
    Ok(Event {
        sequence: event.sequence,
        origin,
        origin_name: event.origin_operator_name,
        origin_sequence: event.origin_sequence,
        member_pseudonym: event.member_id,
        member_name: event.member_name,
        digest,
        kind,
        category,
        op,
    })
}

pub fn peer_from_pb(request: pb::ConfigurePeerRequest) -> Result<PeerRecord> {
    if request.endpoint.is_empty() != request.bundle_dir.is_empty() {
        return Err(Error::invalid(
            "endpoint, bundle_dir: give both (to pull from the peer) or neither (a peer that only pulls from us)",
        ));
    }
    if !request.endpoint.is_empty() && !request.endpoint.starts_with("https://") {
        return Err(Error::invalid(format!(
            "endpoint: '{}' must start with https://",
            request.endpoint
        )));
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
        .map(|(index, value)| {
            category_from_pb(format!("categories[{index}]"), *value, true).map(|c| c.expect("required"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PeerRecord {
        name: request.name,
        endpoint: request.endpoint,
        bundle_dir: request.bundle_dir,
        paused: request.paused,
        cursor: 0,
        last_sync_ms: 0,
        categories,
        pass_on: request.pass_on,
        reveal_names: request.reveal_names,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_milliseconds() {
        for ms in [0, 1, 999, 1_000, 1_700_000_000_123, -1, -1_001] {
            assert_eq!(ms_from_timestamp("t", &timestamp_from_ms(ms)).unwrap(), ms);
        }
        let bad = Timestamp { seconds: 1, nanos: -5 };
        assert!(
            ms_from_timestamp("flags[0].observed_at", &bad)
                .unwrap_err()
                .to_string()
                .starts_with("flags[0].observed_at")
        );
    }

    #[test]
    fn packed_digests_must_be_whole() {
        assert_eq!(digests_from_packed(&[0u8; 64]).unwrap().len(), 2);
        assert!(
            digests_from_packed(&[0u8; 33])
                .unwrap_err()
                .to_string()
                .contains("33 bytes")
        );
        assert!(digests_from_packed(&[]).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn enum_values_mirror_the_wire() {
        for kind in Kind::ALL {
            assert_eq!(kind_from_pb("k", kind_to_pb(kind) as i32, true).unwrap(), Some(kind));
        }
        for category in Category::ALL {
            assert_eq!(
                category_from_pb("c", category_to_pb(*category) as i32, true).unwrap(),
                Some(*category)
            );
        }
        assert!(
            kind_from_pb("flags[2].kind", 17, true)
                .unwrap_err()
                .to_string()
                .contains("flags[2].kind: unknown identifier kind 17")
        );
        assert_eq!(kind_from_pb("k", 0, false).unwrap(), None);
        assert!(category_from_pb("c", 0, true).is_err());
    }

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
                "event 42: origin_operator 3 bytes, expected 8",
            ),
            (
                pb::FederatedEvent {
                    digest: vec![3; 31],
                    ..good.clone()
                },
                "event 42: digest",
            ),
            (
                pb::FederatedEvent { op: 9, ..good.clone() },
                "event 42: op unknown op 9",
            ),
            (
                pb::FederatedEvent {
                    op: pb::federated_event::Op::Upsert as i32,
                    confidence: 101,
                    ..good.clone()
                },
                "event 42: confidence 101 is above 100",
            ),
            (
                pb::FederatedEvent {
                    op: pb::federated_event::Op::Upsert as i32,
                    confidence: 10,
                    ..good
                },
                "event 42: first_seen is required",
            ),
        ];
        for (event, expected) in cases {
            let err = event_from_pb(event).unwrap_err();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}
