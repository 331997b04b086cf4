//! The `flagshare` command line: the server (`serve`, `init`), the member-side tools
//! (`keygen`, `hash`, `submit`, `query`, `retract`) and the operator's `admin` commands.
//! Every command except `init` and `serve` is a gRPC client using a bundle's mutual TLS.

mod admin;
mod connect;
mod input;
mod member;
mod mirror;
mod offline;
pub mod setup;

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_DATA_DIR};

#[derive(Parser)]
#[command(
    name = "flagshare",
    version,
    about = "Share keyed digests of flagged accounts between platforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. With no flags: data in ./flagshare-data, a development PKI made on first start.
    Serve(ServeArgs),
    /// Create the operator's PKI and first admin principal in a data folder.
    Init(InitArgs),
    /// Write a new consortium key file (mode 0600) for member platforms to share.
    Keygen(member::KeygenArgs),
    /// Normalise identifiers and print their digests (nothing is sent anywhere).
    Hash(member::HashArgs),
    /// Hash identifiers locally and submit them as flags.
    Submit(member::SubmitArgs),
    /// Hash identifiers locally and ask which were flagged.
    Query(member::QueryArgs),
    /// Withdraw the caller's own flags on identifiers (after an appeal, say).
    Retract(member::RetractArgs),
    /// Keep a local copy of every flagged digest current, for `query --mirror`.
    Mirror(mirror::MirrorArgs),
    /// Dispute another member's flags on an identifier (it is counted in matches).
    Dispute(member::DisputeArgs),
    /// List the caller's flags held back by the flood quarantine (they match for no one yet).
    Held(member::HeldArgs),
    /// Operator commands against a running server (admin role).
    Admin(admin::AdminArgs),
    /// Replace the database with a backup made by `admin backup` (the server must be stopped).
    OfflineRestore(offline::RestoreArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Data folder (PKI, database, client bundles).
    #[arg(long, env = "FLAGSHARE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Address to listen on; overrides the data folder's flagshare.toml.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address of the Prometheus endpoint (`metrics_listen`); an empty value turns it off.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// Data folder to create.
    #[arg(long, env = "FLAGSHARE_DATA", default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// The operator's name, written into the CA certificate.
    #[arg(long, default_value = "flagshare-dev")]
    pub operator: String,
    /// Host names (or IP addresses) clients reach the server by; repeat for several.
    #[arg(long = "host", default_values = ["localhost", "127.0.0.1", "::1"])]
    pub host_names: Vec<String>,
    /// Address the server will listen on.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Make the first node of a replicated operator: `replicated_log = true`, and a
    /// principal with the `node` role (`node-1`) whose credentials it calls the other
    /// nodes with; add them with `admin cluster invite` and `add-node`.
    #[arg(long, conflicts_with = "join")]
    pub cluster: bool,
    /// Make a node of an existing replicated operator instead, from the folder `admin
    /// cluster invite` wrote: no CA key, no database; it receives the cluster's state
    /// once the leader adds it (`admin cluster add-node`).
    #[arg(long, value_name = "INVITATION", requires = "node_id", conflicts_with_all = ["operator", "host_names"])]
    pub join: Option<PathBuf>,
    /// With --join: the node's `node_id`, not used by any node of the cluster.
    #[arg(long, requires = "join")]
    pub node_id: Option<u64>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // The server's log format comes from its data folder's flagshare.toml (`log_format`);
    // a malformed file is reported by `serve` itself a moment later.
    let json_logs = match &cli.command {
        Command::Serve(args) => Config::load(&args.data).is_ok_and(|config| config.log_format == "json"),
        _ => false,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        logs.json().with_current_span(false).init();
    } else {
        logs.init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Init(args) => setup::init_command(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Keygen(args) => member::keygen(&args).map(|()| ExitCode::SUCCESS),
            Command::Hash(args) => member::hash(&args),
            Command::Submit(args) => member::submit(&args).await,
            Command::Query(args) => member::query(&args).await,
            Command::Retract(args) => member::retract(&args).await,
            Command::Mirror(args) => mirror::run(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Dispute(args) => member::dispute(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Held(args) => member::held(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Admin(args) => admin::run(&args).await.map(|()| ExitCode::SUCCESS),
            Command::OfflineRestore(args) => offline::restore(&args).map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A wire timestamp as the CLI prints times (RFC 3339, seconds).
fn timestamp_text(ts: &prost_types::Timestamp) -> String {
    crate::util::format_ms(
        ts.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(ts.nanos / 1_000_000)),
    )
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.data)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(metrics_listen) = args.metrics_listen {
        config.metrics_listen = metrics_listen;
    }
    let metrics_address = config.metrics_address()?;
    if !crate::pki::Pki::exists(&config.data_dir) {
        let report = setup::initialize(&config).await?;
        eprintln!("{}", report.describe(&config));
    } else {
        eprintln!(
            "flagshare: data in {}; admin bundle in {}",
            config.data_dir.display(),
            config.clients_dir().join("admin").display()
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    eprintln!("flagshare: listening on {} (mutual TLS)", listener.local_addr()?);
    let metrics_listener = match metrics_address {
        Some(address) => {
            let bound = tokio::net::TcpListener::bind(address).await.with_context(|| {
                format!("cannot listen for metrics on {address} (metrics_listen; empty turns it off)")
            })?;
            eprintln!("flagshare: metrics on http://{}/metrics", bound.local_addr()?);
            Some(bound)
        }
        None => None,
    };
    crate::server::run(config, listener, metrics_listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested");
}
