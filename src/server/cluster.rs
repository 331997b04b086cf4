//! The `Cluster` service: openraft's calls from the other nodes of this operator's
//! replicated cluster. Who may call is decided before a message is read (an interceptor),
//! so a member's or peer's certificate cannot make the server decode a large request.

use std::sync::Arc;

use openraft::Raft;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::cluster::forward::read_from_pb;
use crate::cluster::network::{self, BadRequest, MAX_MESSAGE_BYTES};
use crate::cluster::{Config, NodeId};
use crate::domain::Domain;
use crate::pb;
use crate::pki::certificate_sha256;

/// Whether the certificate with this SHA-256 belongs to a node of the cluster.
pub type NodeGate = Arc<dyn Fn(&[u8; 32]) -> bool + Send + Sync>;

pub struct ClusterService {
    raft: Raft<Config>,
    /// Takes the read entries followers forward; `None` only for a Raft without a domain
    /// (tests of the log alone), which refuses them.
    domain: Option<Domain>,
}

/// The gate in front of the service: a tonic interceptor.
pub trait Gatekeeper: FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {}
impl<F: FnMut(Request<()>) -> Result<Request<()>, Status> + Clone> Gatekeeper for F {}

/// The service behind its gate.
pub fn service(
    raft: Raft<Config>,
    domain: Option<Domain>,
    gate: NodeGate,
) -> InterceptedService<pb::cluster_server::ClusterServer<ClusterService>, impl Gatekeeper> {
    let server = pb::cluster_server::ClusterServer::new(ClusterService { raft, domain })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    InterceptedService::new(server, move |request: Request<()>| {
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| Status::unauthenticated("a client certificate signed by the operator CA is required"))?;
        let fingerprint = certificate_sha256(&leaf);
        if gate(&fingerprint) {
            Ok(request)
        } else {
            Err(Status::permission_denied(format!(
                "cluster: certificate {} is not a node of this cluster; only its nodes may call this service",
                hex::encode(fingerprint)
            )))
        }
    })
}

/// The SHA-256 of the calling certificate (the gate admitted only calls that have one).
fn caller_sha256<T>(request: &Request<T>) -> Option<[u8; 32]> {
    let certs = request.peer_certs()?;
    Some(certificate_sha256(certs.first()?))
}

impl ClusterService {
    /// A node's call speaks for that node only: a leader's append or snapshot, or a
    /// candidate's vote request, must name as leader or candidate the node whose
    /// certificate the membership records for the caller. Else a node's leaked
    /// credentials could depose the leader in another node's name. A caller the
    /// membership does not record (a node principal not yet added) is not checked here.
    fn speaks_for_itself(&self, caller: Option<[u8; 32]>, claimed: NodeId) -> Result<(), Status> {
        let Some(caller) = caller else {
            return Ok(());
        };
        let wanted = hex::encode(caller);
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let recorded = metrics
            .membership_config
            .membership()
            .nodes()
            .find(|(_, node)| node.certificate_sha256 == wanted)
            .map(|(id, _)| *id);
        match recorded {
            Some(id) if id != claimed => Err(Status::permission_denied(format!(
                "vote: names node {claimed} as leader or candidate, but the caller's certificate is node {id}'s"
            ))),
            _ => Ok(()),
        }
    }
}

fn invalid(err: BadRequest) -> Status {
    Status::invalid_argument(err.to_string())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn append_entries(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let caller = caller_sha256(&request);
        let rpc = network::decode_append(request.into_inner()).map_err(invalid)?;
        self.speaks_for_itself(caller, rpc.vote.leader_id.node_id)?;
        Ok(Response::new(network::reply(&self.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let caller = caller_sha256(&request);
        let rpc = network::decode_vote(request.into_inner()).map_err(invalid)?;
        self.speaks_for_itself(caller, rpc.vote.leader_id.node_id)?;
        Ok(Response::new(network::reply(&self.raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let caller = caller_sha256(&request);
        let rpc = network::decode_snapshot(request.into_inner()).map_err(invalid)?;
        self.speaks_for_itself(caller, rpc.vote.leader_id.node_id)?;
        Ok(Response::new(network::reply(&self.raft.install_snapshot(rpc).await)))
    }

    async fn record_reads(
        &self,
        request: Request<pb::ForwardedReads>,
    ) -> Result<Response<pb::ForwardedReadsReply>, Status> {
        let Some(domain) = &self.domain else {
            return Err(Status::unimplemented("this node keeps no audit chain"));
        };
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            // Queued here they would only travel on again, perhaps back.
            return Err(Status::unavailable(format!(
                "this node does not lead the cluster (leader: {}); send the entries there",
                metrics
                    .current_leader
                    .map_or_else(|| "unknown".to_owned(), |leader| format!("node {leader}"))
            )));
        }
        let reads = request
            .into_inner()
            .reads
            .into_iter()
            .enumerate()
            .map(|(at, read)| read_from_pb(at, read))
            .collect::<Result<Vec<_>, _>>()?;
        domain.record_forwarded_reads(reads).await?;
        Ok(Response::new(pb::ForwardedReadsReply {}))
    }
}
