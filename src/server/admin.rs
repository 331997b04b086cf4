//! The `Admin` service for the operator. Thin: identify, convert, call the domain.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::Domain;
use crate::error::Error;
use crate::model::Role;
use crate::pb;
use crate::pki::Pki;

use super::convert;
use super::federation::Peers;
use super::identity::authorize;
use crate::wire;

pub struct AdminService {
    pub domain: Domain,
    /// Signs the certificates of new principals.
    pub pki: Arc<Pki>,
    pub peers: Arc<Peers>,
    pub limits: Arc<super::limits::Limits>,
    /// What the server presents; `renew_server_certificate` replaces it.
    pub server_certificate: Arc<super::tls::ServerCertificate>,
    pub operator_name: String,
    pub host_names: Vec<String>,
    /// This server's Raft node, when its commits go through a replicated log.
    pub cluster: Option<Arc<crate::cluster::node::Node>>,
}

impl AdminService {
    /// This server's node, for a membership change; refused without a replicated log.
    fn replicated_node(&self) -> Result<&Arc<crate::cluster::node::Node>, Status> {
        self.cluster.as_ref().ok_or_else(|| {
            Status::failed_precondition("cluster: this server has no replicated log (replicated_log = false)")
        })
    }

    fn peer_status(&self, record: &crate::domain::PeerRecord) -> pb::PeerStatus {
        let live = self.peers.live(record);
        pb::PeerStatus {
            config: Some(convert::peer_config_to_pb(record)),
            state: live.state,
            cursor: record.cursor,
            lag: live.lag,
            last_sync: (record.last_sync_ms > 0).then(|| crate::wire::timestamp_from_ms(record.last_sync_ms)),
            n_received: live.received,
            n_applied: live.applied,
            n_rejected: record.n_rejected,
            last_error: live.last_error,
            last_rejection: record.last_rejection.clone(),
            pause_reason: record.pause_reason.clone(),
            operator_id: record.operator_id.clone(),
        }
    }
}

