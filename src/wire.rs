//! The wire vocabulary: how proto enums, timestamps and digests map to model values, for
//! the server and the CLI alike, and how library errors become gRPC statuses.
//!
//! Every enum maps with an explicit `match` in both directions. Proto numbers are not
//! model values: an `UNSPECIFIED` zero, or a value one side has and the other does not,
//! never becomes a valid model value by a cast.

use std::fmt::Display;

use prost_types::Timestamp;
use tonic::Status;

use crate::digest::{DIGEST_LEN, Digest, Kind};
use crate::error::{Error, Result};
use crate::model::{Category, Distribution, PrincipalStatus, RetractReason, Role};
use crate::pb;

/// The one place library errors become gRPC statuses. Storage and internal details are
/// logged, never sent.
impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::InvalidArgument(message) => Status::invalid_argument(message),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::NotFound(message) => Status::not_found(message),
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::OutOfRange(message) => Status::out_of_range(message),
            Error::Storage(crate::store::StoreError::Unavailable(message)) => Status::unavailable(message),
            err @ (Error::Storage(_) | Error::Internal(_)) => {
                tracing::error!(error = %err, "internal error");
                Status::internal("internal error")
            }
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

/// A wire timestamp as milliseconds, saturating instead of failing (for display).
pub fn ms_of(timestamp: &Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(timestamp.nanos.clamp(0, 999_999_999) / 1_000_000))
}

pub fn digest_from_bytes(field: impl Display, bytes: &[u8]) -> Result<Digest> {
    bytes
        .try_into()
        .map_err(|_| Error::invalid(format!("{field}: expected {DIGEST_LEN} bytes, got {}", bytes.len())))
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
    packed
        .chunks_exact(DIGEST_LEN)
        .map(|chunk| digest_from_bytes("digests", chunk))
        .collect()
}

/// A required enum field: `UNSPECIFIED` and unknown values are refused, naming the field.
fn required<T>(field: impl Display, value: Option<T>, raw: i32, what: &str) -> Result<T> {
    match (value, raw) {
        (Some(value), _) => Ok(value),
        (None, 0) => Err(Error::invalid(format!("{field}: must be set"))),
        (None, _) => Err(Error::invalid(format!("{field}: unknown {what} {raw}"))),
    }
}

/// An optional enum field: `UNSPECIFIED` is `None`, unknown values are refused.
fn optional<T>(field: impl Display, value: Option<T>, raw: i32, what: &str) -> Result<Option<T>> {
    match (value, raw) {
        (Some(value), _) => Ok(Some(value)),
        (None, 0) => Ok(None),
        (None, _) => Err(Error::invalid(format!("{field}: unknown {what} {raw}"))),
    }
}

pub fn kind_of(value: i32) -> Option<Kind> {
    match pb::IdentifierKind::try_from(value).ok()? {
        pb::IdentifierKind::Unspecified => None,
        pb::IdentifierKind::Email => Some(Kind::Email),
        pb::IdentifierKind::Phone => Some(Kind::Phone),
        pb::IdentifierKind::Username => Some(Kind::Username),
        pb::IdentifierKind::DeviceId => Some(Kind::DeviceId),
        pb::IdentifierKind::IpAddress => Some(Kind::IpAddress),
        pb::IdentifierKind::Other => Some(Kind::Other),
    }
}

pub fn kind_to_pb(kind: Kind) -> pb::IdentifierKind {
    match kind {
        Kind::Email => pb::IdentifierKind::Email,
        Kind::Phone => pb::IdentifierKind::Phone,
        Kind::Username => pb::IdentifierKind::Username,
        Kind::DeviceId => pb::IdentifierKind::DeviceId,
        Kind::IpAddress => pb::IdentifierKind::IpAddress,
        Kind::Other => pb::IdentifierKind::Other,
    }
}

pub fn kind_from_pb(field: impl Display, value: i32) -> Result<Kind> {
    required(field, kind_of(value), value, "identifier kind")
}

pub fn optional_kind_from_pb(field: impl Display, value: i32) -> Result<Option<Kind>> {
    optional(field, kind_of(value), value, "identifier kind")
}

pub fn category_of(value: i32) -> Option<Category> {
    match pb::Category::try_from(value).ok()? {
        pb::Category::Unspecified => None,
        pb::Category::Grooming => Some(Category::Grooming),
        pb::Category::Sextortion => Some(Category::Sextortion),
        pb::Category::CsamSharing => Some(Category::CsamSharing),
        pb::Category::CsamSolicitation => Some(Category::CsamSolicitation),
        pb::Category::Trafficking => Some(Category::Trafficking),
        pb::Category::Other => Some(Category::Other),
    }
}

