//! The registry of principals: who may call, with which role. Held in memory (operators
//! register dozens to thousands) and written through to the store, so the per-call check
//! is a hash lookup and a suspension takes effect on the very next call, also on
//! connections that were already open.

use parking_lot::RwLock;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::{FOREIGN_MEMBER_BASE, PrincipalId, PrincipalRecord, PrincipalStatus, Role};

/// An authenticated caller, as the domain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: PrincipalId,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the certificate the caller authenticated with: a long-lived stream is
    /// re-checked against it, so a rotation or removal ends the stream.
    pub cert_sha256: [u8; 32],
}

/// The name the audit log gives the server's own work; no principal may take it.
pub const SYSTEM_NAME: &str = "system";

#[derive(Default)]
struct Maps {
    by_id: HashMap<PrincipalId, PrincipalRecord>,
    by_fingerprint: HashMap<[u8; 32], PrincipalId>,
    by_name: HashMap<String, PrincipalId>,
    /// Display names of members of other operators (`operator/member`).
    foreign_names: HashMap<PrincipalId, String>,
}

#[derive(Default)]
pub struct Registry {
    maps: RwLock<Maps>,
}

/// Principal names appear in match results and on the command line: keep them plain.
pub fn validate_principal_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok && name == SYSTEM_NAME {
        return Err(Error::invalid(format!(
            "name: '{SYSTEM_NAME}' is reserved for the server's own entries in the audit log"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "name: '{name}' must be 1 to 64 characters of a-z, 0-9, '-', '_' and '.'"
        )))
    }
}

impl Registry {
    pub fn new(records: Vec<PrincipalRecord>) -> Registry {
        let registry = Registry::default();
        for record in records {
            registry.upsert(record);
        }
        registry
    }

    /// Takes what `fresh` holds instead of what it held, at once: the store changed under
    /// this copy.
    pub fn replace_with(&self, fresh: Registry) {
        *self.maps.write() = fresh.maps.into_inner();
    }

    /// Inserts or replaces a record (after it has been committed to the store).
    pub fn upsert(&self, record: PrincipalRecord) {
        let mut maps = self.maps.write();
        if let Some(old) = maps.by_id.get(&record.id).cloned() {
            maps.by_fingerprint.remove(&old.cert_sha256);
            maps.by_name.remove(&old.name);
        }
        maps.by_fingerprint.insert(record.cert_sha256, record.id);
        maps.by_name.insert(record.name.clone(), record.id);
        maps.by_id.insert(record.id, record);
    }

    /// Maps a client certificate's SHA-256 to an active principal.
    pub fn authenticate(&self, cert_sha256: &[u8; 32]) -> Result<Caller> {
        let maps = self.maps.read();
        let record = maps
            .by_fingerprint
            .get(cert_sha256)
            .and_then(|id| maps.by_id.get(id))
            .ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "client certificate {} is not registered to any principal",
                    hex::encode(cert_sha256)
                ))
            })?;
        if record.status != PrincipalStatus::Active {
            return Err(Error::PermissionDenied(format!(
                "principal '{}' is {}",
                record.name, record.status
            )));
        }
        Ok(Caller {
            id: record.id,
            name: record.name.clone(),
            role: record.role,
            cert_sha256: *cert_sha256,
        })
    }

    pub fn by_name(&self, name: &str) -> Option<PrincipalRecord> {
        let maps = self.maps.read();
        maps.by_name.get(name).and_then(|id| maps.by_id.get(id)).cloned()
    }

    pub fn name_of(&self, id: PrincipalId) -> String {
        let maps = self.maps.read();
        maps.by_id
            .get(&id)
            .map(|record| record.name.clone())
            .or_else(|| maps.foreign_names.get(&id).cloned())
            .unwrap_or_else(|| format!("principal-{id}"))
    }

    pub fn forget_foreign_name(&self, id: PrincipalId) {
        self.maps.write().foreign_names.remove(&id);
    }

    pub fn set_foreign_name(&self, id: PrincipalId, display: String) {
        let mut maps = self.maps.write();
        maps.foreign_names.insert(id, display);
    }

    /// Whether the principal with `id` is registered and active.
    pub fn is_active(&self, id: PrincipalId) -> bool {
        let maps = self.maps.read();
        maps.by_id
            .get(&id)
            .is_some_and(|record| record.status == PrincipalStatus::Active)
    }

    pub fn contains_fingerprint(&self, cert_sha256: &[u8; 32]) -> bool {
        self.maps.read().by_fingerprint.contains_key(cert_sha256)
    }

    pub fn next_id(&self) -> Result<PrincipalId> {
        let maps = self.maps.read();
        let next = maps.by_id.keys().max().map_or(1, |max| max.saturating_add(1));
        if next >= FOREIGN_MEMBER_BASE {
            return Err(Error::ResourceExhausted("name: no principal ids are left".to_owned()));
        }
        Ok(next)
    }

    /// All principals, by name.
    pub fn list(&self) -> Vec<PrincipalRecord> {
        let maps = self.maps.read();
        let mut records: Vec<_> = maps.by_id.values().cloned().collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u32, name: &str, status: PrincipalStatus) -> PrincipalRecord {
        PrincipalRecord {
            id,
            name: name.to_owned(),
            role: Role::Member,
            status,
            created_at_ms: 0,
            cert_sha256: [id as u8; 32],
            cert_not_after_ms: 0,
        }
    }

    #[test]
    fn authenticates_only_registered_active_principals() {
        let registry = Registry::new(vec![
            record(1, "alpha", PrincipalStatus::Active),
            record(2, "beta", PrincipalStatus::Suspended),
        ]);
        assert_eq!(registry.authenticate(&[1; 32]).unwrap().name, "alpha");
        assert!(matches!(registry.authenticate(&[2; 32]), Err(Error::PermissionDenied(m)) if m.contains("suspended")));
        assert!(matches!(
            registry.authenticate(&[3; 32]),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn replacing_a_certificate_forgets_the_old_fingerprint() {
        let registry = Registry::new(vec![record(1, "alpha", PrincipalStatus::Active)]);
        let mut rotated = record(1, "alpha", PrincipalStatus::Active);
        rotated.cert_sha256 = [9; 32];
        registry.upsert(rotated);
        assert!(registry.authenticate(&[1; 32]).is_err());
        assert_eq!(registry.authenticate(&[9; 32]).unwrap().id, 1);
        assert_eq!(registry.next_id().unwrap(), 2);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_principal_name("platform-a.eu_1").is_ok());
        assert!(validate_principal_name("Platform A").is_err());
        assert!(validate_principal_name("").is_err());
        assert!(
            validate_principal_name("system")
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
    }
}
