//! Client bundles: what a member, admin or peer needs to call a flagshare server over
//! mutual TLS. A bundle is a folder:
//!
//! - `cert.pem`: the principal's certificate, signed by the operator CA
//! - `key.pem`: its private key (mode 0600), made on the machine that wrote the bundle
//! - `ca.pem`: the operator CA, to authenticate the server
//! - `client.toml`: principal name, role, endpoint and the server's TLS name

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::{PkiError, write_file};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// The principal this bundle authenticates as.
    pub name: String,
    /// Its role, for display; the server decides from its own registry.
    pub role: String,
    /// Where the server listens, e.g. `https://localhost:50051`.
    pub endpoint: String,
    /// Further endpoints of the same operator (the other nodes of a replicated one), tried
    /// in order after `endpoint` when it cannot be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The name the server certificate must carry.
    pub server_name: String,
    /// The issuing operator's federation id (16 hex characters). A peer bundle hands it to
    /// the operator that pulls with it: only events of this origin are believed from the peer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator_id: String,
    /// The issuing operator's Ed25519 public key (64 hex characters): verifies its events
    /// when other peers pass them on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator_key: String,
}

#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub config: BundleConfig,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("bundle {path}: client.toml is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("bundle folder {0} already holds a bundle")]
    Exists(PathBuf),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("endpoint '{endpoint}': {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("no endpoint answered: {0}")]
    Unreachable(String),
}

