//! Key layouts. Integers are big-endian, so byte order == numeric order. Every encode has
//! a decode that rejects bad lengths.

use crate::digest::{DIGEST_LEN, Digest, Kind};
use crate::model::{Category, FlagKey, PrincipalId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{what} key is {got} bytes, expected {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("flag key has unknown {what} byte {value}")]
    UnknownEnum { what: &'static str, value: u8 },
}

pub const FLAG_KEY_LEN: usize = DIGEST_LEN + 4 + 1 + 1;

pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
pub const AUDIT_HEAD_KEY: &[u8] = b"audit_head";
pub const AUDIT_ANCHOR_KEY: &[u8] = b"audit_anchor";
pub const OPERATOR_ID_KEY: &[u8] = b"operator_id";
pub const PSEUDONYM_KEY_KEY: &[u8] = b"pseudonym_key";
pub const DB_IDENTITY_KEY: &[u8] = b"db_identity";
pub const ORIGIN_KEY_KEY: &[u8] = b"origin_signing_key";
pub const CHANGE_HORIZON_KEY: &[u8] = b"change_horizon";
pub const SEQUENCE_FLOOR_KEY: &[u8] = b"sequence_floor";
pub const PENDING_INGEST_KEY: &[u8] = b"pending_ingest";
/// `limits/<principal name>`: that principal's limit overrides (JSON).
pub const LIMITS_PREFIX: &[u8] = b"limits/";
/// `quarantine_window/<member id, u32 BE>`: that member's flood-quarantine window.
pub const QUARANTINE_WINDOW_PREFIX: &[u8] = b"quarantine_window/";

pub fn quarantine_window_key(member: PrincipalId) -> Vec<u8> {
    [QUARANTINE_WINDOW_PREFIX, &principal_key(member)[..]].concat()
}

/// The member of a `quarantine_window/` key.
pub fn decode_quarantine_window_key(bytes: &[u8]) -> Result<PrincipalId, KeyError> {
    match bytes.strip_prefix(QUARANTINE_WINDOW_PREFIX) {
        Some(member) if member.len() == 4 => decode_principal_key(member),
        _ => Err(KeyError::Length {
            what: "quarantine window",
            got: bytes.len(),
            expected: QUARANTINE_WINDOW_PREFIX.len() + 4,
        }),
    }
}
pub const DISPUTE_KEY_LEN: usize = DIGEST_LEN + 4 + 4;

pub fn dispute_key(digest: &Digest, flagged_by: PrincipalId, disputer: PrincipalId) -> [u8; DISPUTE_KEY_LEN] {
    let mut out = [0u8; DISPUTE_KEY_LEN];
    out[..DIGEST_LEN].copy_from_slice(digest);
    out[DIGEST_LEN..DIGEST_LEN + 4].copy_from_slice(&flagged_by.to_be_bytes());
    out[DIGEST_LEN + 4..].copy_from_slice(&disputer.to_be_bytes());
    out
}

/// `(digest, flagged_by, disputer)` of a dispute key.
pub fn decode_dispute_key(bytes: &[u8]) -> Result<(Digest, PrincipalId, PrincipalId), KeyError> {
    let array: &[u8; DISPUTE_KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Length {
        what: "dispute",
        got: bytes.len(),
        expected: DISPUTE_KEY_LEN,
    })?;
    let (digest, rest) = array.split_at(DIGEST_LEN);
    let (flagged_by, disputer) = rest.split_at(4);
    Ok((
        digest_of(digest),
        u32::from_be_bytes(four(flagged_by)),
        u32::from_be_bytes(four(disputer)),
    ))
}

/// The first 32 bytes of `bytes` (zero-padded when shorter; callers pass exact slices).
fn digest_of(bytes: &[u8]) -> Digest {
    let mut digest = [0u8; DIGEST_LEN];
    let n = bytes.len().min(DIGEST_LEN);
    digest[..n].copy_from_slice(&bytes[..n]);
    digest
}

/// The first 4 bytes of `bytes` (zero-padded when shorter; callers pass exact slices).
fn four(bytes: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    let n = bytes.len().min(4);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// Where a page of one member's quarantined flags resumes: digest, kind and category of the
/// last flag of the page before (the row key without its member).
pub const HELD_PAGE_KEY_LEN: usize = DIGEST_LEN + 2;

pub fn held_page_key(key: &FlagKey) -> [u8; HELD_PAGE_KEY_LEN] {
    let mut out = [0u8; HELD_PAGE_KEY_LEN];
    out.copy_from_slice(&quarantine_key(key)[4..]);
    out
}

/// A quarantined flag's row: its member first, so one member's rows are one range.
pub fn quarantine_key(key: &FlagKey) -> [u8; FLAG_KEY_LEN] {
    let mut out = [0u8; FLAG_KEY_LEN];
    out[..4].copy_from_slice(&key.member.to_be_bytes());
    out[4..4 + DIGEST_LEN].copy_from_slice(&key.digest);
    out[4 + DIGEST_LEN] = key.kind as u8;
    out[5 + DIGEST_LEN] = key.category as u8;
    out
}

pub fn decode_quarantine_key(bytes: &[u8]) -> Result<FlagKey, KeyError> {
    if bytes.len() != FLAG_KEY_LEN {
        return Err(KeyError::Length {
            what: "quarantine",
            got: bytes.len(),
            expected: FLAG_KEY_LEN,
        });
    }
    // The same fields as a flag key, member moved first.
    let mut flag = [0u8; FLAG_KEY_LEN];
    flag[..DIGEST_LEN].copy_from_slice(&bytes[4..4 + DIGEST_LEN]);
    flag[DIGEST_LEN..DIGEST_LEN + 4].copy_from_slice(&bytes[..4]);
    flag[DIGEST_LEN + 4..].copy_from_slice(&bytes[4 + DIGEST_LEN..]);
    decode_flag_key(&flag)
}

pub fn flag_key(key: &FlagKey) -> [u8; FLAG_KEY_LEN] {
    let mut out = [0u8; FLAG_KEY_LEN];
    out[..DIGEST_LEN].copy_from_slice(&key.digest);
    out[DIGEST_LEN..DIGEST_LEN + 4].copy_from_slice(&key.member.to_be_bytes());
    out[DIGEST_LEN + 4] = key.kind as u8;
    out[DIGEST_LEN + 5] = key.category as u8;
    out
}

pub fn decode_flag_key(bytes: &[u8]) -> Result<FlagKey, KeyError> {
    if bytes.len() != FLAG_KEY_LEN {
        return Err(KeyError::Length {
            what: "flag",
            got: bytes.len(),
            expected: FLAG_KEY_LEN,
        });
    }
    let digest = digest_of(&bytes[..DIGEST_LEN]);
    let member = u32::from_be_bytes(four(&bytes[DIGEST_LEN..DIGEST_LEN + 4]));
    let kind_byte = bytes[DIGEST_LEN + 4];
    let category_byte = bytes[DIGEST_LEN + 5];
    let kind = Kind::from_u8(kind_byte).ok_or(KeyError::UnknownEnum {
        what: "kind",
        value: kind_byte,
    })?;
    let category = Category::from_u8(category_byte).ok_or(KeyError::UnknownEnum {
        what: "category",
        value: category_byte,
    })?;
    Ok(FlagKey {
        digest,
        member,
        kind,
        category,
    })
}

pub fn sequence_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

pub fn decode_sequence_key(bytes: &[u8]) -> Result<u64, KeyError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| KeyError::Length {
        what: "sequence",
        got: bytes.len(),
        expected: 8,
    })?;
    Ok(u64::from_be_bytes(array))
}

