//! Origin signatures for federated events. Each operator holds an Ed25519 key (in `meta`);
//! the events it originates can carry its signature, so a third operator that receives an
//! event through a relay believes it only if the origin's key, known to it out of band,
//! verifies it. What a relay cannot prove, it cannot make anyone believe.
//!
//! One signature per batch, not per event: the origin hashes each event of a pulled batch
//! (its canonical bytes) into a Merkle tree and signs the root; each event carries the
//! root's signature and its own path to the root (`n u32 | index u32 | sibling hashes`).
//! A receiver recomputes the root from the event and its path and verifies the root's
//! signature once per batch, so signing and checking cost a few hashes an event instead of
//! an Ed25519 operation (20 µs to sign, 10 µs to verify in batches here). A relay keeps an
//! event's signature and path with the flag and passes them on unchanged.
//!
//! The canonical bytes cover what the event asserts about the flag (origin, version,
//! member pseudonym, digest, kind, category, operation and its values); they leave out
//! names, which each receiver takes from its own configuration (operator names) or shows as
//! pseudonyms (members of an operator it does not pull from directly).

use std::collections::HashMap;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

use super::federation::{Event, EventOp};
use crate::wire;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Most sibling hashes a path may hold (a tree of 2^24 events is far beyond a batch).
const MAX_PATH: usize = 24;
/// Most bytes of a signature with its path.
pub const MAX_SIGNATURE_BYTES: usize = SIGNATURE_LEN + 8 + 32 * MAX_PATH;

/// Domain separation: these bytes are never anything but a flagshare federated event.
const CONTEXT: &[u8] = b"flagshare federated event v1\0";
const LEAF_CONTEXT: &str = "flagshare federated event leaf v1";
const NODE_CONTEXT: &str = "flagshare federated batch node v1";
const ROOT_CONTEXT: &[u8] = b"flagshare federated batch root v1\0";

/// The bytes that stand for `event` in its origin's signed batch.
pub fn canonical_bytes(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(CONTEXT);
    out.extend_from_slice(&event.origin);
    out.extend_from_slice(&event.origin_sequence.to_be_bytes());
    let pseudonym = event.member_pseudonym.as_bytes();
    out.extend_from_slice(&(pseudonym.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(pseudonym);
    out.extend_from_slice(&event.digest);
    out.push(wire::kind_to_pb(event.kind) as u8);
    out.push(wire::category_to_pb(event.category) as u8);
    match &event.op {
        EventOp::Upsert {
            confidence,
            first_seen_ms,
            last_seen_ms,
            expires_at_ms,
        } => {
            out.push(1);
            out.push(*confidence);
            out.extend_from_slice(&first_seen_ms.to_be_bytes());
            out.extend_from_slice(&last_seen_ms.to_be_bytes());
            out.extend_from_slice(&expires_at_ms.to_be_bytes());
        }
        EventOp::Retract(reason) => {
            out.push(2);
            out.push(wire::retract_reason_to_pb(*reason) as u8);
        }
        EventOp::Expire => out.push(3),
    }
    out
}

fn leaf_hash(event: &Event) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(LEAF_CONTEXT)
        .update(&canonical_bytes(event))
        .finalize()
        .as_bytes()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(NODE_CONTEXT)
        .update(left)
        .update(right)
        .finalize()
        .as_bytes()
}

fn root_message(root: &[u8; 32]) -> Vec<u8> {
    [ROOT_CONTEXT, root.as_slice()].concat()
}

/// An operator's signing key.
pub struct OriginKey {
    key: SigningKey,
}

impl OriginKey {
    pub fn from_secret(secret: [u8; 32]) -> OriginKey {
        OriginKey {
            key: SigningKey::from_bytes(&secret),
        }
    }

    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.key.verifying_key().to_bytes()
    }
}

