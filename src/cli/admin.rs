//! `flagshare admin ...`: operator commands, sent to the running server over mutual TLS
//! with an admin bundle.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::client::{Bundle, enroll};
use crate::config::DEFAULT_DATA_DIR;
use crate::model::{PrincipalStatus, Role};
use crate::pb;
use crate::pb::admin_client::AdminClient;

#[derive(Args)]
pub struct AdminArgs {
    /// Admin client bundle (default: the one `init` wrote under ./flagshare-data/clients/admin).
    #[arg(long, env = "FLAGSHARE_BUNDLE", global = true)]
    bundle: Option<PathBuf>,
    /// Server endpoint, e.g. https://localhost:50051 (default: the bundle's).
    #[arg(long, env = "FLAGSHARE_ENDPOINT", global = true)]
    endpoint: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Member (principal) lifecycle.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Same as `member add`.
    #[command(hide = true)]
    AddMember(AddArgs),
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Register a principal and write its certificate bundle (the private key is made here).
    Add(AddArgs),
    /// List principals.
    List,
    /// Refuse every further call of a principal, also on open connections.
    Suspend { name: String },
    /// Let a suspended principal call again.
    Reinstate { name: String },
}

#[derive(Args)]
struct AddArgs {
    /// Principal name: 1 to 64 of a-z, 0-9, '-', '_' and '.'.
    name: String,
    #[arg(long, default_value = "member")]
    role: Role,
    /// Folder to write the bundle to (cert.pem, key.pem, ca.pem, client.toml).
    #[arg(long)]
    out: PathBuf,
}

pub async fn run(args: &AdminArgs) -> anyhow::Result<()> {
    let bundle_dir = args
        .bundle
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR).join("clients").join("admin"));
    let bundle = Bundle::load(&bundle_dir)?;
    let channel = bundle.connect(args.endpoint.as_deref()).await?;
    let mut client = AdminClient::new(channel);
    match &args.command {
        AdminCommand::Member(MemberCommand::Add(add)) | AdminCommand::AddMember(add) => {
            add_member(&mut client, &bundle, args.endpoint.as_deref(), add).await
        }
        AdminCommand::Member(MemberCommand::List) => list_members(&mut client).await,
        AdminCommand::Member(MemberCommand::Suspend { name }) => {
            set_status(&mut client, name, PrincipalStatus::Suspended).await
        }
        AdminCommand::Member(MemberCommand::Reinstate { name }) => {
            set_status(&mut client, name, PrincipalStatus::Active).await
        }
    }
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("server refused: {} ({:?})", status.message(), status.code())
}

async fn add_member(
    client: &mut AdminClient<tonic::transport::Channel>,
    admin_bundle: &Bundle,
    endpoint: Option<&str>,
    args: &AddArgs,
) -> anyhow::Result<()> {
    if args.out.join("client.toml").exists() {
        anyhow::bail!("{} already holds a bundle", args.out.display());
    }
    let endpoint = endpoint.unwrap_or(&admin_bundle.config.endpoint);
    let bundle = enroll(
        client,
        &args.name,
        args.role,
        endpoint,
        &admin_bundle.config.server_name,
    )
    .await?;
    bundle.write(&args.out)?;
    println!(
        "added {} '{}' (certificate sha256 {}); bundle written to {}",
        args.role,
        bundle.config.name,
        hex::encode(crate::pki::pem_certificate_sha256(&bundle.cert_pem)?),
        args.out.display()
    );
    Ok(())
}

fn role_name(value: i32) -> &'static str {
    Role::from_u8(value as u8).map_or("unknown", Role::as_str)
}

fn status_name(value: i32) -> &'static str {
    PrincipalStatus::from_u8(value as u8).map_or("unknown", PrincipalStatus::as_str)
}

async fn list_members(client: &mut AdminClient<tonic::transport::Channel>) -> anyhow::Result<()> {
    let response = client
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{:<24} {:<8} {:<10} {:<22} CERTIFICATE SHA-256",
        "NAME", "ROLE", "STATUS", "CREATED"
    );
    for principal in response.principals {
        let created = principal
            .created_at
            .map(|ts| crate::util::format_ms(ts.seconds * 1000))
            .unwrap_or_default();
        println!(
            "{:<24} {:<8} {:<10} {:<22} {}",
            principal.name,
            role_name(principal.role),
            status_name(principal.status),
            created,
            principal.certificate_sha256
        );
    }
    Ok(())
}

async fn set_status(
    client: &mut AdminClient<tonic::transport::Channel>,
    name: &str,
    status: PrincipalStatus,
) -> anyhow::Result<()> {
    let response = client
        .set_principal_status(pb::SetPrincipalStatusRequest {
            name: name.to_owned(),
            status: status as i32,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let principal = response.principal.context("server sent no principal")?;
    println!("{} is now {}", principal.name, status_name(principal.status));
    Ok(())
}
