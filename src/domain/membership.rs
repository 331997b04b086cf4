//! Principal lifecycle: onboarding, suspension, removal (optionally withdrawing the
//! principal's flags), certificate rotation, and the listing with activity counters.

use super::PrincipalView;
use super::audit::{Actor, AuditEvent};
use super::principals::{self, Caller};
use super::state::{Removal, State};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{
    AuditOp, Change, IssuedCertificate, LimitOverrides, PrincipalId, PrincipalRecord, PrincipalStatus, RetractReason,
    Role,
};

/// Digests whose flags are withdrawn per commit: the writer lock is never held for more
/// than this, however many flags a member has.
const WITHDRAW_CHUNK: usize = 1_000;

impl State {
    pub(super) fn add_principal(
        &self,
        admin: &Actor,
        name: &str,
        role: Role,
        certificate: IssuedCertificate,
        now: i64,
    ) -> Result<PrincipalRecord> {
        let cert_sha256 = certificate.sha256;
        principals::validate_principal_name(name)?;
        let _writer = self.writer()?;
        if self.registry.by_name(name).is_some() {
            return Err(Error::AlreadyExists(format!("name: a principal named '{name}' exists")));
        }
        if self.registry.contains_fingerprint(&cert_sha256) {
            return Err(Error::AlreadyExists(
                "certificate: already registered to another principal".to_owned(),
            ));
        }
        let record = PrincipalRecord {
            id: self.registry.next_id()?,
            name: name.to_owned(),
            role,
            status: PrincipalStatus::Active,
            created_at_ms: now,
            cert_sha256,
            cert_not_after_ms: certificate.not_after_ms,
        };
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        let event = AuditEvent::new(admin.clone(), AuditOp::AddPrincipal)
            .counts(1, 1)
            .detail(format!("{name} as {role}"));
        self.commit_audited(batch, event, now)?;
        self.registry.upsert(record.clone());
        Ok(record)
    }

    /// Sets (or with `clear`, first drops) a principal's limit overrides; returns what is
    /// set now. Audited with the new values.
    pub(super) fn set_limits(
        &self,
        admin: &Caller,
        name: &str,
        changes: LimitOverrides,
        clear: bool,
        now: i64,
    ) -> Result<LimitOverrides> {
        let zero = [
            changes.digests_queried_per_second == Some(0),
            changes.flags_submitted_per_second == Some(0),
            changes.flags_submitted_per_day == Some(0),
            changes.streams == Some(0),
        ];
        if zero.contains(&true) {
            return Err(Error::invalid("limits: every limit must be at least 1"));
        }
        let _writer = self.writer()?;
        if self.registry.by_name(name).is_none() {
            return Err(Error::NotFound(format!("name: no principal named '{name}'")));
        }
        let current = if clear {
            LimitOverrides::default()
        } else {
            self.limit_overrides_of(name)?
        };
        let updated = current.merged(changes);
        let mut batch = self.store.batch();
        if updated.is_empty() {
            batch.delete_limits(name);
        } else {
            let json = serde_json::to_vec(&updated).map_err(|err| Error::Internal(err.to_string()))?;
            batch.put_limits(name, &[&[LIMITS_FORMAT][..], &json].concat());
        }
        let event = AuditEvent::new(admin.into(), AuditOp::SetLimits)
            .counts(1, 0)
            .detail(format!("{name}: {}", describe_limits(&updated)));
        self.commit_audited(batch, event, now)?;
        if let Some(record) = self.registry.by_name(name) {
            self.set_quarantine_override(record.id, updated.quarantine_new_flags_per_hour);
        }
        Ok(updated)
    }

    /// Every principal's limit overrides, by name.
    pub(super) fn all_limit_overrides(&self) -> Result<Vec<(String, LimitOverrides)>> {
        self.store
            .load_limits()?
            .into_iter()
            .map(|(name, encoded)| Ok((name, decode_limits(&encoded)?)))
            .collect()
    }

    pub(super) fn limit_overrides_of(&self, name: &str) -> Result<LimitOverrides> {
        Ok(self
            .all_limit_overrides()?
            .into_iter()
            .find(|(named, _)| named == name)
            .map(|(_, limits)| limits)
            .unwrap_or_default())
    }

    pub(super) fn set_principal_status(
        &self,
        admin: &Caller,
        name: &str,
        status: PrincipalStatus,
        withdraw_flags: bool,
        now: i64,
    ) -> Result<(PrincipalRecord, u32)> {
        if name == admin.name {
            return Err(Error::FailedPrecondition(
                "name: an admin cannot change its own status (it would lock itself out)".to_owned(),
            ));
        }
        if withdraw_flags && status == PrincipalStatus::Active {
            return Err(Error::invalid(
                "withdraw_flags: only a suspension or a removal withdraws flags",
            ));
        }
        let record = {
            let _writer = self.writer()?;
            let mut record = self
                .registry
                .by_name(name)
                .ok_or_else(|| Error::NotFound(format!("name: no principal named '{name}'")))?;
            if record.status == PrincipalStatus::Removed {
                return Err(Error::FailedPrecondition(format!(
                    "name: '{name}' was removed; add the platform again under a new name"
                )));
            }
            record.status = status;
            let mut batch = self.store.batch();
            batch.put_principal(&record);
            let op = if status == PrincipalStatus::Removed {
                AuditOp::RemovePrincipal
            } else {
                AuditOp::SetPrincipalStatus
            };
            let event = AuditEvent::new(admin.into(), op)
                .counts(1, 0)
                .detail(format!("{name} is now {status}"));
            self.commit_audited(batch, event, now)?;
            self.registry.upsert(record.clone());
            record
        };
        // The principal can no longer call; its flags go in chunks, each its own commit,
        // so other writers are never held up by a large member. Re-running the command
        // withdraws whatever a crash left.
        let n_withdrawn = if withdraw_flags {
            self.withdraw_flags_of(admin, record.id, name, now)?
        } else {
            0
        };
        Ok((record, n_withdrawn))
    }