/// Signs `events` as one batch: one Ed25519 signature over the root of their Merkle
/// tree; each event's `signature` becomes that signature followed by its path.
pub fn sign_all(key: &OriginKey, events: &mut [Event]) {
    if events.is_empty() {
        return;
    }
    let mut levels: Vec<Vec<[u8; 32]>> = vec![events.iter().map(leaf_hash).collect()];
    while let Some(level) = levels.last().filter(|level| level.len() > 1) {
        let next = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [single] => *single,
                _ => [0; 32], // chunks(2) yields one or two
            })
            .collect();
        levels.push(next);
    }
    let root = levels
        .last()
        .and_then(|level| level.first())
        .copied()
        .unwrap_or([0; 32]);
    let signature = key.key.sign(&root_message(&root)).to_bytes();
    let n = events.len() as u32;
    for (index, event) in events.iter_mut().enumerate() {
        let mut out = Vec::with_capacity(SIGNATURE_LEN + 8 + 32 * levels.len());
        out.extend_from_slice(&signature);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&(index as u32).to_be_bytes());
        let mut position = index;
        for level in &levels[..levels.len() - 1] {
            if let Some(sibling) = level.get(position ^ 1) {
                out.extend_from_slice(sibling);
            }
            position /= 2;
        }
        event.signature = out;
    }
}

/// The root an event's path leads to, and the signature over it.
fn root_of(event: &Event) -> Result<([u8; 32], [u8; SIGNATURE_LEN]), String> {
    let bytes = &event.signature;
    if bytes.len() < SIGNATURE_LEN + 8 {
        return Err(format!("{} bytes, expected a signature and a path", bytes.len()));
    }
    let (signature, rest) = bytes.split_at(SIGNATURE_LEN);
    let (header, mut siblings) = rest.split_at(8);
    let n = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut position = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if position >= n || siblings.len() % 32 != 0 || siblings.len() / 32 > MAX_PATH {
        return Err("the path does not fit its tree".to_owned());
    }
    let mut size = n;
    let mut current = leaf_hash(event);
    while size > 1 {
        let has_sibling = position % 2 == 1 || position + 1 < size;
        if has_sibling {
            let (sibling, rest) = siblings
                .split_first_chunk::<32>()
                .ok_or_else(|| "the path is shorter than its tree".to_owned())?;
            current = if position % 2 == 1 {
                node_hash(sibling, &current)
            } else {
                node_hash(&current, sibling)
            };
            siblings = rest;
        }
        position /= 2;
        size = size.div_ceil(2);
    }
    if !siblings.is_empty() {
        return Err("the path is longer than its tree".to_owned());
    }
    let mut signature_bytes = [0u8; SIGNATURE_LEN];
    signature_bytes.copy_from_slice(signature);
    Ok((current, signature_bytes))
}

/// Whether `event`'s signature and path prove that the holder of `public_key` said it.
pub fn verify(public_key: &[u8; PUBLIC_KEY_LEN], event: &Event) -> Result<(), String> {
    let (root, signature) = root_of(event)?;
    verify_root(public_key, &root, &signature)
}

fn verify_root(
    public_key: &[u8; PUBLIC_KEY_LEN],
    root: &[u8; 32],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), String> {
    let key =
        VerifyingKey::from_bytes(public_key).map_err(|_| "the origin's known key is not a valid key".to_owned())?;
    key.verify(&root_message(root), &Signature::from_bytes(signature))
        .map_err(|_| "does not verify against the origin's key".to_owned())
}

/// A batch root as signed: (key, root, signature).
type SignedRoot = ([u8; PUBLIC_KEY_LEN], [u8; 32], [u8; SIGNATURE_LEN]);