pub fn category_to_pb(category: Category) -> pb::Category {
    match category {
        Category::Grooming => pb::Category::Grooming,
        Category::Sextortion => pb::Category::Sextortion,
        Category::CsamSharing => pb::Category::CsamSharing,
        Category::CsamSolicitation => pb::Category::CsamSolicitation,
        Category::Trafficking => pb::Category::Trafficking,
        Category::Other => pb::Category::Other,
    }
}

pub fn category_from_pb(field: impl Display, value: i32) -> Result<Category> {
    required(field, category_of(value), value, "category")
}

pub fn optional_category_from_pb(field: impl Display, value: i32) -> Result<Option<Category>> {
    optional(field, category_of(value), value, "category")
}

pub fn distribution_of(value: i32) -> Option<Distribution> {
    match pb::Distribution::try_from(value).ok()? {
        pb::Distribution::Unspecified => None,
        pb::Distribution::Local => Some(Distribution::Local),
        pb::Distribution::Federated => Some(Distribution::Federated),
    }
}

pub fn distribution_to_pb(distribution: Distribution) -> pb::Distribution {
    match distribution {
        Distribution::Local => pb::Distribution::Local,
        Distribution::Federated => pb::Distribution::Federated,
    }
}

/// `None` for unspecified (the operator's default, or the stored one on resubmission).
pub fn distribution_from_pb(field: impl Display, value: i32) -> Result<Option<Distribution>> {
    optional(field, distribution_of(value), value, "distribution")
}

pub fn retract_reason_of(value: i32) -> Option<RetractReason> {
    match pb::RetractReason::try_from(value).ok()? {
        pb::RetractReason::Unspecified => None,
        pb::RetractReason::AppealUpheld => Some(RetractReason::AppealUpheld),
        pb::RetractReason::FalsePositive => Some(RetractReason::FalsePositive),
        pb::RetractReason::Duplicate => Some(RetractReason::Duplicate),
        pb::RetractReason::Other => Some(RetractReason::Other),
        pb::RetractReason::Withdrawn => Some(RetractReason::Withdrawn),
        pb::RetractReason::Unshared => Some(RetractReason::Unshared),
    }
}

pub fn retract_reason_to_pb(reason: RetractReason) -> pb::RetractReason {
    match reason {
        RetractReason::Unspecified => pb::RetractReason::Unspecified,
        RetractReason::AppealUpheld => pb::RetractReason::AppealUpheld,
        RetractReason::FalsePositive => pb::RetractReason::FalsePositive,
        RetractReason::Duplicate => pb::RetractReason::Duplicate,
        RetractReason::Other => pb::RetractReason::Other,
        RetractReason::Withdrawn => pb::RetractReason::Withdrawn,
        RetractReason::Unshared => pb::RetractReason::Unshared,
    }
}

/// A member's retraction reason: one of the four a member may give. `UNSPECIFIED` is
/// refused (an appeal trail needs a reason every time); `withdrawn` and `unshared` are the
/// server's own.
pub fn member_retract_reason_from_pb(value: i32) -> Result<RetractReason> {
    match retract_reason_of(value) {
        None if value == 0 => Err(Error::invalid(
            "reason: must be set (appeal_upheld, false_positive, duplicate or other)",
        )),
        None | Some(RetractReason::Unspecified) => {
            Err(Error::invalid(format!("reason: unknown retract reason {value}")))
        }
        Some(reason @ (RetractReason::Withdrawn | RetractReason::Unshared)) => Err(Error::invalid(format!(
            "reason: {reason} is set by the server, not by a member"
        ))),
        Some(reason) => Ok(reason),
    }
}

pub fn role_of(value: i32) -> Option<Role> {
    match pb::Role::try_from(value).ok()? {
        pb::Role::Unspecified => None,
        pb::Role::Member => Some(Role::Member),
        pb::Role::Admin => Some(Role::Admin),
        pb::Role::Peer => Some(Role::Peer),
        pb::Role::Node => Some(Role::Node),
    }
}

pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Member => pb::Role::Member,
        Role::Admin => pb::Role::Admin,
        Role::Peer => pb::Role::Peer,
        Role::Node => pb::Role::Node,
    }
}

pub fn role_from_pb(value: i32) -> Result<Role> {
    required("role", role_of(value), value, "role")
}

