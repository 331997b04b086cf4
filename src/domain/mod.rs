//! The rules of flagshare, over a `Store`. Never sees tonic or rocksdb types.
//!
//! Reads run concurrently; writes take one lock, so sequence numbers are handed out in
//! commit order and a read-modify-write of a digest's summary never races another.

pub mod flags;
pub mod principals;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{
    Category, Change, ChangeRecord, FlagKey, PrincipalRecord, PrincipalStatus, RetractReason, Role, SummaryEntry,
};
use crate::store::Store;
use crate::util::now_ms;

pub use flags::{FlagSelector, Match, NewFlag};
pub use principals::{Caller, Registry};

/// Rules an operator configures.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a flag matches when its member gave no expiry, per category.
    pub default_ttl_ms: HashMap<Category, i64>,
}

/// Two years: long enough to span a typical appeal and re-offending window, short enough
/// that a stale flag does not follow someone indefinitely.
pub const DEFAULT_TTL_MS: i64 = 2 * 365 * 24 * 60 * 60 * 1000;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_ttl_ms: Category::ALL
                .iter()
                .map(|category| (*category, DEFAULT_TTL_MS))
                .collect(),
        }
    }
}

impl Policy {
    fn default_expiry(&self, category: Category, now_ms: i64) -> i64 {
        let ttl = self.default_ttl_ms.get(&category).copied().unwrap_or(DEFAULT_TTL_MS);
        now_ms.saturating_add(ttl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitOutcome {
    pub n_created: u32,
    pub n_updated: u32,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetractOutcome {
    pub n_retracted: u32,
    pub unmatched_indexes: Vec<u32>,
    pub sequence: u64,
}

struct Inner {
    store: Store,
    registry: Registry,
    policy: Policy,
    /// Held for the whole read-modify-write of every change; guards the last sequence
    /// number handed out.
    writer: Mutex<u64>,
}

#[derive(Clone)]
pub struct Domain {
    inner: Arc<Inner>,
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Internal(format!("blocking task failed: {err}")))?
}

impl Domain {
    pub fn open(store: Store, policy: Policy) -> Result<Domain> {
        let registry = Registry::new(store.load_principals()?);
        let last_sequence = store.last_sequence()?;
        Ok(Domain {
            inner: Arc::new(Inner {
                store,
                registry,
                policy,
                writer: Mutex::new(last_sequence),
            }),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Maps a client certificate to a caller allowed to act in one of `roles`.
    pub fn authorize(&self, cert_sha256: &[u8; 32], roles: &[Role]) -> Result<Caller> {
        let caller = self.inner.registry.authenticate(cert_sha256)?;
        if !roles.contains(&caller.role) {
            let allowed: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
            return Err(Error::PermissionDenied(format!(
                "principal '{}' has role {}; this call needs role {}",
                caller.name,
                caller.role,
                allowed.join(" or ")
            )));
        }
        Ok(caller)
    }

    pub async fn submit(&self, caller: Caller, new_flags: Vec<NewFlag>, key_id: u32) -> Result<SubmitOutcome> {
        let now = now_ms();
        flags::validate_new_flags(&new_flags, now)?;
        let inner = self.inner.clone();
        blocking(move || inner.submit(&caller, &new_flags, key_id, now)).await
    }

    pub async fn query(&self, caller: Caller, digests: Vec<Digest>) -> Result<Vec<Match>> {
        flags::check_batch_len("digests", digests.len())?;
        let inner = self.inner.clone();
        blocking(move || inner.query(&caller, &digests, now_ms())).await
    }

    pub async fn retract(
        &self,
        caller: Caller,
        selectors: Vec<FlagSelector>,
        reason: RetractReason,
    ) -> Result<RetractOutcome> {
        flags::check_batch_len("flags", selectors.len())?;
        let inner = self.inner.clone();
        blocking(move || inner.retract(&caller, &selectors, reason, now_ms())).await
    }

    /// Registers a new principal authenticated by the certificate with `cert_sha256`.
    pub async fn add_principal(&self, name: String, role: Role, cert_sha256: [u8; 32]) -> Result<PrincipalRecord> {
        let inner = self.inner.clone();
        blocking(move || inner.add_principal(&name, role, cert_sha256)).await
    }

    pub async fn set_principal_status(&self, name: String, status: PrincipalStatus) -> Result<PrincipalRecord> {
        let inner = self.inner.clone();
        blocking(move || inner.set_principal_status(&name, status)).await
    }

    /// Fails unless `name` is well formed and free, so a certificate is not issued in vain.
    pub fn check_new_principal_name(&self, name: &str) -> Result<()> {
        principals::validate_principal_name(name)?;
        if self.inner.registry.by_name(name).is_some() {
            return Err(Error::AlreadyExists(format!("name: a principal named '{name}' exists")));
        }
        Ok(())
    }
}

impl Inner {
    fn submit(&self, caller: &Caller, new_flags: &[NewFlag], key_id: u32, now: i64) -> Result<SubmitOutcome> {
        let flag_keys: Vec<FlagKey> = new_flags
            .iter()
            .map(|flag| FlagKey {
                digest: flag.digest,
                member: caller.id,
                kind: flag.kind,
                category: flag.category,
            })
            .collect();
        let mut sorted_keys = flag_keys.clone();
        sorted_keys.sort_unstable();
        sorted_keys.dedup();
        let mut digests: Vec<Digest> = sorted_keys.iter().map(|key| key.digest).collect();
        digests.dedup();

        let mut last_sequence = self.writer.lock().expect("writer lock poisoned");
        let mut records: HashMap<FlagKey, _> = sorted_keys
            .iter()
            .copied()
            .zip(self.store.get_flags(&sorted_keys)?)
            .filter_map(|(key, record)| record.map(|record| (key, record)))
            .collect();
        let mut summaries: HashMap<Digest, Vec<SummaryEntry>> = digests
            .iter()
            .copied()
            .zip(self.store.get_summaries(&digests)?)
            .map(|(digest, entries)| (digest, entries.unwrap_or_default()))
            .collect();

        let mut batch = self.store.batch();
        let mut sequence = *last_sequence;
        let (mut n_created, mut n_updated) = (0, 0);
        for (key, new_flag) in flag_keys.iter().zip(new_flags) {
            let default_expiry = self.policy.default_expiry(key.category, now);
            let existing = records.get(key);
            if existing.is_some() {
                n_updated += 1;
            } else {
                n_created += 1;
            }
            let record = flags::merge_flag(existing, new_flag, key_id, default_expiry, now);
            let entries = summaries.get_mut(&key.digest).expect("every digest was read");
            flags::upsert_summary_entry(entries, key, &record);
            sequence += 1;
            batch.put_change(
                sequence,
                &ChangeRecord {
                    at_ms: now,
                    key: *key,
                    change: Change::Upsert(SummaryEntry::from_flag(key, &record)),
                },
            );
            batch.put_flag(key, &record);
            records.insert(*key, record);
        }
        for (digest, entries) in &summaries {
            batch.put_summary(digest, entries);
        }
        self.store.commit(batch)?;
        *last_sequence = sequence;
        Ok(SubmitOutcome {
            n_created,
            n_updated,
            sequence,
        })
    }

    fn query(&self, caller: &Caller, digests: &[Digest], now: i64) -> Result<Vec<Match>> {
        // Sorted input lets RocksDB batch the reads block by block.
        let mut order: Vec<u32> = (0..digests.len() as u32).collect();
        order.sort_unstable_by_key(|index| digests[*index as usize]);
        let sorted: Vec<Digest> = order.iter().map(|index| digests[*index as usize]).collect();
        let summaries = self.store.get_summaries(&sorted)?;
        let mut matches: Vec<Match> = order
            .iter()
            .zip(summaries)
            .filter_map(|(index, entries)| {
                let entries = entries?;
                flags::aggregate(*index, digests[*index as usize], &entries, caller.id, now, |id| {
                    self.registry.name_of(id)
                })
            })
            .collect();
        matches.sort_unstable_by_key(|found| found.index);
        Ok(matches)
    }

    fn retract(
        &self,
        caller: &Caller,
        selectors: &[FlagSelector],
        reason: RetractReason,
        now: i64,
    ) -> Result<RetractOutcome> {
        let mut digests: Vec<Digest> = selectors.iter().map(|selector| selector.digest).collect();
        digests.sort_unstable();
        digests.dedup();

        let mut last_sequence = self.writer.lock().expect("writer lock poisoned");
        let mut summaries: HashMap<Digest, Vec<SummaryEntry>> = digests
            .iter()
            .copied()
            .zip(self.store.get_summaries(&digests)?)
            .map(|(digest, entries)| (digest, entries.unwrap_or_default()))
            .collect();

        let mut batch = self.store.batch();
        let mut sequence = *last_sequence;
        let mut unmatched_indexes = Vec::new();
        let mut n_retracted = 0;
        for (index, selector) in selectors.iter().enumerate() {
            let entries = summaries.get_mut(&selector.digest).expect("every digest was read");
            let (selected, kept): (Vec<SummaryEntry>, Vec<SummaryEntry>) = entries
                .iter()
                .copied()
                .partition(|entry| selector.selects(caller.id, entry));
            if selected.is_empty() {
                unmatched_indexes.push(index as u32);
                continue;
            }
            *entries = kept;
            for entry in selected {
                let key = FlagKey {
                    digest: selector.digest,
                    member: entry.member,
                    kind: entry.kind,
                    category: entry.category,
                };
                batch.delete_flag(&key);
                sequence += 1;
                batch.put_change(
                    sequence,
                    &ChangeRecord {
                        at_ms: now,
                        key,
                        change: Change::Retract(reason),
                    },
                );
                n_retracted += 1;
            }
        }
        if n_retracted > 0 {
            for (digest, entries) in &summaries {
                batch.put_summary(digest, entries);
            }
            self.store.commit(batch)?;
            *last_sequence = sequence;
        }
        Ok(RetractOutcome {
            n_retracted,
            unmatched_indexes,
            sequence: *last_sequence,
        })
    }

    fn add_principal(&self, name: &str, role: Role, cert_sha256: [u8; 32]) -> Result<PrincipalRecord> {
        principals::validate_principal_name(name)?;
        let _writer = self.writer.lock().expect("writer lock poisoned");
        if self.registry.by_name(name).is_some() {
            return Err(Error::AlreadyExists(format!("name: a principal named '{name}' exists")));
        }
        if self.registry.contains_fingerprint(&cert_sha256) {
            return Err(Error::AlreadyExists(
                "certificate: already registered to another principal".to_owned(),
            ));
        }
        let record = PrincipalRecord {
            id: self.registry.next_id(),
            name: name.to_owned(),
            role,
            status: PrincipalStatus::Active,
            created_at_ms: now_ms(),
            cert_sha256,
        };
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        self.store.commit(batch)?;
        self.registry.upsert(record.clone());
        Ok(record)
    }

    fn set_principal_status(&self, name: &str, status: PrincipalStatus) -> Result<PrincipalRecord> {
        let _writer = self.writer.lock().expect("writer lock poisoned");
        let mut record = self
            .registry
            .by_name(name)
            .ok_or_else(|| Error::NotFound(format!("name: no principal named '{name}'")))?;
        record.status = status;
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        self.store.commit(batch)?;
        self.registry.upsert(record.clone());
        Ok(record)
    }
}