    /// Retracts (reason `withdrawn`) every flag of `member`, a chunk of digests per commit.
    fn withdraw_flags_of(&self, admin: &Caller, member: PrincipalId, name: &str, now: i64) -> Result<u32> {
        // Found without the lock (a scan of every summary); each chunk is re-read under it.
        let mut digests: Vec<Digest> = self
            .store
            .flag_keys_of_member(member)?
            .iter()
            .map(|key| key.digest)
            .collect();
        digests.dedup();
        let n_withdrawn = self.remove_where(
            &digests,
            WITHDRAW_CHUNK,
            |entry| entry.member == member,
            |_| Ok(Removal::local(Change::Retract(RetractReason::Withdrawn))),
            false,
            |n| {
                AuditEvent::new(admin.into(), AuditOp::Retract)
                    .counts(n, n)
                    .detail(format!("withdrawn: flags of {name}"))
            },
            now,
        )?;
        // Its held flags go too: a suspended or removed member's flood is never released.
        let n_held = self.reject_all_held(admin, member, name, now)?;
        Ok(u32::try_from(n_withdrawn + n_held).unwrap_or(u32::MAX))
    }

    pub(super) fn rotate_certificate(
        &self,
        admin: &Caller,
        name: &str,
        certificate: IssuedCertificate,
        now: i64,
    ) -> Result<PrincipalRecord> {
        let cert_sha256 = certificate.sha256;
        let _writer = self.writer()?;
        let mut record = self
            .registry
            .by_name(name)
            .ok_or_else(|| Error::NotFound(format!("name: no principal named '{name}'")))?;
        if record.status == PrincipalStatus::Removed {
            return Err(Error::FailedPrecondition(format!("name: '{name}' was removed")));
        }
        if self.registry.contains_fingerprint(&cert_sha256) {
            return Err(Error::AlreadyExists(
                "certificate: already registered to a principal".to_owned(),
            ));
        }
        let old = record.cert_sha256;
        record.cert_sha256 = cert_sha256;
        record.cert_not_after_ms = certificate.not_after_ms;
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        let event = AuditEvent::new(admin.into(), AuditOp::RotateCertificate)
            .counts(1, 1)
            .detail(format!(
                "{name}: certificate {} replaced by {}",
                hex::encode(old),
                hex::encode(cert_sha256)
            ));
        self.commit_audited(batch, event, now)?;
        self.registry.upsert(record.clone());
        Ok(record)
    }

    pub(super) fn list_principals(&self, admin: &Caller, now: i64) -> Result<Vec<PrincipalView>> {
        let records = self.registry.list();
        self.record(
            AuditEvent::new(admin.into(), AuditOp::ListPrincipals).counts(0, records.len() as u64),
            now,
        )?;
        let ledger = self.ledger();
        Ok(records
            .into_iter()
            .map(|record| PrincipalView {
                stats: ledger.stats_of(record.id),
                record,
            })
            .collect())
    }

    /// Marks the principal `name` removed, if it exists and is a peer (used when its peer
    /// configuration goes): returns whether it did.
    pub(super) fn remove_peer_principal(&self, admin: &Caller, name: &str, now: i64) -> Result<bool> {
        let Some(mut record) = self.registry.by_name(name) else {
            return Ok(false);
        };
        if record.role != Role::Peer || record.status == PrincipalStatus::Removed {
            return Ok(false);
        }
        record.status = PrincipalStatus::Removed;
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        let event = AuditEvent::new(admin.into(), AuditOp::RemovePrincipal)
            .counts(1, 0)
            .detail(format!("{name} is now removed (its peer configuration was removed)"));
        self.commit_audited(batch, event, now)?;
        self.registry.upsert(record);
        Ok(true)
    }
}

/// Format byte of a stored `LimitOverrides` (followed by JSON).
const LIMITS_FORMAT: u8 = 1;

fn decode_limits(encoded: &[u8]) -> Result<LimitOverrides> {
    match encoded.split_first() {
        Some((&LIMITS_FORMAT, json)) => {
            serde_json::from_slice(json).map_err(|err| Error::Internal(format!("stored limits are unreadable: {err}")))
        }
        _ => Err(Error::Internal("stored limits have an unknown format".to_owned())),
    }
}

/// `digests_queried_per_second=100, streams=4`, or `role defaults`.
pub fn describe_limits(limits: &LimitOverrides) -> String {
    let parts: Vec<String> = [
        ("digests_queried_per_second", limits.digests_queried_per_second),
        ("flags_submitted_per_second", limits.flags_submitted_per_second),
        ("flags_submitted_per_day", limits.flags_submitted_per_day),
        ("streams", limits.streams.map(u64::from)),
        ("quarantine_new_flags_per_hour", limits.quarantine_new_flags_per_hour),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
    .collect();
    if parts.is_empty() {
        "role defaults".to_owned()
    } else {
        parts.join(", ")
    }
}
