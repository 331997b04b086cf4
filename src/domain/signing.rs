//! Origin signatures for federated events. Each operator holds an Ed25519 key
//! (`pki/federation.key`); an event it originates can carry its signature over the event's
//! canonical bytes, so a third operator that receives the event through a relay believes
//! it only if the origin's key, known to it out of band, verifies it. What a relay cannot
//! prove, it cannot make anyone believe.
//!
//! The canonical bytes cover what the event asserts about the flag (origin, version,
//! member pseudonym, digest, kind, category, operation and its values); they leave out
//! names, which each receiver takes from its own configuration (operator names) or shows as
//! pseudonyms (members of an operator it does not pull from directly).

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

use super::federation::{Event, EventOp};
use crate::wire;

/// Length of a signature on the wire and on disk.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Domain separation: these bytes are never anything but a flagshare federated event.
const CONTEXT: &[u8] = b"flagshare federated event v1\0";

/// The bytes an origin signs for `event`.
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

    pub fn sign(&self, event: &Event) -> [u8; SIGNATURE_LEN] {
        self.key.sign(&canonical_bytes(event)).to_bytes()
    }
}

/// Signs each event with `key`, on up to every core: signing costs tens of microseconds
/// an event, so a batch of thousands is split.
pub fn sign_all(key: &OriginKey, events: &mut [Event]) {
    let n_threads = parallelism(events.len());
    let chunk = events.len().div_ceil(n_threads).max(1);
    std::thread::scope(|scope| {
        for part in events.chunks_mut(chunk) {
            scope.spawn(move || {
                for event in part {
                    event.signature = key.sign(event).to_vec();
                }
            });
        }
    });
}

/// Verifies each `(key, event)` pair against the event's signature: batch verification
/// (about twice as fast as one by one) of chunks spread over every core; a chunk that fails
/// is checked one by one, so each bad signature is named.
pub fn verify_all(items: &[([u8; PUBLIC_KEY_LEN], &Event)]) -> Vec<Result<(), String>> {
    const CHUNK: usize = 128;
    let n_threads = parallelism(items.len().div_ceil(CHUNK));
    let mut results: Vec<Result<(), String>> = vec![Ok(()); items.len()];
    let per_thread = items.len().div_ceil(n_threads).max(1);
    std::thread::scope(|scope| {
        for (part, out) in items.chunks(per_thread).zip(results.chunks_mut(per_thread)) {
            scope.spawn(move || {
                for (batch, out) in part.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
                    if verify_batch(batch).is_err() {
                        for ((key, event), result) in batch.iter().zip(out.iter_mut()) {
                            *result = verify(key, event, &event.signature);
                        }
                    }
                }
            });
        }
    });
    results
}

fn verify_batch(items: &[([u8; PUBLIC_KEY_LEN], &Event)]) -> Result<(), ()> {
    let messages: Vec<Vec<u8>> = items.iter().map(|(_, event)| canonical_bytes(event)).collect();
    let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let signatures = items
        .iter()
        .map(|(_, event)| Signature::from_slice(&event.signature))
        .collect::<Result<Vec<_>, _>>()
        .map_err(drop)?;
    let keys = items
        .iter()
        .map(|(key, _)| VerifyingKey::from_bytes(key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(drop)?;
    ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).map_err(drop)
}

/// Threads worth starting for `n_pieces` of work: at most the cores, at least one.
fn parallelism(n_pieces: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(n_pieces).clamp(1, 8)
}

/// Whether `signature` is the signature of the holder of `public_key` over `event`.
pub fn verify(public_key: &[u8; PUBLIC_KEY_LEN], event: &Event, signature: &[u8]) -> Result<(), String> {
    let key =
        VerifyingKey::from_bytes(public_key).map_err(|_| "the origin's known key is not a valid key".to_owned())?;
    let signature =
        Signature::from_slice(signature).map_err(|_| format!("{} bytes, expected {SIGNATURE_LEN}", signature.len()))?;
    key.verify(&canonical_bytes(event), &signature)
        .map_err(|_| "does not verify against the origin's key".to_owned())
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

    #[test]
    fn a_signature_covers_every_asserted_field_and_nothing_a_relay_may_change() {
        let key = OriginKey::from_secret([5; 32]);
        let public = key.public_key();
        let original = event();
        let signature = key.sign(&original);
        assert!(verify(&public, &original, &signature).is_ok());
        // The sender's position, the operator name and the member name are not asserted.
        let relayed = Event {
            sequence: 1_000,
            origin_name: "renamed".to_owned(),
            member_name: "someone".to_owned(),
            ..original.clone()
        };
        assert!(verify(&public, &relayed, &signature).is_ok());
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
            assert!(verify(&public, &event, &signature).is_err(), "{event:?}");
        }
        let other = OriginKey::from_secret([6; 32]);
        assert!(verify(&other.public_key(), &original, &signature).is_err());
        assert!(verify(&public, &original, &signature[..10]).is_err());
    }

    #[test]
    fn many_are_signed_and_verified_at_once_and_each_bad_one_is_named() {
        let key = OriginKey::from_secret([5; 32]);
        let mut events: Vec<Event> = (0..300)
            .map(|i| Event {
                origin_sequence: i,
                ..event()
            })
            .collect();
        sign_all(&key, &mut events);
        events[7].origin_sequence = 1_000_000;
        events[250].signature[3] ^= 1;
        let items: Vec<([u8; PUBLIC_KEY_LEN], &Event)> = events.iter().map(|event| (key.public_key(), event)).collect();
        let results = verify_all(&items);
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, result)| result.is_err())
            .map(|(index, _)| index)
            .collect();
        assert_eq!(failed, vec![7, 250]);
    }
}