/// Verifies each `(key, event)` pair: each event's path leads to a root, and each distinct
/// (key, root, signature) is checked once.
pub fn verify_all(items: &[([u8; PUBLIC_KEY_LEN], &Event)]) -> Vec<Result<(), String>> {
    let mut checked: HashMap<SignedRoot, Result<(), String>> = HashMap::new();
    items
        .iter()
        .map(|(key, event)| {
            let (root, signature) = root_of(event)?;
            checked
                .entry((*key, root, signature))
                .or_insert_with(|| verify_root(key, &root, &signature))
                .clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Kind;
    use crate::model::{Category, RetractReason};

    fn event() -> Event {
        Event {
            sequence: 9,
            origin: [1; 8],
            origin_name: "op".to_owned(),
            origin_sequence: 7,
            member_pseudonym: "m-1".to_owned(),
            member_name: String::new(),
            digest: [2; 32],
            kind: Kind::Email,
            category: Category::Grooming,
            op: EventOp::Upsert {
                confidence: 50,
                first_seen_ms: 1,
                last_seen_ms: 2,
                expires_at_ms: 3,
            },
            signature: Vec::new(),
        }
    }

    fn signed(n: u64) -> Vec<Event> {
        let key = OriginKey::from_secret([5; 32]);
        let mut events: Vec<Event> = (0..n)
            .map(|i| Event {
                origin_sequence: i + 1,
                ..event()
            })
            .collect();
        sign_all(&key, &mut events);
        events
    }

    #[test]
    fn every_event_of_a_batch_of_any_size_proves_itself() {
        let public = OriginKey::from_secret([5; 32]).public_key();
        for n in [1, 2, 3, 5, 8, 13, 100, 1_001] {
            for event in signed(n) {
                assert!(
                    verify(&public, &event).is_ok(),
                    "n = {n}, event {}",
                    event.origin_sequence
                );
            }
        }
    }

    #[test]
    fn a_signature_covers_every_asserted_field_and_nothing_a_relay_may_change() {
        let public = OriginKey::from_secret([5; 32]).public_key();
        let original = signed(5).remove(2);
        assert!(verify(&public, &original).is_ok());
        // The sender's position, the operator name and the member name are not asserted.
        let relayed = Event {
            sequence: 1_000,
            origin_name: "renamed".to_owned(),
            member_name: "someone".to_owned(),
            ..original.clone()
        };
        assert!(verify(&public, &relayed).is_ok());
        let tampered = [
            Event {
                origin: [2; 8],
                ..original.clone()
            },
            Event {
                origin_sequence: u64::MAX,
                ..original.clone()
            },
            Event {
                member_pseudonym: "m-2".to_owned(),
                ..original.clone()
            },
            Event {
                digest: [3; 32],
                ..original.clone()
            },
            Event {
                kind: Kind::Phone,
                ..original.clone()
            },
            Event {
                category: Category::Other,
                ..original.clone()
            },
            Event {
                op: EventOp::Upsert {
                    confidence: 100,
                    first_seen_ms: 1,
                    last_seen_ms: 2,
                    expires_at_ms: 3,
                },
                ..original.clone()
            },
            Event {
                op: EventOp::Upsert {
                    confidence: 50,
                    first_seen_ms: 1,
                    last_seen_ms: 2,
                    expires_at_ms: i64::MAX,
                },
                ..original.clone()
            },
            Event {
                op: EventOp::Retract(RetractReason::Other),
                ..original.clone()
            },
        ];
        for event in tampered {
            assert!(verify(&public, &event).is_err(), "{event:?}");
        }
        let other = OriginKey::from_secret([6; 32]);
        assert!(verify(&other.public_key(), &original).is_err());
        for cut in [0, 10, SIGNATURE_LEN + 8, original.signature.len() - 1] {
            let short = Event {
                signature: original.signature[..cut].to_vec(),
                ..original.clone()
            };
            assert!(verify(&public, &short).is_err(), "cut at {cut}");
        }
        let mut longer = original.clone();
        longer.signature.extend_from_slice(&[0; 32]);
        assert!(verify(&public, &longer).is_err());
    }

    #[test]
    fn many_are_verified_at_once_and_each_bad_one_is_named() {
        let key = OriginKey::from_secret([5; 32]);
        let mut events = signed(300);
        events[7].origin_sequence = 1_000_000;
        events[250].signature[3] ^= 1;
        let items: Vec<([u8; PUBLIC_KEY_LEN], &Event)> = events.iter().map(|event| (key.public_key(), event)).collect();
        let failed: Vec<usize> = verify_all(&items)
            .iter()
            .enumerate()
            .filter(|(_, result)| result.is_err())
            .map(|(index, _)| index)
            .collect();
        assert_eq!(failed, vec![7, 250]);
    }
}
