//! Who is calling: the client certificate of the TLS connection, mapped to a registered
//! principal on every call (so a suspension reaches connections that are already open).

use tonic::{Request, Status};

use crate::domain::{Caller, Domain};
use crate::model::Role;
use crate::pki::certificate_sha256;

use super::convert::status_from_error;

pub fn authorize<T>(domain: &Domain, request: &Request<T>, roles: &[Role]) -> Result<Caller, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate signed by the operator CA is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate signed by the operator CA is required"))?;
    domain
        .authorize(&certificate_sha256(leaf), roles)
        .map_err(status_from_error)
}