pub fn principal_key(id: PrincipalId) -> [u8; 4] {
    id.to_be_bytes()
}

pub fn decode_principal_key(bytes: &[u8]) -> Result<PrincipalId, KeyError> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| KeyError::Length {
        what: "principal",
        got: bytes.len(),
        expected: 4,
    })?;
    Ok(PrincipalId::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(digest_byte: u8, member: u32, kind: Kind, category: Category) -> FlagKey {
        FlagKey {
            digest: [digest_byte; 32],
            member,
            kind,
            category,
        }
    }

    #[test]
    fn flag_key_round_trips() {
        let original = key(9, 70_000, Kind::Username, Category::Trafficking);
        assert_eq!(decode_flag_key(&flag_key(&original)).unwrap(), original);
    }

    #[test]
    fn flag_key_byte_order_is_tuple_order() {
        let mut keys = vec![
            key(2, 1, Kind::Email, Category::Grooming),
            key(1, 300, Kind::Email, Category::Grooming),
            key(1, 2, Kind::Phone, Category::Grooming),
            key(1, 2, Kind::Email, Category::Other),
            key(1, 2, Kind::Email, Category::Grooming),
            key(1, 256, Kind::Email, Category::Grooming),
        ];
        let mut encoded: Vec<_> = keys.iter().map(flag_key).collect();
        keys.sort();
        encoded.sort();
        let decoded: Vec<_> = encoded.iter().map(|k| decode_flag_key(k).unwrap()).collect();
        assert_eq!(decoded, keys);
    }

    #[test]
    fn flags_of_one_digest_share_its_prefix() {
        let encoded = flag_key(&key(5, 1, Kind::Email, Category::Grooming));
        assert_eq!(&encoded[..32], &[5u8; 32]);
    }

    #[test]
    fn sequence_order_is_numeric_order() {
        let values = [0u64, 1, 255, 256, 65_536, u64::MAX - 1];
        for pair in values.windows(2) {
            assert!(sequence_key(pair[0]) < sequence_key(pair[1]));
            assert_eq!(decode_sequence_key(&sequence_key(pair[1])).unwrap(), pair[1]);
        }
    }

    #[test]
    fn bad_lengths_and_bytes_are_rejected() {
        assert!(matches!(
            decode_flag_key(&[0u8; 37]),
            Err(KeyError::Length { got: 37, .. })
        ));
        assert!(matches!(
            decode_sequence_key(&[0u8; 7]),
            Err(KeyError::Length { got: 7, .. })
        ));
        assert!(matches!(
            decode_principal_key(&[0u8; 5]),
            Err(KeyError::Length { got: 5, .. })
        ));
        let mut bad_kind = flag_key(&key(1, 1, Kind::Email, Category::Grooming));
        bad_kind[36] = 99;
        assert_eq!(
            decode_flag_key(&bad_kind),
            Err(KeyError::UnknownEnum {
                what: "kind",
                value: 99
            })
        );
    }
}
