//! `flagshare init`: the operator's PKI, the database and a first admin principal.

use std::path::PathBuf;

use anyhow::Context as _;
use rcgen::PublicKeyData as _;

use crate::client::{Bundle, BundleConfig};
use crate::config::Config;
use crate::domain::{Actor, Domain};
use crate::model::Role;
use crate::pki::{Pki, generate_client_key};
use crate::store::Store;

use super::InitArgs;

pub struct InitReport {
    pub admin_bundle: PathBuf,
}

impl InitReport {
    pub fn describe(&self, config: &Config) -> String {
        format!(
            "flagshare: created a PKI in {pki} and the first admin principal.\n\
             flagshare: {pki}/ca.key signs every certificate: keep it offline (move it to offline storage; \
             the server runs without it, and only `admin member add`, `rotate-cert` and `server-cert renew` need it back).\n\
             flagshare: the CA certificate lives 10 years; the server's and every client's 2 years \
             (renew them with `admin server-cert renew` and `admin member rotate-cert NAME`; the server warns 30 days ahead).\n\
             flagshare: admin client bundle: {admin}\n\
             flagshare: add members with `flagshare admin --bundle {admin} member add NAME --out DIR`",
            pki = Pki::dir(&config.data_dir).display(),
            admin = self.admin_bundle.display(),
        )
    }
}

pub async fn init_command(args: &InitArgs) -> anyhow::Result<()> {
    if let (Some(invitation), Some(node_id)) = (&args.join, args.node_id) {
        let config = join(&args.data, invitation, node_id, args.listen)?;
        println!(
            "flagshare: a node of operator '{}' made in {}: node {node_id}, reached at {}.\n\
             flagshare: start it with `flagshare serve --data {}`; it waits until the leader adds it \
             (`flagshare admin cluster add-node --id {node_id} --address https://{}:{} --principal NAME`), \
             then receives the cluster's state and serves.",
            config.operator_name,
            config.data_dir.display(),
            config.host_names.join(", "),
            config.data_dir.display(),
            config.server_name(),
            config.listen.port(),
        );
        return Ok(());
    }
    let mut config = Config::load(&args.data)?;
    config.operator_name = args.operator.clone();
    config.host_names = args.host_names.clone();
    config.listen = args.listen;
    if args.cluster {
        config.replicated_log = true;
        config.node_id = 1;
        config.cluster_credentials = NODE_CREDENTIALS.to_owned();
    }
    let report = initialize(&config).await?;
    std::fs::write(
        config.data_dir.join("flagshare.toml"),
        toml::to_string(&config).context("serialising the configuration")?,
    )?;
    println!("{}", report.describe(&config));
    Ok(())
}