impl AdminService {
    /// Releases (or rejects) a chunk of a member's quarantined flags.
    async fn quarantine_action(
        &self,
        request: Request<pb::QuarantineActionRequest>,
        release: bool,
    ) -> Result<Response<pb::QuarantineActionResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let member = request.into_inner().member;
        let (n_done, n_remaining) = if release {
            self.domain.quarantine_release(admin, member).await?
        } else {
            self.domain.quarantine_reject(admin, member).await?
        };
        Ok(Response::new(pb::QuarantineActionResponse { n_done, n_remaining }))
    }

    fn limits_response(
        &self,
        name: String,
        overrides: crate::model::LimitOverrides,
    ) -> Result<pb::PrincipalLimitsResponse, Status> {
        let role = self
            .domain
            .principal_role(&name)
            .ok_or_else(|| Status::from(Error::NotFound(format!("name: no principal named '{name}'"))))?;
        let effective = self.limits.effective(&name, role);
        let quarantine = self.domain.quarantine_threshold_of(&name);
        Ok(pb::PrincipalLimitsResponse {
            name,
            overrides: Some(crate::wire::limit_overrides_to_pb(&overrides)),
            effective: Some(pb::Limits {
                digests_queried_per_second: Some(effective.digests_queried_per_second),
                flags_submitted_per_second: Some(effective.flags_submitted_per_second),
                flags_submitted_per_day: Some(effective.flags_submitted_per_day),
                streams: Some(effective.streams),
                quarantine_new_flags_per_hour: quarantine,
            }),
        })
    }

    /// Signs a certificate for `name` over a client-made public key.
    fn issue(
        &self,
        name: &str,
        role: Role,
        public_key_der: &[u8],
    ) -> Result<(String, crate::model::IssuedCertificate), Status> {
        self.pki
            .issue_client_certificate(name, role, public_key_der)
            .map_err(|err| match err {
                crate::pki::PkiError::CaKeyOffline(_) => Status::failed_precondition(err.to_string()),
                err => Status::from(Error::invalid(format!(
                    "public_key_der: not a usable SubjectPublicKeyInfo ({err})"
                ))),
            })
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_principal(
        &self,
        request: Request<pb::AddPrincipalRequest>,
    ) -> Result<Response<pb::AddPrincipalResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let request = request.into_inner();
        let role = wire::role_from_pb(request.role)?;
        self.domain.check_new_principal_name(&request.name)?;
        let (certificate_pem, certificate) = self.issue(&request.name, role, &request.public_key_der)?;
        let record = self
            .domain
            .add_principal((&admin).into(), request.name, role, certificate)
            .await?;
        tracing::info!(principal = %record.name, role = %record.role, by = %admin.name, "principal added");
        Ok(Response::new(pb::AddPrincipalResponse {
            principal: Some(convert::principal_to_pb(&record)),
            certificate_pem,
            ca_certificate_pem: self.pki.ca_pem.clone(),
            operator_id: self.domain.federation().operator_id.to_vec(),
            operator_key: self.domain.operator_key().to_vec(),
        }))
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let principals = self
            .domain
            .list_principals(admin)
            .await?
            .iter()
            .map(convert::principal_view_to_pb)
            .collect();
        Ok(Response::new(pb::ListPrincipalsResponse { principals }))
    }

    async fn set_principal_status(
        &self,
        request: Request<pb::SetPrincipalStatusRequest>,
    ) -> Result<Response<pb::SetPrincipalStatusResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let request = request.into_inner();
        let status = wire::principal_status_from_pb(request.status)?;
        let (record, n_withdrawn) = self
            .domain
            .set_principal_status(admin.clone(), request.name, status, request.withdraw_flags)
            .await?;
        tracing::info!(principal = %record.name, status = %record.status, n_withdrawn, by = %admin.name, "principal status changed");
        Ok(Response::new(pb::SetPrincipalStatusResponse {
            principal: Some(convert::principal_to_pb(&record)),
            n_withdrawn,
        }))
    }

    async fn rotate_certificate(
        &self,
        request: Request<pb::RotateCertificateRequest>,
    ) -> Result<Response<pb::RotateCertificateResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let request = request.into_inner();
        let role = self
            .domain
            .registry()
            .by_name(&request.name)
            .map(|record| record.role)
            .ok_or_else(|| Status::not_found(format!("name: no principal named '{}'", request.name)))?;
        let (certificate_pem, certificate) = self.issue(&request.name, role, &request.public_key_der)?;
        let record = self
            .domain
            .rotate_certificate(admin.clone(), request.name, certificate)
            .await?;
        tracing::info!(principal = %record.name, by = %admin.name, "certificate rotated");
        Ok(Response::new(pb::RotateCertificateResponse {
            principal: Some(convert::principal_to_pb(&record)),
            certificate_pem,
            ca_certificate_pem: self.pki.ca_pem.clone(),
            operator_id: self.domain.federation().operator_id.to_vec(),
            operator_key: self.domain.operator_key().to_vec(),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let filter = convert::audit_filter_from_pb(request.into_inner())?;
        let entries = self.domain.list_audit(admin, filter).await?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries.into_iter().map(convert::audit_entry_to_pb).collect(),
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let report = self.domain.verify_audit(admin).await?;
        if let Some((sequence, problem)) = &report.broken {
            tracing::warn!(sequence, problem, "audit chain broken");
        }
        Ok(Response::new(convert::verify_report_to_pb(report)))
    }

    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let stats = self.domain.stats(admin).await?;
        let mut response = convert::stats_to_pb(stats);
        response.operator_id = hex::encode(self.domain.federation().operator_id);
        response.operator_key = hex::encode(self.domain.operator_key());
        Ok(Response::new(response))
    }

    async fn get_cluster_status(
        &self,
        request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorize(&self.domain, &request, &[Role::Admin])?;
        let Some(node) = &self.cluster else {
            return Ok(Response::new(pb::ClusterStatus::default()));
        };
        Ok(Response::new(cluster_status(node)))
    }

    async fn add_cluster_node(
        &self,
        request: Request<pb::AddClusterNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let node = self.replicated_node()?;
        let pb::AddClusterNodeRequest { id, address, principal } = request.into_inner();
        if id == 0 {
            return Err(Status::invalid_argument("id: must be a node id above 0"));
        }
        if !address.starts_with("https://") {
            return Err(Status::invalid_argument(format!(
                "address: '{address}' must be an https:// URL where the other nodes reach the node"
            )));
        }
        let record = self
            .domain
            .registry()
            .by_name(&principal)
            .filter(|record| record.role == Role::Node && record.status == crate::model::PrincipalStatus::Active)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "principal: '{principal}' is not an active principal with the node role (admin member add {principal} --role node)"
                ))
            })?;
        let member = crate::cluster::ClusterNode::new(address.clone(), record.cert_sha256);
        node.add_node(id, member).await.map_err(change_refused)?;
        self.domain
            .record_cluster_change(admin, format!("added node {id} at {address} as principal {principal}"))
            .await?;
        Ok(Response::new(cluster_status(node)))
    }

    async fn invite_cluster_node(
        &self,
        request: Request<pb::InviteClusterNodeRequest>,
    ) -> Result<Response<pb::InviteClusterNodeResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let node = self.replicated_node()?;
        let request = request.into_inner();
        // A principal is a change like any other: made where the log is led.
        if let Some(leader) = node.other_leader() {
            return Err(change_refused(crate::cluster::node::ClusterChangeError::NotLeader(
                leader,
            )));
        }
        self.domain.check_new_principal_name(&request.name)?;
        check_host_names(&request.host_names)?;
        let (certificate_pem, certificate) = self.issue(&request.name, Role::Node, &request.public_key_der)?;
        // Clients verify every node by this server's first name (their bundles'
        // `server_name`): the new node's certificate carries it beside its own.
        let mut host_names = request.host_names.clone();
        if let Some(shared) = self.host_names.first()
            && !host_names.contains(shared)
        {
            host_names.push(shared.clone());
        }
        let server_certificate_pem = self
            .pki
            .issue_server_certificate(&self.operator_name, &host_names, &request.server_public_key_der)
            .map_err(|err| match err {
                crate::pki::PkiError::CaKeyOffline(_) => Status::failed_precondition(err.to_string()),
                err => Status::invalid_argument(format!(
                    "server_public_key_der: not a usable SubjectPublicKeyInfo ({err})"
                )),
            })?;
        let record = self
            .domain
            .add_principal((&admin).into(), request.name, Role::Node, certificate)
            .await?;
        tracing::info!(principal = %record.name, hosts = ?request.host_names, by = %admin.name, "cluster node invited");
        Ok(Response::new(pb::InviteClusterNodeResponse {
            principal: Some(convert::principal_to_pb(&record)),
            certificate_pem,
            server_certificate_pem,
            ca_certificate_pem: self.pki.ca_pem.clone(),
            node_certificate_sha256: node.node_certificates(),
            operator_name: self.operator_name.clone(),
            operator_id: self.domain.federation().operator_id.to_vec(),
            operator_key: self.domain.operator_key().to_vec(),
        }))
    }

    async fn remove_cluster_node(
        &self,
        request: Request<pb::RemoveClusterNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let node = self.replicated_node()?;
        let id = request.into_inner().id;
        node.remove_node(id).await.map_err(change_refused)?;
        self.domain
            .record_cluster_change(admin, format!("removed node {id}"))
            .await?;
        Ok(Response::new(cluster_status(node)))
    }

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Response<pb::BackupResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let dir = request.into_inner().dir;
        if dir.is_empty() {
            return Err(Status::invalid_argument("dir: must name a folder on the server"));
        }
        let path = std::path::PathBuf::from(&dir);
        if !path.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "dir: '{dir}' must be an absolute path (it is on the server, whose working folder the caller does not know)"
            )));
        }
        self.domain.backup(admin, path).await?;
        tracing::info!(dir, "backup written");
        Ok(Response::new(pb::BackupResponse { dir }))
    }

    async fn configure_peer(
        &self,
        request: Request<pb::ConfigurePeerRequest>,
    ) -> Result<Response<pb::PeerStatus>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let mut record = convert::peer_from_pb(request.into_inner())?;
        if record.pulls() {
            let bundle = crate::client::Bundle::load(std::path::Path::new(&record.bundle_dir))
                .map_err(|err| Status::invalid_argument(format!("bundle_dir: {} ({err})", record.bundle_dir)))?;
            // The only origin believed from this peer: the operator that issued the bundle.
            if bundle.config.operator_id.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "bundle_dir: {} has no operator_id in client.toml; ask the peer's operator for a bundle made by this version (`admin member add NAME --role peer`)",
                    record.bundle_dir
                )));
            }
            record.operator_id = bundle.config.operator_id.clone();
            record.operator_key = bundle.config.operator_key.clone();
        }
        let saved = self.domain.configure_peer(admin.clone(), record).await?;
        self.peers.reconfigured(&saved).await?;
        tracing::info!(peer = %saved.name, endpoint = %saved.endpoint, paused = saved.paused, by = %admin.name, "peer configured");
        Ok(Response::new(self.peer_status(&saved)))
    }

    async fn list_peers(
        &self,
        request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let peers = self.domain.peers().await?;
        self.domain.record_list_peers(admin, peers.len()).await?;
        Ok(Response::new(pb::ListPeersResponse {
            peers: peers.iter().map(|peer| self.peer_status(peer)).collect(),
        }))
    }

    async fn remove_peer(
        &self,
        request: Request<pb::RemovePeerRequest>,
    ) -> Result<Response<pb::RemovePeerResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let name = request.into_inner().name;
        self.domain.remove_peer(admin, name.clone()).await?;
        self.peers.stop(&name);
        tracing::info!(peer = %name, "peer removed");
        Ok(Response::new(pb::RemovePeerResponse {}))
    }

    async fn set_principal_limits(
        &self,
        request: Request<pb::SetPrincipalLimitsRequest>,
    ) -> Result<Response<pb::PrincipalLimitsResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let request = request.into_inner();
        let changes = crate::wire::limit_overrides_from_pb(request.limits.unwrap_or_default());
        let updated = self
            .domain
            .set_limits(admin, request.name.clone(), changes, request.clear)
            .await?;
        self.limits.set_overrides(&request.name, updated);
        tracing::info!(principal = %request.name, limits = %crate::domain::describe_limits(&updated), "limits set");
        Ok(Response::new(self.limits_response(request.name, updated)?))
    }

    async fn get_principal_limits(
        &self,
        request: Request<pb::GetPrincipalLimitsRequest>,
    ) -> Result<Response<pb::PrincipalLimitsResponse>, Status> {
        authorize(&self.domain, &request, &[Role::Admin])?;
        let name = request.into_inner().name;
        let overrides = self.limits.overrides_of(&name);
        Ok(Response::new(self.limits_response(name, overrides)?))
    }

    async fn renew_server_certificate(
        &self,
        request: Request<pb::RenewServerCertificateRequest>,
    ) -> Result<Response<pb::RenewServerCertificateResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let pki = self.pki.clone();
        let (operator, hosts) = (self.operator_name.clone(), self.host_names.clone());
        let (cert_pem, key_pem) = tokio::task::spawn_blocking(move || pki.renew_server_certificate(&operator, &hosts))
            .await
            .map_err(|err| Status::internal(format!("renewal failed: {err}")))?
            .map_err(|err| match err {
                crate::pki::PkiError::CaKeyOffline(_) => Status::failed_precondition(err.to_string()),
                err => {
                    tracing::error!(%err, "server certificate renewal failed");
                    Status::internal("renewal failed: the new certificate could not be written (see the server log)")
                }
            })?;
        self.server_certificate.replace(&cert_pem, &key_pem).map_err(|err| {
            tracing::error!(%err, "the renewed server certificate cannot be presented");
            Status::internal("renewal failed: the new certificate cannot be presented (see the server log)")
        })?;
        let expires_at_ms = crate::pki::certificate_not_after(&cert_pem).map(|at| at.saturating_mul(1000));
        let fingerprint = crate::pki::pem_certificate_sha256(&cert_pem)
            .map(hex::encode)
            .unwrap_or_default();
        self.domain
            .record_admin_action(
                admin,
                crate::model::AuditOp::RenewServerCertificate,
                format!("server certificate {fingerprint} for {}", self.host_names.join(", ")),
            )
            .await?;
        tracing::info!(certificate = %fingerprint, "server certificate renewed; new connections get it");
        Ok(Response::new(pb::RenewServerCertificateResponse {
            certificate_pem: cert_pem,
            expires_at: expires_at_ms.map(crate::wire::timestamp_from_ms),
            host_names: self.host_names.clone(),
        }))
    }

    async fn list_quarantine(
        &self,
        request: Request<pb::ListQuarantineRequest>,
    ) -> Result<Response<pb::ListQuarantineResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        let request = request.into_inner();
        if !request.member.is_empty() {
            let (flags, next_page_after) = self
                .domain
                .held_flags(admin, Some(request.member), request.page_after)
                .await?;
            return Ok(Response::new(pb::ListQuarantineResponse {
                members: Vec::new(),
                flags: flags.into_iter().map(convert::held_flag_to_pb).collect(),
                next_page_after,
            }));
        }
        if !request.page_after.is_empty() {
            return Err(Error::invalid("page_after: only with member (a page of one member's held flags)").into());
        }
        let members = self.domain.quarantine_list().await?;
        Ok(Response::new(pb::ListQuarantineResponse {
            flags: Vec::new(),
            next_page_after: Vec::new(),
            members: members
                .into_iter()
                .map(|summary| pb::QuarantinedMember {
                    member: summary.member,
                    n_flags: summary.n_flags,
                    oldest: Some(crate::wire::timestamp_from_ms(summary.oldest_ms)),
                    newest: Some(crate::wire::timestamp_from_ms(summary.newest_ms)),
                })
                .collect(),
        }))
    }

    async fn release_quarantine(
        &self,
        request: Request<pb::QuarantineActionRequest>,
    ) -> Result<Response<pb::QuarantineActionResponse>, Status> {
        self.quarantine_action(request, true).await
    }

    async fn reject_quarantine(
        &self,
        request: Request<pb::QuarantineActionRequest>,
    ) -> Result<Response<pb::QuarantineActionResponse>, Status> {
        self.quarantine_action(request, false).await
    }

    async fn compact(&self, request: Request<pb::CompactRequest>) -> Result<Response<pb::CompactResponse>, Status> {
        let admin = authorize(&self.domain, &request, &[Role::Admin])?;
        self.domain.compact(admin).await?;
        Ok(Response::new(pb::CompactResponse {
            disk_bytes: self.domain.store().disk_size(),
        }))
    }
}

