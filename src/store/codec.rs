//! Value codecs. Every value starts with a format-version byte so the on-disk format can
//! migrate; a decoder rejects versions it does not know instead of misreading them.

use crate::digest::Kind;
use crate::model::{
    AuditEntry, Category, Change, ChangeRecord, Distribution, FlagKey, FlagRecord, ForeignMember, OriginSignature,
    PrincipalRecord, PrincipalStats, PrincipalStatus, RetractReason, Role, SummaryEntry,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {what} value: {reason}")]
pub struct EncodeError {
    pub what: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what} value: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

const SUMMARY_V3: u8 = 3;
const SUMMARY_ENTRY_LEN: usize = 4 + 1 + 1 + 1 + 8 + 8 + 8 + 1 + 8;
const CHANGE_V3: u8 = 3;
const CHANGE_V4: u8 = 4;
const FOREIGN_MEMBER_V1: u8 = 1;
const PRINCIPAL_V1: u8 = 1;
/// v2 adds the certificate's expiry after its SHA-256.
const PRINCIPAL_V2: u8 = 2;
const CHANGE_UPSERT: u8 = 1;
const CHANGE_RETRACT: u8 = 2;
const CHANGE_EXPIRE: u8 = 3;
const CHANGE_DISPUTE: u8 = 4;
/// Marks a change-v4 trailer holding a signature with its path.
const SIGNED_WITH_PATH: u8 = 2;
const PRINCIPAL_STATS_V1: u8 = 1;
const AUDIT_V1: u8 = 1;
const DISPUTE_V1: u8 = 1;
const QUARANTINE_WINDOW_V1: u8 = 1;

/// Reads fields in order, turning a short or malformed value into a `DecodeError`.
pub(super) struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(what: &'static str, bytes: &'a [u8], version: u8) -> Result<Reader<'a>, DecodeError> {
        let mut reader = Reader { what, rest: bytes };
        let got = reader.u8()?;
        if got != version {
            return Err(reader.error(format!("unknown format version {got} (expected {version})")));
        }
        Ok(reader)
    }

    pub(super) fn error(&self, reason: String) -> DecodeError {
        DecodeError {
            what: self.what,
            reason,
        }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(self.error(format!("truncated: needed {n} more bytes, found {}", self.rest.len())));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.error(format!("expected {N} bytes")))
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn array32(&mut self) -> Result<[u8; 32], DecodeError> {
        self.array()
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    fn kind(&mut self) -> Result<Kind, DecodeError> {
        let byte = self.u8()?;
        Kind::from_u8(byte).ok_or_else(|| self.error(format!("unknown kind {byte}")))
    }

    fn category(&mut self) -> Result<Category, DecodeError> {
        let byte = self.u8()?;
        Category::from_u8(byte).ok_or_else(|| self.error(format!("unknown category {byte}")))
    }

    fn distribution(&mut self) -> Result<Distribution, DecodeError> {
        let byte = self.u8()?;
        Distribution::from_u8(byte).ok_or_else(|| self.error(format!("unknown distribution {byte}")))
    }

    fn finish<T>(self, value: T) -> Result<T, DecodeError> {
        if self.rest.is_empty() {
            Ok(value)
        } else {
            Err(self.error(format!("{} trailing bytes", self.rest.len())))
        }
    }
}

/// A length-prefixed byte string. Every stored string is validated far shorter than 64 KiB
/// before it gets here (references 128 bytes, names 64 or 128); a longer one is cut at the
/// limit rather than panicking, so a missed check costs a truncated string, not the writer.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

fn put_summary_entry(out: &mut Vec<u8>, entry: &SummaryEntry) {
    out.extend_from_slice(&entry.member.to_be_bytes());
    out.push(entry.kind as u8);
    out.push(entry.category as u8);
    out.push(entry.confidence);
    out.extend_from_slice(&entry.first_seen_ms.to_be_bytes());
    out.extend_from_slice(&entry.last_seen_ms.to_be_bytes());
    out.extend_from_slice(&entry.expires_at_ms.to_be_bytes());
    out.push(entry.distribution as u8);
    out.extend_from_slice(&entry.sequence.to_be_bytes());
}

fn read_summary_entry(reader: &mut Reader<'_>) -> Result<SummaryEntry, DecodeError> {
    Ok(SummaryEntry {
        member: reader.u32()?,
        kind: reader.kind()?,
        category: reader.category()?,
        confidence: reader.u8()?,
        first_seen_ms: reader.i64()?,
        last_seen_ms: reader.i64()?,
        expires_at_ms: reader.i64()?,
        distribution: reader.distribution()?,
        sequence: reader.u64()?,
    })
}

