//! Identifier normalisation and keyed digests, as specified in `docs/digest-v1.md`.
//!
//! Pure code: no I/O except reading and writing key files. Member platforms run this on
//! their side (through the `flagshare hash|submit|query` commands or their own port of the
//! spec); the server only ever sees the 32-byte output.

#[cfg(test)]
mod conformance;
mod key;
mod normalize;

pub use key::{ConsortiumKey, KeyFileError};
pub use normalize::normalize;

use std::fmt;
use std::str::FromStr;

/// Length of every digest in bytes.
pub const DIGEST_LEN: usize = 32;

/// A keyed BLAKE3 digest of a normalised identifier.
pub type Digest = [u8; DIGEST_LEN];

/// Version of the normalisation and digest spec implemented here. Part of every key
/// derivation context, so a future v2 can never produce a v1 digest by accident.
pub const SPEC_VERSION: u32 = 1;

/// What an identifier is. The numeric values are the wire values of
/// `flagshare.v1.IdentifierKind` and are stored on disk: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    Email = 1,
    Phone = 2,
    Username = 3,
    DeviceId = 4,
    IpAddress = 5,
    Other = 6,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Email,
        Kind::Phone,
        Kind::Username,
        Kind::DeviceId,
        Kind::IpAddress,
        Kind::Other,
    ];

    /// The spec's name for the kind, used in key derivation contexts and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Username => "username",
            Kind::DeviceId => "device_id",
            Kind::IpAddress => "ip_address",
            Kind::Other => "other",
        }
    }

    pub fn from_u8(value: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| *kind as u8 == value)
    }

    /// BLAKE3 key-derivation context for this kind: globally unique, hard-coded, and
    /// carrying the spec version (see docs/digest-v1.md, "Digest").
    fn derivation_context(self) -> &'static str {
        match self {
            Kind::Email => "flagshare 2026-11 identifier digest v1 email",
            Kind::Phone => "flagshare 2026-11 identifier digest v1 phone",
            Kind::Username => "flagshare 2026-11 identifier digest v1 username",
            Kind::DeviceId => "flagshare 2026-11 identifier digest v1 device_id",
            Kind::IpAddress => "flagshare 2026-11 identifier digest v1 ip_address",
            Kind::Other => "flagshare 2026-11 identifier digest v1 other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == wanted || (wanted == "ip" && *kind == Kind::IpAddress))
            .ok_or_else(|| {
                format!(
                    "unknown identifier kind '{s}' (expected email, phone, username, device_id, ip_address or other)"
                )
            })
    }
}

/// Why an identifier could not be normalised. The message names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} identifier: {reason}")]
pub struct InvalidIdentifier {
    pub kind: Kind,
    pub class: InvalidClass,
    pub reason: String,
}

/// Why an identifier is invalid, as a class every implementation of the spec reports
/// alike: the conformance corpus (`docs/digest-v1-conformance.jsonl`) names it for each
/// invalid input. The reason in words may differ between implementations; the class may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidClass {
    /// Nothing is left once surrounding white space is removed.
    Empty,
    /// White space or a control character where none may be.
    SpaceOrControl,
    /// An email address without '@'.
    NoAt,
    /// An email address with more than one '@'.
    ManyAt,
    /// An email address whose local part is empty (at once, or once plus-tag or dots go).
    EmptyLocalPart,
    /// An email domain that is empty, has no dot or a malformed label.
    BadDomain,
    /// A normal form over its kind's length limit.
    TooLong,
    /// A phone number without '+' and without a default region.
    NoRegion,
    /// A phone number that does not parse or is not valid in its numbering plan.
    BadPhone,
    /// A username without `platform:`.
    NoPlatform,
    /// A username whose platform is not 1 to 64 of a-z, 0-9, '.', '-', '_'.
    BadPlatform,
    /// A username whose name is empty.
    EmptyName,
    /// Not an IPv4 or IPv6 address as the spec reads them.
    BadIp,
}

impl InvalidClass {
    pub const ALL: [InvalidClass; 13] = [
        InvalidClass::Empty,
        InvalidClass::SpaceOrControl,
        InvalidClass::NoAt,
        InvalidClass::ManyAt,
        InvalidClass::EmptyLocalPart,
        InvalidClass::BadDomain,
        InvalidClass::TooLong,
        InvalidClass::NoRegion,
        InvalidClass::BadPhone,
        InvalidClass::NoPlatform,
        InvalidClass::BadPlatform,
        InvalidClass::EmptyName,
        InvalidClass::BadIp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvalidClass::Empty => "empty",
            InvalidClass::SpaceOrControl => "space_or_control",
            InvalidClass::NoAt => "no_at",
            InvalidClass::ManyAt => "many_at",
            InvalidClass::EmptyLocalPart => "empty_local_part",
            InvalidClass::BadDomain => "bad_domain",
            InvalidClass::TooLong => "too_long",
            InvalidClass::NoRegion => "no_region",
            InvalidClass::BadPhone => "bad_phone",
            InvalidClass::NoPlatform => "no_platform",
            InvalidClass::BadPlatform => "bad_platform",
            InvalidClass::EmptyName => "empty_name",
            InvalidClass::BadIp => "bad_ip",
        }
    }
}