/// `admin cluster list`'s answer: the node's view of its cluster.
fn cluster_status(node: &crate::cluster::node::Node) -> pb::ClusterStatus {
    let view = node.view();
    pb::ClusterStatus {
        replicated: true,
        node_id: view.node_id,
        leader_id: view.leader_id.unwrap_or_default(),
        term: view.term,
        last_log_index: view.last_log_index.unwrap_or_default(),
        applied_index: view.applied_index.unwrap_or_default(),
        snapshot_index: view.snapshot_index.unwrap_or_default(),
        nodes: view
            .nodes
            .into_iter()
            .map(|node| pb::ClusterNodeStatus {
                id: node.id,
                address: node.address,
                role: node.role.to_owned(),
                matched_index: node.matched_index,
                lag: node.lag,
            })
            .collect(),
    }
}

/// A new node's host names: 1 to 16, each a DNS name or an IP address.
fn check_host_names(host_names: &[String]) -> Result<(), Status> {
    if host_names.is_empty() || host_names.len() > 16 {
        return Err(Status::invalid_argument(format!(
            "host_names: {} given, expected 1 to 16",
            host_names.len()
        )));
    }
    for (at, name) in host_names.iter().enumerate() {
        let is_dns_name = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !is_dns_name && name.parse::<std::net::IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "host_names[{at}]: '{}' is neither a DNS name nor an IP address",
                name.escape_default()
            )));
        }
    }
    Ok(())
}

fn change_refused(err: crate::cluster::node::ClusterChangeError) -> Status {
    use crate::cluster::node::ClusterChangeError;
    match err {
        ClusterChangeError::NotLeader(_) => Status::failed_precondition(format!("cluster: {err}")),
        ClusterChangeError::Exists(_) => Status::already_exists(format!("id: {err}")),
        ClusterChangeError::Unknown(_) => Status::not_found(format!("id: {err}")),
        ClusterChangeError::Failed(_) => Status::unavailable(format!("cluster: {err}")),
    }
}