/// Fails when the digest holds more flags than the count field can say; the domain keeps
/// far below that (`domain::MAX_ENTRIES_PER_DIGEST`), so this refusal is a second line.
pub fn encode_summary(entries: &[SummaryEntry]) -> Result<Vec<u8>, EncodeError> {
    let n_entries = u16::try_from(entries.len()).map_err(|_| EncodeError {
        what: "summary",
        reason: format!("{} entries, the format holds at most {}", entries.len(), u16::MAX),
    })?;
    let mut out = Vec::with_capacity(3 + entries.len() * SUMMARY_ENTRY_LEN);
    out.push(SUMMARY_V3);
    out.extend_from_slice(&n_entries.to_be_bytes());
    for entry in entries {
        put_summary_entry(&mut out, entry);
    }
    Ok(out)
}

pub fn decode_summary(bytes: &[u8]) -> Result<Vec<SummaryEntry>, DecodeError> {
    let mut reader = Reader::new("summary", bytes, SUMMARY_V3)?;
    let n_entries = reader.u16()? as usize;
    let mut entries = Vec::with_capacity(n_entries);
    for _ in 0..n_entries {
        entries.push(read_summary_entry(&mut reader)?);
    }
    reader.finish(entries)
}

/// change v4: v3 followed by `signed u8` (0 or 2) and, when 2, the origin's signature with
/// its path (`len u16, bytes`) and the `expires_at i64` it signed. v3 (no trailer) is
/// still read.
///
/// change v3: `[3, at i64, digest(32), member u32, kind u8, category u8, distribution u8,
/// origin_sequence u64, op u8, body]`;
/// op 1 (upsert) body, the flag's full record: `confidence u8, first_seen i64,
/// last_seen i64, expires_at i64, created_at i64, updated_at i64, key_id u32,
/// reference_len u16, reference` (its distribution and origin sequence are the header's);
/// op 2 (retract) body: `reason u8`; op 3 (expire) and op 4 (dispute): no body.
pub fn encode_change(record: &ChangeRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(112);
    out.push(CHANGE_V4);
    out.extend_from_slice(&record.at_ms.to_be_bytes());
    out.extend_from_slice(&record.key.digest);
    out.extend_from_slice(&record.key.member.to_be_bytes());
    out.push(record.key.kind as u8);
    out.push(record.key.category as u8);
    out.push(record.distribution as u8);
    out.extend_from_slice(&record.origin_sequence.to_be_bytes());
    match &record.change {
        Change::Upsert(flag) => {
            out.push(CHANGE_UPSERT);
            out.push(flag.confidence);
            for time in [
                flag.first_seen_ms,
                flag.last_seen_ms,
                flag.expires_at_ms,
                flag.created_at_ms,
                flag.updated_at_ms,
            ] {
                out.extend_from_slice(&time.to_be_bytes());
            }
            out.extend_from_slice(&flag.key_id.to_be_bytes());
            put_bytes(&mut out, &flag.reference);
        }
        Change::Retract(reason) => {
            out.push(CHANGE_RETRACT);
            out.push(*reason as u8);
        }
        Change::Expire => out.push(CHANGE_EXPIRE),
        Change::Dispute => out.push(CHANGE_DISPUTE),
    }
    match &record.signature {
        None => out.push(0),
        Some(signed) => {
            out.push(SIGNED_WITH_PATH);
            put_bytes(&mut out, &signed.signature);
            out.extend_from_slice(&signed.expires_at_ms.to_be_bytes());
        }
    }
    out
}

