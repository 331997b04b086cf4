//! Who is calling: the client certificate of the TLS connection, mapped to a registered
//! principal on every call (so a suspension reaches connections that are already open).
//! Refused calls are audited, at most once a minute per certificate, so a flood of them
//! cannot flood the log.

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;
use tonic::{Request, Status};

use crate::domain::{Actor, Caller, Domain};
use crate::model::{AuditOp, Role};
use crate::pki::certificate_sha256;
use crate::util::now_ms;

/// Refusals audited per certificate: at most one entry per window.
const REFUSAL_AUDIT_WINDOW_MS: i64 = 60_000;
/// Certificates remembered for that; beyond it the table is cleared (the cost of a flood
/// of distinct certificates is then a few more entries, never memory).
const MAX_REFUSALS_REMEMBERED: usize = 10_000;

static LAST_REFUSAL_AUDITED: LazyLock<Mutex<HashMap<[u8; 32], i64>>> = LazyLock::new(Default::default);

/// Metadata a node of this operator's cluster sets when it forwards a member's call to
/// the leader: the member's certificate SHA-256, in hex. Honoured from a `node` principal
/// only (a node holds the whole database and may write anything anyway); from anyone
/// else the call is refused.
pub const ON_BEHALF_OF: &str = "x-flagshare-on-behalf-of";

pub fn authorize<T>(domain: &Domain, request: &Request<T>, roles: &[Role]) -> Result<Caller, Status> {
    let leaf = request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| Status::unauthenticated("a client certificate signed by the operator CA is required"))?;
    let mut fingerprint = certificate_sha256(&leaf);
    if let Some(value) = request.metadata().get(ON_BEHALF_OF) {
        domain.authorize(&fingerprint, &[Role::Node]).map_err(|err| {
            audit_refusal(domain, fingerprint, &format!("{ON_BEHALF_OF}: {err}"));
            Status::permission_denied(format!(
                "{ON_BEHALF_OF}: only a node of this cluster may call for another"
            ))
        })?;
        fingerprint = value
            .to_str()
            .ok()
            .and_then(|text| hex::decode(text).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| Status::invalid_argument(format!("{ON_BEHALF_OF}: expected 64 hex digits")))?;
    }
    domain.authorize(&fingerprint, roles).map_err(|err| {
        audit_refusal(domain, fingerprint, &err.to_string());
        Status::from(err)
    })
}

/// Records a refused call in the audit log, off the request path, once per window per
/// certificate.
fn audit_refusal(domain: &Domain, fingerprint: [u8; 32], reason: &str) {
    let now = now_ms();
    {
        let mut seen = LAST_REFUSAL_AUDITED.lock();
        if seen
            .get(&fingerprint)
            .is_some_and(|at| now - *at < REFUSAL_AUDIT_WINDOW_MS)
        {
            return;
        }
        if seen.len() >= MAX_REFUSALS_REMEMBERED {
            seen.clear();
        }
        seen.insert(fingerprint, now);
    }
    let domain = domain.clone();
    let detail = format!("certificate {}: {reason}", hex::encode(fingerprint));
    tokio::spawn(async move {
        if let Err(err) = domain
            .record_refusal(Actor::refused(), AuditOp::RefusedCall, detail)
            .await
        {
            tracing::warn!(%err, "could not audit a refused call");
        }
    });
}