fn read(path: &Path) -> Result<String, BundleError> {
    std::fs::read_to_string(path).map_err(|source| BundleError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let config_path = dir.join("client.toml");
        let config: BundleConfig = toml::from_str(&read(&config_path)?).map_err(|err| BundleError::Malformed {
            path: dir.to_owned(),
            reason: err.message().to_owned(),
        })?;
        Ok(Bundle {
            dir: dir.to_owned(),
            config,
            cert_pem: read(&dir.join("cert.pem"))?,
            key_pem: read(&dir.join("key.pem"))?,
            ca_pem: read(&dir.join("ca.pem"))?,
        })
    }

    /// Writes the bundle's files into `dir` (created if needed; must not hold a bundle).
    pub fn write(&self, dir: &Path) -> Result<(), BundleError> {
        if dir.join("client.toml").exists() {
            return Err(BundleError::Exists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_file(&dir.join("key.pem"), &self.key_pem, true)?;
        write_file(&dir.join("cert.pem"), &self.cert_pem, false)?;
        write_file(&dir.join("ca.pem"), &self.ca_pem, false)?;
        let config = toml::to_string(&self.config).map_err(|err| BundleError::Malformed {
            path: dir.to_owned(),
            reason: err.to_string(),
        })?;
        write_file(&dir.join("client.toml"), &config, false)?;
        Ok(())
    }

    /// Every endpoint the bundle names, `endpoint` first.
    pub fn endpoints(&self) -> Vec<String> {
        std::iter::once(self.config.endpoint.clone())
            .chain(self.config.endpoints.iter().cloned())
            .collect()
    }

    /// Opens a mutual-TLS channel to the first of the endpoints that answers: those of
    /// `endpoints` (a comma-separated list) when given, else the bundle's own, in order.
    /// Fails naming each endpoint tried and why.
    pub async fn connect(&self, endpoints: Option<&str>) -> Result<Channel, BundleError> {
        let listed = match endpoints {
            Some(list) => split_endpoints(list),
            None => self.endpoints(),
        };
        let mut refusals = Vec::new();
        for endpoint in &listed {
            match self.connect_one(endpoint).await {
                Ok(channel) => return Ok(channel),
                // A malformed endpoint is the caller's mistake, not an outage: said at once.
                Err(err @ BundleError::Endpoint { .. }) => return Err(err),
                Err(err) => refusals.push(err),
            }
        }
        match refusals.len() {
            0 => Err(BundleError::Endpoint {
                endpoint: endpoints.unwrap_or_default().to_owned(),
                reason: "no endpoint given".to_owned(),
            }),
            1 => Err(refusals.remove(0)),
            _ => Err(BundleError::Unreachable(
                refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            )),
        }
    }

    async fn connect_one(&self, endpoint: &str) -> Result<Channel, BundleError> {
        let endpoint = endpoint.to_owned();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.config.server_name.clone());
        let endpoint_error = |reason: String| BundleError::Endpoint {
            endpoint: endpoint.clone(),
            reason,
        };
        let configured = Endpoint::from_shared(endpoint.clone())
            .map_err(|err| endpoint_error(err.to_string()))?
            .tls_config(tls)
            .map_err(|err| endpoint_error(err.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(10))
            .tcp_nodelay(true);
        configured.connect().await.map_err(|err| BundleError::Connect {
            endpoint,
            reason: error_chain(&err),
        })
    }
}

/// The endpoints of a comma-separated list, trimmed, empty items left out.
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An error and its sources on one line: tonic's transport errors hide the cause.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Registers a new principal through the `Admin` service and returns its bundle (not yet
/// written) for `endpoint` (one, or a comma-separated list of the operator's nodes). The
/// key pair is made here, so the private key never travels.
pub async fn enroll(
    admin: &mut crate::pb::admin_client::AdminClient<Channel>,
    name: &str,
    role: crate::model::Role,
    endpoint: &str,
    server_name: &str,
) -> Result<Bundle, EnrollError> {
    use rcgen::PublicKeyData as _;
    let key = crate::pki::generate_client_key()?;
    let response = admin
        .add_principal(crate::pb::AddPrincipalRequest {
            name: name.to_owned(),
            role: crate::wire::role_to_pb(role) as i32,
            public_key_der: key.subject_public_key_info(),
        })
        .await?
        .into_inner();
    let bundle = issued_bundle(
        response.principal,
        response.certificate_pem,
        response.ca_certificate_pem,
        &key,
        endpoint,
        server_name,
        (&response.operator_id, &response.operator_key),
    )?;
    Ok(bundle)
}

/// What a new node of a replicated operator needs to join (`admin cluster invite`, then
/// `init --join` where the node runs): its client bundle (a principal with the `node`
/// role), a server certificate for its host names and the cluster's shared name, and the
/// certificates of the nodes it admits until it holds the cluster's state.
pub struct Invitation {
    pub credentials: Bundle,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub details: InvitationDetails,
}

/// `invitation.toml` in an invitation folder.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitationDetails {
    pub operator_name: String,
    /// The node's own host names first, then the name every node is verified by.
    pub host_names: Vec<String>,
    /// SHA-256 (hex) of each cluster node's client certificate when it was invited.
    pub trusted_nodes: Vec<String>,
}

impl Invitation {
    /// Writes the folder `init --join` reads: `invitation.toml`, `server.pem`, `server.key`
    /// (0600) and the client bundle in `credentials/`.
    pub fn write(&self, dir: &Path) -> Result<(), BundleError> {
        if dir.join("invitation.toml").exists() {
            return Err(BundleError::Exists(dir.to_owned()));
        }
        self.credentials.write(&dir.join("credentials"))?;
        write_file(&dir.join("server.key"), &self.server_key_pem, true)?;
        write_file(&dir.join("server.pem"), &self.server_cert_pem, false)?;
        let details = toml::to_string(&self.details).map_err(|err| BundleError::Malformed {
            path: dir.to_owned(),
            reason: err.to_string(),
        })?;
        write_file(&dir.join("invitation.toml"), &details, false)?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Invitation, BundleError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|err| BundleError::Malformed {
                path: dir.join(name),
                reason: err.to_string(),
            })
        };
        let details = toml::from_str(&read("invitation.toml")?).map_err(|err| BundleError::Malformed {
            path: dir.join("invitation.toml"),
            reason: err.message().to_owned(),
        })?;
        Ok(Invitation {
            credentials: Bundle::load(&dir.join("credentials"))?,
            server_cert_pem: read("server.pem")?,
            server_key_pem: read("server.key")?,
            details,
        })
    }
}