pub fn decode_change(bytes: &[u8]) -> Result<ChangeRecord, DecodeError> {
    let version = bytes.first().copied().unwrap_or(0);
    let mut reader = Reader::new(
        "change",
        bytes,
        if version == CHANGE_V3 { CHANGE_V3 } else { CHANGE_V4 },
    )?;
    let at_ms = reader.i64()?;
    let key = FlagKey {
        digest: reader.array32()?,
        member: reader.u32()?,
        kind: reader.kind()?,
        category: reader.category()?,
    };
    let distribution = reader.distribution()?;
    let origin_sequence = reader.u64()?;
    let change = match reader.u8()? {
        CHANGE_UPSERT => Change::Upsert(FlagRecord {
            confidence: reader.u8()?,
            first_seen_ms: reader.i64()?,
            last_seen_ms: reader.i64()?,
            expires_at_ms: reader.i64()?,
            created_at_ms: reader.i64()?,
            updated_at_ms: reader.i64()?,
            key_id: reader.u32()?,
            reference: reader.bytes()?.to_vec(),
            distribution,
            origin_sequence,
        }),
        CHANGE_RETRACT => {
            let byte = reader.u8()?;
            let reason =
                RetractReason::from_u8(byte).ok_or_else(|| reader.error(format!("unknown retract reason {byte}")))?;
            Change::Retract(reason)
        }
        CHANGE_EXPIRE => Change::Expire,
        CHANGE_DISPUTE => Change::Dispute,
        other => return Err(reader.error(format!("unknown change op {other}"))),
    };
    let signature = if version == CHANGE_V3 {
        None
    } else {
        match reader.u8()? {
            0 => None,
            SIGNED_WITH_PATH => Some(OriginSignature {
                signature: reader.bytes()?.to_vec(),
                expires_at_ms: reader.i64()?,
            }),
            other => return Err(reader.error(format!("unknown signature marker {other}"))),
        }
    };
    reader.finish(ChangeRecord {
        at_ms,
        key,
        change,
        distribution,
        origin_sequence,
        signature,
    })
}

/// principal v1: `[1, id u32, role u8, status u8, created_at i64, cert_sha256(32), name_len u16, name]`.
pub fn encode_principal(record: &PrincipalRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(52 + record.name.len());
    out.push(PRINCIPAL_V2);
    out.extend_from_slice(&record.id.to_be_bytes());
    out.push(record.role as u8);
    out.push(record.status as u8);
    out.extend_from_slice(&record.created_at_ms.to_be_bytes());
    out.extend_from_slice(&record.cert_sha256);
    out.extend_from_slice(&record.cert_not_after_ms.to_be_bytes());
    put_bytes(&mut out, record.name.as_bytes());
    out
}

pub fn decode_principal(bytes: &[u8]) -> Result<PrincipalRecord, DecodeError> {
    // v1 rows (written before expiry was recorded) are read with an unknown expiry.
    let version = bytes.first().copied().unwrap_or(PRINCIPAL_V2);
    let mut reader = Reader::new(
        "principal",
        bytes,
        if version == PRINCIPAL_V1 {
            PRINCIPAL_V1
        } else {
            PRINCIPAL_V2
        },
    )?;
    let id = reader.u32()?;
    let role_byte = reader.u8()?;
    let role = Role::from_u8(role_byte).ok_or_else(|| reader.error(format!("unknown role {role_byte}")))?;
    let status_byte = reader.u8()?;
    let status =
        PrincipalStatus::from_u8(status_byte).ok_or_else(|| reader.error(format!("unknown status {status_byte}")))?;
    let created_at_ms = reader.i64()?;
    let cert_sha256 = reader.array32()?;
    let cert_not_after_ms = if version == PRINCIPAL_V1 { 0 } else { reader.i64()? };
    let name = String::from_utf8(reader.bytes()?.to_vec()).map_err(|_| reader.error("name is not UTF-8".to_owned()))?;
    reader.finish(PrincipalRecord {
        id,
        name,
        role,
        status,
        created_at_ms,
        cert_sha256,
        cert_not_after_ms,
    })
}

pub fn encode_principal_stats(stats: &PrincipalStats) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(PRINCIPAL_STATS_V1);
    out.extend_from_slice(&stats.last_seen_ms.to_be_bytes());
    out.extend_from_slice(&stats.n_flags_submitted.to_be_bytes());
    out.extend_from_slice(&stats.n_queries.to_be_bytes());
    out.extend_from_slice(&stats.n_digests_queried.to_be_bytes());
    out
}

pub fn decode_principal_stats(bytes: &[u8]) -> Result<PrincipalStats, DecodeError> {
    let mut reader = Reader::new("principal stats", bytes, PRINCIPAL_STATS_V1)?;
    let stats = PrincipalStats {
        last_seen_ms: reader.i64()?,
        n_flags_submitted: reader.i64()? as u64,
        n_queries: reader.i64()? as u64,
        n_digests_queried: reader.i64()? as u64,
    };
    reader.finish(stats)
}

/// audit v1: `[1, JSON]`.
pub fn encode_audit(entry: &AuditEntry) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![AUDIT_V1];
    serde_json::to_writer(&mut out, entry).map_err(|err| EncodeError {
        what: "audit",
        reason: err.to_string(),
    })?;
    Ok(out)
}