/// Options that change how identifiers are read, not what they mean.
#[derive(Debug, Clone, Default)]
pub struct NormalizeOptions {
    /// ISO 3166 region used for phone numbers written without a leading `+` country code.
    /// Without it such numbers are rejected rather than guessed.
    pub default_phone_region: Option<phonenumber::country::Id>,
}

/// Computes digests under one consortium key. The per-kind keys are derived once.
#[derive(Clone)]
pub struct Hasher {
    key_id: u32,
    kind_keys: [[u8; 32]; 6],
}

impl Hasher {
    pub fn new(key: &ConsortiumKey) -> Hasher {
        let kind_keys = Kind::ALL.map(|kind| blake3::derive_key(kind.derivation_context(), key.secret()));
        Hasher {
            key_id: key.key_id(),
            kind_keys,
        }
    }

    /// The epoch of the consortium key these digests are computed under.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Digest of an already normalised identifier.
    pub fn digest_normalized(&self, kind: Kind, normalized: &str) -> Digest {
        let kind_key = &self.kind_keys[kind as usize - 1];
        *blake3::keyed_hash(kind_key, normalized.as_bytes()).as_bytes()
    }

    /// Normalises `raw` as `kind` and digests it. Returns the normal form too, for display.
    pub fn digest(
        &self,
        kind: Kind,
        raw: &str,
        options: &NormalizeOptions,
    ) -> Result<(String, Digest), InvalidIdentifier> {
        let normalized = normalize(kind, raw, options)?;
        let digest = self.digest_normalized(kind, &normalized);
        Ok((normalized, digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> Hasher {
        Hasher::new(&ConsortiumKey::from_parts(1, [7u8; 32]))
    }

    #[test]
    fn same_string_under_two_kinds_gives_two_digests() {
        let hasher = hasher();
        let as_other = hasher.digest_normalized(Kind::Other, "alice");
        let as_device = hasher.digest_normalized(Kind::DeviceId, "alice");
        assert_ne!(as_other, as_device);
    }

    #[test]
    fn different_keys_give_different_digests() {
        let first = hasher().digest_normalized(Kind::Email, "a@example.com");
        let second =
            Hasher::new(&ConsortiumKey::from_parts(2, [8u8; 32])).digest_normalized(Kind::Email, "a@example.com");
        assert_ne!(first, second);
    }

    #[test]
    fn equivalent_inputs_give_the_same_digest() {
        let hasher = hasher();
        let options = NormalizeOptions::default();
        let (_, first) = hasher.digest(Kind::Email, "Foo.Bar+x@Example.com", &options).unwrap();
        let (_, second) = hasher.digest(Kind::Email, "foo.bar@example.com ", &options).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn kind_parses_from_cli_spellings() {
        assert_eq!("EMAIL".parse::<Kind>().unwrap(), Kind::Email);
        assert_eq!("device-id".parse::<Kind>().unwrap(), Kind::DeviceId);
        assert_eq!("ip".parse::<Kind>().unwrap(), Kind::IpAddress);
        assert!(
            "fax"
                .parse::<Kind>()
                .unwrap_err()
                .contains("unknown identifier kind 'fax'")
        );
    }
}

/// Checks the committed test vectors (`docs/digest-v1-vectors.json`). With
/// `FLAGSHARE_WRITE_VECTORS=1` it fills in the digests instead, after checking every
/// normal form against the hand-written one.
#[cfg(test)]
mod vectors {
    use super::*;

    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/digest-v1-vectors.json");

    #[test]
    fn committed_vectors_hold() {
        let text = std::fs::read_to_string(PATH).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let secret: [u8; 32] = hex::decode(doc["key"].as_str().unwrap()).unwrap().try_into().unwrap();
        let key_id = doc["key_id"].as_u64().unwrap() as u32;
        let hasher = Hasher::new(&ConsortiumKey::from_parts(key_id, secret));
        let options = NormalizeOptions::default();
        let write = std::env::var("FLAGSHARE_WRITE_VECTORS").is_ok_and(|value| value == "1");
        let vectors = doc["vectors"].as_array_mut().unwrap();
        assert!(vectors.len() >= 20);
        for vector in vectors.iter_mut() {
            let kind: Kind = vector["kind"].as_str().unwrap().parse().unwrap();
            let input = vector["input"].as_str().unwrap();
            let (normalized, digest) = hasher.digest(kind, input, &options).unwrap();
            assert_eq!(
                normalized,
                vector["normalized"].as_str().unwrap(),
                "normal form of {input:?}"
            );
            if write {
                vector["digest"] = serde_json::Value::String(hex::encode(digest));
            } else {
                assert_eq!(
                    hex::encode(digest),
                    vector["digest"].as_str().unwrap(),
                    "digest of {input:?}"
                );
            }
        }
        for invalid in doc["invalid"].as_array().unwrap() {
            let kind: Kind = invalid["kind"].as_str().unwrap().parse().unwrap();
            let input = invalid["input"].as_str().unwrap();
            let err = normalize(kind, input, &options).unwrap_err();
            assert!(
                err.reason.contains(invalid["reason"].as_str().unwrap()),
                "{input:?}: {err}"
            );
        }
        if write {
            std::fs::write(PATH, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        }
    }
}