pub fn principal_status_of(value: i32) -> Option<PrincipalStatus> {
    match pb::PrincipalStatus::try_from(value).ok()? {
        pb::PrincipalStatus::Unspecified => None,
        pb::PrincipalStatus::Active => Some(PrincipalStatus::Active),
        pb::PrincipalStatus::Suspended => Some(PrincipalStatus::Suspended),
        pb::PrincipalStatus::Removed => Some(PrincipalStatus::Removed),
    }
}

pub fn principal_status_to_pb(status: PrincipalStatus) -> pb::PrincipalStatus {
    match status {
        PrincipalStatus::Active => pb::PrincipalStatus::Active,
        PrincipalStatus::Suspended => pb::PrincipalStatus::Suspended,
        PrincipalStatus::Removed => pb::PrincipalStatus::Removed,
    }
}

pub fn principal_status_from_pb(value: i32) -> Result<PrincipalStatus> {
    required("status", principal_status_of(value), value, "status")
}

pub fn limit_overrides_to_pb(limits: &crate::model::LimitOverrides) -> pb::Limits {
    pb::Limits {
        digests_queried_per_second: limits.digests_queried_per_second,
        flags_submitted_per_second: limits.flags_submitted_per_second,
        flags_submitted_per_day: limits.flags_submitted_per_day,
        streams: limits.streams,
        quarantine_new_flags_per_hour: limits.quarantine_new_flags_per_hour,
    }
}

pub fn limit_overrides_from_pb(limits: pb::Limits) -> crate::model::LimitOverrides {
    crate::model::LimitOverrides {
        digests_queried_per_second: limits.digests_queried_per_second,
        flags_submitted_per_second: limits.flags_submitted_per_second,
        flags_submitted_per_day: limits.flags_submitted_per_day,
        streams: limits.streams,
        quarantine_new_flags_per_hour: limits.quarantine_new_flags_per_hour,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_map_both_ways_and_zero_is_never_a_value() {
        for kind in Kind::ALL {
            assert_eq!(kind_from_pb("k", kind_to_pb(kind) as i32).unwrap(), kind);
        }
        for category in Category::ALL {
            assert_eq!(
                category_from_pb("c", category_to_pb(*category) as i32).unwrap(),
                *category
            );
        }
        for role in Role::ALL {
            assert_eq!(role_from_pb(role_to_pb(*role) as i32).unwrap(), *role);
        }
        for status in PrincipalStatus::ALL {
            assert_eq!(
                principal_status_from_pb(principal_status_to_pb(*status) as i32).unwrap(),
                *status
            );
        }
        for reason in RetractReason::ALL {
            assert_eq!(retract_reason_to_pb(*reason) as i32, *reason as i32, "{reason}");
        }
        assert!(
            kind_from_pb("flags[2].kind", 17)
                .unwrap_err()
                .to_string()
                .contains("flags[2].kind: unknown identifier kind 17")
        );
        assert!(kind_from_pb("k", 0).unwrap_err().to_string().contains("must be set"));
        assert_eq!(optional_kind_from_pb("k", 0).unwrap(), None);
        assert!(category_from_pb("c", 0).is_err());
        assert!(role_from_pb(0).is_err());
    }

    #[test]
    fn a_member_must_give_one_of_its_own_retraction_reasons() {
        let unspecified = member_retract_reason_from_pb(pb::RetractReason::Unspecified as i32).unwrap_err();
        assert!(
            unspecified.to_string().starts_with("reason: must be set"),
            "{unspecified}"
        );
        for server_only in [pb::RetractReason::Withdrawn, pb::RetractReason::Unshared] {
            let err = member_retract_reason_from_pb(server_only as i32).unwrap_err();
            assert!(err.to_string().contains("set by the server"), "{err}");
        }
        assert!(
            member_retract_reason_from_pb(99)
                .unwrap_err()
                .to_string()
                .contains("unknown retract reason 99")
        );
        assert_eq!(
            member_retract_reason_from_pb(pb::RetractReason::AppealUpheld as i32).unwrap(),
            RetractReason::AppealUpheld
        );
    }

    #[test]
    fn timestamps_round_trip_and_packed_digests_must_be_whole() {
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
        assert!(
            ms_from_timestamp(
                "t",
                &Timestamp {
                    seconds: i64::MAX,
                    nanos: 0
                }
            )
            .is_err()
        );
        assert_eq!(digests_from_packed(&[0u8; 64]).unwrap().len(), 2);
        assert!(
            digests_from_packed(&[0u8; 33])
                .unwrap_err()
                .to_string()
                .contains("33 bytes")
        );
        assert!(digests_from_packed(&[]).unwrap_err().to_string().contains("empty"));
    }
}