pub fn decode_audit(bytes: &[u8]) -> Result<AuditEntry, DecodeError> {
    let reader = Reader::new("audit", bytes, AUDIT_V1)?;
    serde_json::from_slice(reader.rest).map_err(|err| reader.error(format!("malformed entry ({err})")))
}

/// The end of the audit chain: `sequence u64 | hash(32)`.
pub fn encode_chain_end(sequence: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

pub fn decode_chain_end(bytes: &[u8]) -> Result<(u64, [u8; 32]), DecodeError> {
    let mut reader = Reader {
        what: "audit chain end",
        rest: bytes,
    };
    let sequence = reader.i64()? as u64;
    let hash = reader.array32()?;
    reader.finish((sequence, hash))
}

/// foreign member v1: `[1, id u32, origin(8), origin_name, pseudonym, display]` (strings
/// as `len u16, bytes`).
pub fn encode_foreign_member(member: &ForeignMember) -> Vec<u8> {
    let mut out = vec![FOREIGN_MEMBER_V1];
    out.extend_from_slice(&member.id.to_be_bytes());
    out.extend_from_slice(&member.origin);
    for text in [&member.origin_name, &member.pseudonym, &member.display] {
        put_bytes(&mut out, text.as_bytes());
    }
    out
}

pub fn decode_foreign_member(bytes: &[u8]) -> Result<ForeignMember, DecodeError> {
    let mut reader = Reader::new("foreign member", bytes, FOREIGN_MEMBER_V1)?;
    let id = reader.u32()?;
    let origin: [u8; 8] = reader.array()?;
    let mut text = || -> Result<String, DecodeError> {
        let bytes = reader.bytes()?.to_vec();
        String::from_utf8(bytes).map_err(|_| DecodeError {
            what: "foreign member",
            reason: "a name is not UTF-8".to_owned(),
        })
    };
    let (origin_name, pseudonym, display) = (text()?, text()?, text()?);
    reader.finish(ForeignMember {
        id,
        origin,
        origin_name,
        pseudonym,
        display,
    })
}

/// quarantine window v1: `[1, start ms i64, new flags in it u64]`.
pub fn encode_quarantine_window(start_ms: i64, count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(QUARANTINE_WINDOW_V1);
    out.extend_from_slice(&start_ms.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out
}

pub fn decode_quarantine_window(bytes: &[u8]) -> Result<(i64, u64), DecodeError> {
    let mut reader = Reader::new("quarantine window", bytes, QUARANTINE_WINDOW_V1)?;
    let start_ms = reader.i64()?;
    let count = reader.i64()? as u64;
    reader.finish((start_ms, count))
}

pub fn encode_dispute(at_ms: i64) -> Vec<u8> {
    let mut out = vec![DISPUTE_V1];
    out.extend_from_slice(&at_ms.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(member: u32) -> SummaryEntry {
        SummaryEntry {
            member,
            kind: Kind::Phone,
            category: Category::Sextortion,
            confidence: 87,
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_500_000,
            expires_at_ms: i64::MAX,
            distribution: crate::model::Distribution::Federated,
            sequence: u64::from(member) << 32 | 5,
        }
    }

    #[test]
    fn quarantine_window_round_trips_and_a_short_one_is_refused() {
        let encoded = encode_quarantine_window(1_800_000_000_000, 100_001);
        assert_eq!(
            decode_quarantine_window(&encoded).unwrap(),
            (1_800_000_000_000, 100_001)
        );
        assert!(decode_quarantine_window(&encoded[..12]).is_err());
        let key = crate::store::keys::quarantine_window_key(7);
        assert_eq!(crate::store::keys::decode_quarantine_window_key(&key).unwrap(), 7);
        assert!(crate::store::keys::decode_quarantine_window_key(&key[..key.len() - 1]).is_err());
    }

    #[test]
    fn summary_round_trips() {
        let entries = vec![entry(1), entry(2), entry(u32::MAX)];
        let encoded = encode_summary(&entries).unwrap();
        assert_eq!(encoded.len(), 3 + 3 * SUMMARY_ENTRY_LEN);
        assert_eq!(decode_summary(&encoded).unwrap(), entries);
    }

    #[test]
    fn change_round_trips_both_ops() {
        let key = FlagKey {
            digest: [3; 32],
            member: 2,
            kind: Kind::Phone,
            category: Category::Sextortion,
        };
        let upsert = ChangeRecord {
            at_ms: 99,
            key,
            change: Change::Upsert(FlagRecord {
                confidence: 100,
                first_seen_ms: -5,
                last_seen_ms: 10,
                expires_at_ms: 20,
                created_at_ms: 30,
                updated_at_ms: 40,
                key_id: 7,
                reference: b"case-123".to_vec(),
                distribution: crate::model::Distribution::Federated,
                origin_sequence: 7,
            }),
            distribution: crate::model::Distribution::Federated,
            origin_sequence: 7,
            signature: Some(OriginSignature {
                signature: vec![9; 64 + 8 + 3 * 32],
                expires_at_ms: 77,
            }),
        };
        assert_eq!(decode_change(&encode_change(&upsert)).unwrap(), upsert);
        let retract = ChangeRecord {
            at_ms: 100,
            key,
            change: Change::Retract(RetractReason::AppealUpheld),
            distribution: crate::model::Distribution::Federated,
            origin_sequence: 7,
            signature: None,
        };
        assert_eq!(decode_change(&encode_change(&retract)).unwrap(), retract);
    }

    #[test]
    fn principal_round_trips() {
        let record = PrincipalRecord {
            id: 4,
            name: "platform-a".to_owned(),
            role: Role::Member,
            status: PrincipalStatus::Suspended,
            created_at_ms: 12,
            cert_sha256: [0xee; 32],
            cert_not_after_ms: 1_900_000_000_000,
        };
        assert_eq!(decode_principal(&encode_principal(&record)).unwrap(), record);
        // A v1 row (no expiry) still reads, with the expiry unknown.
        let mut v1 = encode_principal(&record);
        v1[0] = PRINCIPAL_V1;
        v1.drain(46..54);
        let old = decode_principal(&v1).unwrap();
        assert_eq!(old.cert_not_after_ms, 0);
        assert_eq!(old.name, record.name);
    }

    #[test]
    fn stats_audit_and_expire_round_trip() {
        let stats = PrincipalStats {
            last_seen_ms: 5,
            n_flags_submitted: 6,
            n_queries: 7,
            n_digests_queried: 8,
        };
        assert_eq!(decode_principal_stats(&encode_principal_stats(&stats)).unwrap(), stats);
        let entry = AuditEntry {
            sequence: 3,
            at_ms: 9,
            principal: "platform-a".to_owned(),
            op: "query".to_owned(),
            n_items: 2,
            n_changed: 1,
            detail: String::new(),
            digests: vec!["ab".to_owned()],
            prev_hash: "00".to_owned(),
        };
        assert_eq!(decode_audit(&encode_audit(&entry).unwrap()).unwrap(), entry);
        assert!(decode_audit(b"\x01{not json").is_err());
        assert_eq!(decode_chain_end(&encode_chain_end(4, &[7; 32])).unwrap(), (4, [7; 32]));
        let change = ChangeRecord {
            at_ms: 1,
            key: FlagKey {
                digest: [2; 32],
                member: 3,
                kind: Kind::Phone,
                category: Category::Other,
            },
            change: Change::Expire,
            distribution: crate::model::Distribution::Federated,
            origin_sequence: 7,
            signature: None,
        };
        assert_eq!(decode_change(&encode_change(&change)).unwrap(), change);
    }

    #[test]
    fn unknown_versions_truncation_and_trailing_bytes_are_rejected() {
        let mut encoded = encode_summary(&[entry(1)]).unwrap();
        encoded[0] = 9;
        assert!(
            decode_summary(&encoded)
                .unwrap_err()
                .reason
                .contains("unknown format version 9")
        );
        let encoded = encode_summary(&[entry(1)]).unwrap();
        assert!(
            decode_summary(&encoded[..encoded.len() - 1])
                .unwrap_err()
                .reason
                .contains("truncated")
        );
        let mut padded = encoded.clone();
        padded.push(0);
        assert!(decode_summary(&padded).unwrap_err().reason.contains("trailing"));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn kind() -> impl Strategy<Value = Kind> {
        proptest::sample::select(Kind::ALL.to_vec())
    }

    fn category() -> impl Strategy<Value = Category> {
        proptest::sample::select(Category::ALL.to_vec())
    }

    fn distribution() -> impl Strategy<Value = Distribution> {
        proptest::sample::select(Distribution::ALL.to_vec())
    }

    fn summary_entry() -> impl Strategy<Value = SummaryEntry> {
        (
            any::<u32>(),
            kind(),
            category(),
            any::<u8>(),
            (any::<i64>(), any::<i64>(), any::<i64>()),
            distribution(),
            any::<u64>(),
        )
            .prop_map(
                |(member, kind, category, confidence, (first, last, expires), distribution, sequence)| SummaryEntry {
                    member,
                    kind,
                    category,
                    confidence,
                    first_seen_ms: first,
                    last_seen_ms: last,
                    expires_at_ms: expires,
                    distribution,
                    sequence,
                },
            )
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (
                any::<u8>(),
                proptest::array::uniform5(any::<i64>()),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(confidence, times, key_id, reference)| {
                    Change::Upsert(FlagRecord {
                        confidence,
                        first_seen_ms: times[0],
                        last_seen_ms: times[1],
                        expires_at_ms: times[2],
                        created_at_ms: times[3],
                        updated_at_ms: times[4],
                        key_id,
                        reference,
                        distribution: Distribution::Federated,
                        origin_sequence: 0,
                    })
                }),
            proptest::sample::select(RetractReason::ALL.to_vec()).prop_map(Change::Retract),
            Just(Change::Expire),
            Just(Change::Dispute),
        ]
    }

    fn change_record() -> impl Strategy<Value = ChangeRecord> {
        (
            any::<i64>(),
            (any::<[u8; 32]>(), any::<u32>(), kind(), category()),
            change(),
            distribution(),
            any::<u64>(),
            proptest::option::of((proptest::collection::vec(any::<u8>(), 0..900), any::<i64>())),
        )
            .prop_map(
                |(at_ms, (digest, member, kind, category), mut change, distribution, origin_sequence, signed)| {
                    // The record's distribution and version are the header's.
                    if let Change::Upsert(record) = &mut change {
                        record.distribution = distribution;
                        record.origin_sequence = origin_sequence;
                    }
                    ChangeRecord {
                        at_ms,
                        key: FlagKey {
                            digest,
                            member,
                            kind,
                            category,
                        },
                        change,
                        distribution,
                        origin_sequence,
                        signature: signed.map(|(signature, expires_at_ms)| OriginSignature {
                            signature,
                            expires_at_ms,
                        }),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_summary(&bytes);
            let _ = decode_change(&bytes);
            let _ = decode_principal(&bytes);
            let _ = decode_principal_stats(&bytes);
            let _ = decode_audit(&bytes);
            let _ = decode_chain_end(&bytes);
            let _ = decode_foreign_member(&bytes);
        }

        #[test]
        fn summaries_round_trip(entries in proptest::collection::vec(summary_entry(), 0..40)) {
            let encoded = encode_summary(&entries).unwrap();
            prop_assert_eq!(decode_summary(&encoded).unwrap(), entries);
        }

        #[test]
        fn changes_round_trip(record in change_record()) {
            prop_assert_eq!(decode_change(&encode_change(&record)).unwrap(), record);
        }

        #[test]
        fn a_truncated_or_padded_change_is_refused(record in change_record(), cut in 1usize..40, extra in 1u8..=255) {
            let encoded = encode_change(&record);
            let cut = cut.min(encoded.len());
            prop_assert!(decode_change(&encoded[..encoded.len() - cut]).is_err());
            let mut padded = encoded;
            padded.push(extra);
            prop_assert!(decode_change(&padded).is_err());
        }

        #[test]
        fn foreign_members_round_trip(id in any::<u32>(), origin in any::<[u8; 8]>(), names in proptest::array::uniform3("[ -~]{0,80}")) {
            let member = ForeignMember {
                id,
                origin,
                origin_name: names[0].clone(),
                pseudonym: names[1].clone(),
                display: names[2].clone(),
            };
            prop_assert_eq!(decode_foreign_member(&encode_foreign_member(&member)).unwrap(), member);
        }
    }

    #[test]
    fn more_entries_than_the_format_counts_are_refused_not_a_panic() {
        let entries = vec![
            SummaryEntry {
                member: 1,
                kind: Kind::Email,
                category: Category::Grooming,
                confidence: 1,
                first_seen_ms: 0,
                last_seen_ms: 0,
                expires_at_ms: 0,
                distribution: Distribution::Local,
                sequence: 0,
            };
            usize::from(u16::MAX) + 1
        ];
        let err = encode_summary(&entries).unwrap_err();
        assert!(err.reason.contains("at most 65535"), "{err}");
    }
}
