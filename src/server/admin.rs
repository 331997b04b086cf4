//! The `Admin` service for the operator. Thin: identify, convert, call the domain.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::Domain;
use crate::error::Error;
use crate::model::Role;
use crate::pb;
use crate::pki::Pki;

use super::convert::{self, status_from_error};
use super::identity::authorize;

pub struct AdminService {
    pub domain: Domain,
    /// Signs the certificates of new principals.
    pub pki: Arc<Pki>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_principal(
        &self,
        request: Request<pb::AddPrincipalRequest>,
    ) -> Result<Response<pb::AddPrincipalResponse>, Status> {
        authorize(&self.domain, &request, &[Role::Admin])?;
        let request = request.into_inner();
        let role = convert::role_from_pb(request.role).map_err(status_from_error)?;
        self.domain
            .check_new_principal_name(&request.name)
            .map_err(status_from_error)?;
        let (certificate_pem, cert_sha256) = self
            .pki
            .issue_client_certificate(&request.name, role, &request.public_key_der)
            .map_err(|err| {
                status_from_error(Error::invalid(format!(
                    "public_key_der: not a usable SubjectPublicKeyInfo ({err})"
                )))
            })?;
        let record = self
            .domain
            .add_principal(request.name, role, cert_sha256)
            .await
            .map_err(status_from_error)?;
        tracing::info!(principal = %record.name, role = %record.role, "principal added");
        Ok(Response::new(pb::AddPrincipalResponse {
            principal: Some(convert::principal_to_pb(&record)),
            certificate_pem,
            ca_certificate_pem: self.pki.ca_pem.clone(),
        }))
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        authorize(&self.domain, &request, &[Role::Admin])?;
        let principals = self
            .domain
            .registry()
            .list()
            .iter()
            .map(convert::principal_to_pb)
            .collect();
        Ok(Response::new(pb::ListPrincipalsResponse { principals }))
    }

    async fn set_principal_status(
        &self,
        request: Request<pb::SetPrincipalStatusRequest>,
    ) -> Result<Response<pb::SetPrincipalStatusResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Admin])?;
        let request = request.into_inner();
        let status = convert::status_from_pb(request.status).map_err(status_from_error)?;
        if request.name == caller.name {
            return Err(Status::failed_precondition(
                "name: an admin cannot change its own status (it would lock itself out)",
            ));
        }
        let record = self
            .domain
            .set_principal_status(request.name, status)
            .await
            .map_err(status_from_error)?;
        tracing::info!(principal = %record.name, status = %record.status, "principal status changed");
        Ok(Response::new(pb::SetPrincipalStatusResponse {
            principal: Some(convert::principal_to_pb(&record)),
        }))
    }
}