/// Invites node principal `name`, reached at `host_names`, into the cluster of the admin
/// client's server (its leader). Both key pairs are made here.
pub async fn invite(
    admin: &mut crate::pb::admin_client::AdminClient<Channel>,
    name: &str,
    host_names: &[String],
    endpoint: &str,
    server_name: &str,
) -> Result<Invitation, EnrollError> {
    use rcgen::PublicKeyData as _;
    let key = crate::pki::generate_client_key()?;
    let server_key = crate::pki::generate_client_key()?;
    let response = admin
        .invite_cluster_node(crate::pb::InviteClusterNodeRequest {
            name: name.to_owned(),
            host_names: host_names.to_vec(),
            public_key_der: key.subject_public_key_info(),
            server_public_key_der: server_key.subject_public_key_info(),
        })
        .await?
        .into_inner();
    let credentials = issued_bundle(
        response.principal,
        response.certificate_pem,
        response.ca_certificate_pem,
        &key,
        endpoint,
        server_name,
        (&response.operator_id, &response.operator_key),
    )?;
    let mut all_names = host_names.to_vec();
    if !all_names.iter().any(|known| known == server_name) {
        all_names.push(server_name.to_owned());
    }
    Ok(Invitation {
        credentials,
        server_cert_pem: response.server_certificate_pem,
        server_key_pem: server_key.serialize_pem(),
        details: InvitationDetails {
            operator_name: response.operator_name,
            host_names: all_names,
            trusted_nodes: response.node_certificate_sha256,
        },
    })
}

/// Replaces the certificate of principal `name` with one over a key pair made here; the
/// returned bundle (for `endpoint`) is the only one that works afterwards.
pub async fn rotate(
    admin: &mut crate::pb::admin_client::AdminClient<Channel>,
    name: &str,
    endpoint: &str,
    server_name: &str,
) -> Result<Bundle, EnrollError> {
    use rcgen::PublicKeyData as _;
    let key = crate::pki::generate_client_key()?;
    let response = admin
        .rotate_certificate(crate::pb::RotateCertificateRequest {
            name: name.to_owned(),
            public_key_der: key.subject_public_key_info(),
        })
        .await?
        .into_inner();
    let bundle = issued_bundle(
        response.principal,
        response.certificate_pem,
        response.ca_certificate_pem,
        &key,
        endpoint,
        server_name,
        (&response.operator_id, &response.operator_key),
    )?;
    Ok(bundle)
}

/// The bundle of a certificate the server issued over `key`.
fn issued_bundle(
    principal: Option<crate::pb::Principal>,
    cert_pem: String,
    ca_pem: String,
    key: &rcgen::KeyPair,
    endpoint: &str,
    server_name: &str,
    (operator_id, operator_key): (&[u8], &[u8]),
) -> Result<Bundle, EnrollError> {
    let principal = principal.ok_or_else(|| tonic::Status::internal("server sent no principal"))?;
    let role = crate::wire::role_of(principal.role).map_or("unknown", |role| role.as_str());
    // `endpoint` may list several nodes: the first is the bundle's endpoint, the rest follow.
    let mut listed = split_endpoints(endpoint);
    let first_endpoint = if listed.is_empty() {
        endpoint.to_owned()
    } else {
        listed.remove(0)
    };
    Ok(Bundle {
        dir: PathBuf::new(),
        config: BundleConfig {
            name: principal.name,
            role: role.to_owned(),
            endpoint: first_endpoint,
            endpoints: listed,
            server_name: server_name.to_owned(),
            operator_id: hex::encode(operator_id),
            operator_key: hex::encode(operator_key),
        },
        cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("server refused: {} ({:?})", .0.message(), .0.code())]
    Refused(#[from] tonic::Status),
    #[error(transparent)]
    Pki(#[from] PkiError),
}