/// The data folder of a new node from an invitation (`admin cluster invite`): the CA
/// certificate (never its key), the node's server certificate, its credentials and a
/// `flagshare.toml` for a replicated log; no database (the leader's snapshot is it).
pub fn join(
    data_dir: &std::path::Path,
    invitation_dir: &std::path::Path,
    node_id: u64,
    listen: std::net::SocketAddr,
) -> anyhow::Result<Config> {
    anyhow::ensure!(node_id > 0, "--node-id: must be above 0");
    let invitation = crate::client::Invitation::load(invitation_dir)?;
    anyhow::ensure!(
        !invitation.details.trusted_nodes.is_empty(),
        "{}: the invitation names no node to trust; invite again from a node of a replicated operator",
        invitation_dir.display()
    );
    if Pki::exists(data_dir) {
        anyhow::bail!("{} already holds a PKI: join into a new folder", data_dir.display());
    }
    crate::util::create_private_dir(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let pki = Pki::dir(data_dir);
    crate::util::create_private_dir(&pki).with_context(|| format!("creating {}", pki.display()))?;
    crate::pki::write_file(&pki.join("server.key"), &invitation.server_key_pem, true)?;
    crate::pki::write_file(&pki.join("server.pem"), &invitation.server_cert_pem, false)?;
    // Written last: its presence marks a complete PKI.
    crate::pki::write_file(&pki.join("ca.pem"), &invitation.credentials.ca_pem, false)?;
    let credentials = NODE_CREDENTIALS;
    invitation.credentials.write(&data_dir.join(credentials))?;
    let config = Config {
        data_dir: data_dir.to_owned(),
        operator_name: invitation.details.operator_name,
        host_names: invitation.details.host_names,
        listen,
        replicated_log: true,
        node_id,
        cluster_credentials: credentials.to_owned(),
        join_trusted_nodes: invitation.details.trusted_nodes,
        ..Config::default()
    };
    std::fs::write(
        data_dir.join("flagshare.toml"),
        toml::to_string(&config).context("serialising the configuration")?,
    )?;
    Ok(config)
}

/// Registers principal `name` as `init` does (the system its actor): its certificate's
/// PEM and its key pair, made here.
async fn register(pki: &Pki, domain: &Domain, name: &str, role: Role) -> anyhow::Result<(String, rcgen::KeyPair)> {
    let key = generate_client_key()?;
    let (cert_pem, certificate) = pki.issue_client_certificate(name, role, &key.subject_public_key_info())?;
    domain
        .add_principal(Actor::system(), name.to_owned(), role, certificate)
        .await?;
    Ok((cert_pem, key))
}

/// Where `init --cluster` and `init --join` write the node's own credentials.
const NODE_CREDENTIALS: &str = "node-credentials";

/// Creates the PKI and the database of `config`, registers the principal `admin` and
/// writes its bundle under `<data>/clients/admin`; with `replicated_log` and
/// `cluster_credentials` set, also the node principal `node-1` and its bundle there.
/// Refuses if a PKI exists.
pub async fn initialize(config: &Config) -> anyhow::Result<InitReport> {
    crate::util::create_private_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let pki = Pki::create(&config.data_dir, &config.operator_name, &config.host_names)?;
    let store = Store::open(&config.db_dir(), &config.store_options())?;
    let domain = Domain::open(store, config.policy().map_err(anyhow::Error::msg)?)?;

    let (cert_pem, admin_key) = register(&pki, &domain, "admin", Role::Admin).await?;
    let admin_bundle = config.clients_dir().join("admin");
    // Clients reach the server by its certificate's first host name; for a development
    // server that is "localhost", which is dialled as the loopback address it listens on.
    let endpoint = if config.server_name() == "localhost" {
        let ip = match config.listen.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        format!("https://{}", std::net::SocketAddr::new(ip, config.listen.port()))
    } else {
        format!("https://{}:{}", config.server_name(), config.listen.port())
    };
    Bundle {
        dir: admin_bundle.clone(),
        config: BundleConfig {
            name: "admin".to_owned(),
            role: Role::Admin.to_string(),
            endpoint,
            endpoints: Vec::new(),
            server_name: config.server_name().to_owned(),
            operator_id: hex::encode(domain.federation().operator_id),
            operator_key: hex::encode(domain.operator_key()),
        },
        cert_pem,
        key_pem: admin_key.serialize_pem(),
        ca_pem: pki.ca_pem.clone(),
    }
    .write(&admin_bundle)?;
    if let Some(dir) = config.cluster_credentials_dir().filter(|_| config.replicated_log) {
        let (cert_pem, node_key) = register(&pki, &domain, "node-1", Role::Node).await?;
        let admin = Bundle::load(&admin_bundle)?;
        Bundle {
            dir: dir.clone(),
            config: BundleConfig {
                name: "node-1".to_owned(),
                role: Role::Node.to_string(),
                ..admin.config
            },
            cert_pem,
            key_pem: node_key.serialize_pem(),
            ca_pem: pki.ca_pem.clone(),
        }
        .write(&dir)?;
    }
    Ok(InitReport { admin_bundle })
}
