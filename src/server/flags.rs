//! The `Flags` service for member platforms. Thin: identify, convert, call the domain.

use tonic::{Request, Response, Status};

use crate::domain::Domain;
use crate::model::Role;
use crate::pb;

use super::convert::{self, status_from_error};
use super::identity::authorize;

pub struct FlagsService {
    pub domain: Domain,
}

#[tonic::async_trait]
impl pb::flags_server::Flags for FlagsService {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let request = request.into_inner();
        let flags = convert::new_flags_from_pb(request.flags).map_err(status_from_error)?;
        let outcome = self
            .domain
            .submit(caller, flags, request.key_id)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(convert::submit_outcome_to_pb(outcome)))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let digests = convert::digests_from_packed(&request.get_ref().digests).map_err(status_from_error)?;
        let n_queried = digests.len() as u32;
        let matches = self.domain.query(caller, digests).await.map_err(status_from_error)?;
        Ok(Response::new(pb::QueryResponse {
            matches: matches.into_iter().map(convert::match_to_pb).collect(),
            n_queried,
        }))
    }

    async fn retract(&self, request: Request<pb::RetractRequest>) -> Result<Response<pb::RetractResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let request = request.into_inner();
        let reason = convert::retract_reason_from_pb(request.reason).map_err(status_from_error)?;
        let selectors = convert::selectors_from_pb(request.flags).map_err(status_from_error)?;
        let outcome = self
            .domain
            .retract(caller, selectors, reason)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(convert::retract_outcome_to_pb(outcome)))
    }

    async fn dispute(&self, request: Request<pb::DisputeRequest>) -> Result<Response<pb::DisputeResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let request = request.into_inner();
        let digest = convert::digest_from_bytes("digest", &request.digest).map_err(status_from_error)?;
        let n_flags = self
            .domain
            .dispute(caller, digest, request.member, request.note)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(pb::DisputeResponse { n_flags }))
    }
}
