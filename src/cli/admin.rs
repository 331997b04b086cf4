//! `flagshare admin ...`: operator commands, sent to the running server over mutual TLS
//! with an admin bundle.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::timestamp_text;
use crate::client::{Bundle, enroll, rotate};
use crate::model::{AuditOp, PrincipalStatus, Role};
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::wire::{
    category_of, category_to_pb, principal_status_of, principal_status_to_pb, role_of, timestamp_from_ms,
};
use tonic::transport::Channel;

use super::connect::{ConnectArgs, status_error};

#[derive(Args)]
pub struct AdminArgs {
    /// Admin client bundle (default: the one `init` wrote under ./flagshare-data/clients/admin)
    /// and the server endpoint (default: the bundle's).
    #[command(flatten)]
    connect: ConnectArgs,
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
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Digests, flags by kind and category, principals, disk use, sequences, purge counts.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Federation peers: other operators' servers this one pulls from and sends to.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Compact the whole database now, so retracted and purged flags leave the data files.
    Compact,
    /// The server's own certificate.
    #[command(subcommand)]
    ServerCert(ServerCertCommand),
    /// New flags held back by the flood quarantine.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Write a consistent copy of the database to DIR on the server's machine, while it serves.
    Backup {
        /// Absolute path on the server's file system; must not exist.
        dir: PathBuf,
    },
    /// The replicated cluster this server is a node of (`replicated_log = true`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Each node's role, and on the leader how far each node's log is behind.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a node (on the leader): it receives the log until it has caught up, then votes.
    AddNode {
        /// The new node's `node_id`.
        #[arg(long)]
        id: u64,
        /// Where the other nodes reach it, e.g. https://node-2.example:50051.
        #[arg(long)]
        address: String,
        /// The principal with the node role it calls with (`member add NAME --role node`).
        #[arg(long)]
        principal: String,
    },
    /// Invite a new node (on the leader): its node principal, a server certificate for its
    /// host names, and what it must trust, written to a folder for `flagshare init --join`.
    Invite {
        /// The node's principal, e.g. node-4.
        #[arg(long)]
        name: String,
        /// A host name (or IP address) the other nodes and clients reach it by; repeat for several.
        #[arg(long = "host", required = true)]
        host_names: Vec<String>,
        /// Folder to write the invitation to; copy it to the new node's machine.
        #[arg(long)]
        out: PathBuf,
    },
    /// Take a node out (on the leader; not the leader itself).
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Register a principal and write its certificate bundle (the private key is made here).
    Add(AddArgs),
    /// List principals with their activity.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Refuse every further call of a principal, also on open connections.
    Suspend(StatusArgs),
    /// Let a suspended principal call again.
    Reinstate { name: String },
    /// Off-board a principal for good (its name stays reserved).
    Remove(StatusArgs),
    /// Issue a new certificate bundle; the old certificate is refused from the next call on.
    RotateCert {
        name: String,
        /// Folder to write the new bundle to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a principal's limits, or set some over its role's defaults (flagshare.toml).
    Limits(LimitsArgs),
}

#[derive(Args)]
struct LimitsArgs {
    name: String,
    /// Digests it may look up per second.
    #[arg(long)]
    digests_queried_per_second: Option<u64>,
    /// Flags it may submit per second.
    #[arg(long)]
    flags_submitted_per_second: Option<u64>,
    /// Flags it may submit per day.
    #[arg(long)]
    flags_submitted_per_day: Option<u64>,
    /// Streams it may hold open at once.
    #[arg(long)]
    streams: Option<u32>,
    /// New flags per hour before the flood quarantine holds the rest; 0 exempts it (an
    /// operator's own migration, say). Audited like every limit.
    #[arg(long)]
    quarantine_new_flags_per_hour: Option<u64>,
    /// Drop its overrides first (back to the role's defaults).
    #[arg(long)]
    clear: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Members with quarantined flags: how many, since when; with a member's name, its
    /// held flags one by one.
    List {
        member: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Let a member's quarantined flags go live (they match and federate from now).
    Release { member: String },
    /// Delete a member's quarantined flags; they never matched.
    Reject { member: String },
}

#[derive(Subcommand)]
enum ServerCertCommand {
    /// Issue a new server certificate (2 years) for the server's host names and present it
    /// to new connections at once; needs the CA key back in the data folder.
    Renew,
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Add a peer, or change its settings (its cursor is kept).
    Add(PeerArgs),
    /// Each peer's state, cursor, lag, last successful sync and event counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop pulling from and sending to a peer; the peer's principal is not touched.
    Remove { name: String },
    /// Stop pulling from a peer until `resume`.
    Pause { name: String },
    /// Pull from a paused peer again, from where it stopped.
    Resume { name: String },
}

#[derive(Args)]
struct PeerArgs {
    /// The peer's name; also the name of the `peer` principal it pulls from us with.
    name: String,
    /// The peer's server, e.g. https://flagshare.other.example:50051 (a replicated peer's
    /// nodes as a comma-separated list, tried in order). Omit for a peer that only pulls
    /// from us.
    #[arg(long, requires = "bundle")]
    endpoint: Option<String>,
    /// Client bundle the peer's operator issued to us (`member add --role peer` on their
    /// side), as an absolute path on this server's machine.
    #[arg(long, requires = "endpoint")]
    bundle: Option<PathBuf>,
    /// Categories sent to the peer (comma-separated); default: all.
    #[arg(long, value_delimiter = ',')]
    categories: Vec<crate::model::Category>,
    /// Pass on flags received from other operators to this peer.
    #[arg(long)]
    pass_on: bool,
    /// Send member names to this peer instead of stable pseudonyms.
    #[arg(long)]
    reveal_names: bool,
    /// For an operator this server does not pull from: its id (16 hex, from its `admin
    /// stats`), so that its flags passed on by other peers are believed when signed...
    #[arg(long, requires = "operator_key", conflicts_with = "endpoint")]
    operator_id: Option<String>,
    /// ...with this key (64 hex, from its `admin stats`).
    #[arg(long, requires = "operator_id")]
    operator_key: Option<String>,
}

#[derive(Args)]
struct StatusArgs {
    name: String,
    /// Also withdraw all the principal's flags (retracted with reason `withdrawn`). Without
    /// it they keep matching until they expire.
    #[arg(long)]
    withdraw_flags: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Audit entries, oldest first (the newest `--limit` of those that match).
    List(AuditListArgs),
    /// Walk the hash chain and report the first broken link.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct AuditListArgs {
    /// Only calls by this principal (`system` for the server's own tasks).
    #[arg(long)]
    member: Option<String>,
    /// Only this operation (submit, query, retract, dispute, add_principal, ...).
    #[arg(long)]
    op: Option<AuditOp>,
    /// From this time: RFC 3339 (2026-11-01T00:00:00Z) or an age (30d, 12h).
    #[arg(long)]
    since: Option<String>,
    /// Before this time: RFC 3339 or an age.
    #[arg(long)]
    until: Option<String>,
    /// Only entries naming this digest (64 hex characters), e.g. queries that matched it.
    #[arg(long)]
    digest: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
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

/// Whether the command changes the operator's replicated state, so that it goes to the
/// leader of a replicated operator. The rest are answered by the node asked (its own
/// view, its own audit chain to verify, its own backup, compaction and certificate).
fn changes_replicated_state(command: &AdminCommand) -> bool {
    match command {
        AdminCommand::Member(MemberCommand::List { .. }) => false,
        AdminCommand::Member(_) | AdminCommand::AddMember(_) => true,
        AdminCommand::Peer(PeerCommand::List { .. }) => false,
        AdminCommand::Peer(_) => true,
        AdminCommand::Quarantine(QuarantineCommand::List { .. }) => false,
        AdminCommand::Quarantine(_) => true,
        AdminCommand::Cluster(ClusterCommand::List { .. }) => false,
        AdminCommand::Cluster(_) => true,
        AdminCommand::Audit(_)
        | AdminCommand::Stats { .. }
        | AdminCommand::Compact
        | AdminCommand::ServerCert(_)
        | AdminCommand::Backup { .. } => false,
    }
}

pub async fn run(args: &AdminArgs) -> anyhow::Result<()> {
    let (mut client, bundle) = match changes_replicated_state(&args.command) {
        true => args.connect.admin_client_on_leader().await?,
        false => args.connect.admin_client().await?,
    };
    let endpoint = args.connect.endpoint.as_deref();
    match &args.command {
        AdminCommand::Member(MemberCommand::Add(add)) | AdminCommand::AddMember(add) => {
            add_member(&mut client, &bundle, endpoint, add).await
        }
        AdminCommand::Member(MemberCommand::List { json }) => list_members(&mut client, *json).await,
        AdminCommand::Member(MemberCommand::Suspend(status)) => {
            set_status(
                &mut client,
                &status.name,
                PrincipalStatus::Suspended,
                status.withdraw_flags,
            )
            .await
        }
        AdminCommand::Member(MemberCommand::Reinstate { name }) => {
            set_status(&mut client, name, PrincipalStatus::Active, false).await
        }
        AdminCommand::Member(MemberCommand::Remove(status)) => {
            set_status(
                &mut client,
                &status.name,
                PrincipalStatus::Removed,
                status.withdraw_flags,
            )
            .await
        }
        AdminCommand::Member(MemberCommand::RotateCert { name, out }) => {
            rotate_cert(&mut client, &bundle, endpoint, name, out).await
        }
        AdminCommand::Member(MemberCommand::Limits(args)) => member_limits(&mut client, args).await,
        AdminCommand::Audit(AuditCommand::List(list)) => audit_list(&mut client, list).await,
        AdminCommand::Audit(AuditCommand::Verify { json }) => audit_verify(&mut client, *json).await,
        AdminCommand::Stats { json } => stats(&mut client, *json).await,
        AdminCommand::Cluster(ClusterCommand::List { json }) => cluster_list(&mut client, *json).await,
        AdminCommand::Cluster(ClusterCommand::AddNode { id, address, principal }) => {
            client
                .add_cluster_node(pb::AddClusterNodeRequest {
                    id: *id,
                    address: address.clone(),
                    principal: principal.clone(),
                })
                .await
                .map_err(status_error)?;
            println!("node {id} added at {address}; `admin cluster list` shows it");
            Ok(())
        }
        AdminCommand::Cluster(ClusterCommand::Invite { name, host_names, out }) => {
            if out.join("invitation.toml").exists() {
                anyhow::bail!("{} already holds an invitation", out.display());
            }
            let endpoint = endpoint.map_or_else(|| bundle.endpoints().join(","), str::to_owned);
            let invitation =
                crate::client::invite(&mut client, name, host_names, &endpoint, &bundle.config.server_name).await?;
            invitation.write(out)?;
            println!(
                "invited node principal '{name}' for {}; invitation written to {}\n\
                 on the new node: flagshare init --join {} --node-id ID --data DIR, then flagshare serve --data DIR;\n\
                 then here: flagshare admin cluster add-node --id ID --address https://{}:PORT --principal {name}",
                invitation.details.host_names.join(", "),
                out.display(),
                out.display(),
                host_names[0],
            );
            Ok(())
        }
        AdminCommand::Cluster(ClusterCommand::RemoveNode { id }) => {
            client
                .remove_cluster_node(pb::RemoveClusterNodeRequest { id: *id })
                .await
                .map_err(status_error)?;
            println!("node {id} removed; it no longer votes or receives the log");
            Ok(())
        }
        AdminCommand::Backup { dir } => backup(&mut client, dir).await,
        AdminCommand::Quarantine(QuarantineCommand::List {
            member: Some(member),
            json,
        }) => {
            let mut page_after = Vec::new();
            let mut first_page = true;
            loop {
                let page = client
                    .list_quarantine(pb::ListQuarantineRequest {
                        member: member.clone(),
                        page_after,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                super::member::print_held_flags(&page.flags, *json, first_page);
                first_page = false;
                if page.next_page_after.is_empty() {
                    return Ok(());
                }
                page_after = page.next_page_after;
            }
        }
        AdminCommand::Quarantine(QuarantineCommand::List { member: None, json }) => {
            let members = client
                .list_quarantine(pb::ListQuarantineRequest::default())
                .await
                .map_err(status_error)?
                .into_inner()
                .members;
            if !*json {
                println!("{:<24} {:>10} {:<21} NEWEST", "MEMBER", "FLAGS", "OLDEST");
            }
            for member in members {
                let oldest = member.oldest.map(|ts| timestamp_text(&ts)).unwrap_or_default();
                let newest = member.newest.map(|ts| timestamp_text(&ts)).unwrap_or_default();
                if *json {
                    let line = serde_json::json!({
                        "member": member.member, "flags": member.n_flags, "oldest": oldest, "newest": newest,
                    });
                    println!("{line}");
                } else {
                    println!("{:<24} {:>10} {:<21} {newest}", member.member, member.n_flags, oldest);
                }
            }
            Ok(())
        }
        AdminCommand::Quarantine(QuarantineCommand::Release { member }) => {
            quarantine_action(&mut client, member, true).await
        }
        AdminCommand::Quarantine(QuarantineCommand::Reject { member }) => {
            quarantine_action(&mut client, member, false).await
        }
        AdminCommand::ServerCert(ServerCertCommand::Renew) => {
            let response = client
                .renew_server_certificate(pb::RenewServerCertificateRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let expires = response
                .expires_at
                .map(|ts| timestamp_text(&ts))
                .unwrap_or_else(|| "unknown".to_owned());
            println!(
                "server certificate renewed for {}; expires {expires}; new connections get it now",
                response.host_names.join(", ")
            );
            Ok(())
        }
        AdminCommand::Compact => {
            let response = client
                .compact(pb::CompactRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("compacted: {} bytes on disk", response.disk_bytes);
            println!(
                "removed digests have left the data files and logs; RocksDB's MANIFEST forgets \
                 the keys of replaced files when the server next starts"
            );
            Ok(())
        }
        AdminCommand::Peer(PeerCommand::Add(peer)) => add_peer(&mut client, peer).await,
        AdminCommand::Peer(PeerCommand::List { json }) => list_peers(&mut client, *json).await,
        AdminCommand::Peer(PeerCommand::Remove { name }) => {
            client
                .remove_peer(pb::RemovePeerRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("peer {name} removed");
            Ok(())
        }
        AdminCommand::Peer(PeerCommand::Pause { name }) => set_peer_paused(&mut client, name, true).await,
        AdminCommand::Peer(PeerCommand::Resume { name }) => set_peer_paused(&mut client, name, false).await,
    }
}

async fn add_member(
    client: &mut AdminClient<Channel>,
    admin_bundle: &Bundle,
    endpoint: Option<&str>,
    args: &AddArgs,
) -> anyhow::Result<()> {
    if args.out.join("client.toml").exists() {
        anyhow::bail!("{} already holds a bundle", args.out.display());
    }
    // The new bundle names every node the admin's does, unless told otherwise.
    let endpoint = endpoint.map_or_else(|| admin_bundle.endpoints().join(","), str::to_owned);
    let bundle = enroll(
        client,
        &args.name,
        args.role,
        &endpoint,
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
    role_of(value).map_or("unknown", Role::as_str)
}

fn status_name(value: i32) -> &'static str {
    principal_status_of(value).map_or("unknown", PrincipalStatus::as_str)
}

async fn list_members(client: &mut AdminClient<Channel>, json: bool) -> anyhow::Result<()> {
    let response = client
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if !json {
        println!(
            "{:<24} {:<7} {:<10} {:<21} {:<21} {:>9} {:>9} {:<21} CERTIFICATE SHA-256",
            "NAME", "ROLE", "STATUS", "CREATED", "LAST SEEN", "FLAGS", "QUERIES", "CERTIFICATE EXPIRES"
        );
    }
    for principal in response.principals {
        let created = principal.created_at.map(|ts| timestamp_text(&ts)).unwrap_or_default();
        let expires = principal.certificate_expires_at.map(|ts| timestamp_text(&ts));
        let last_seen = principal
            .last_seen
            .map(|ts| timestamp_text(&ts))
            .unwrap_or_else(|| "never".to_owned());
        if json {
            let line = serde_json::json!({
                "name": principal.name,
                "role": role_name(principal.role),
                "status": status_name(principal.status),
                "created": created,
                "last_seen": principal.last_seen.map(|ts| timestamp_text(&ts)),
                "flags_submitted": principal.n_flags_submitted,
                "queries": principal.n_queries,
                "digests_queried": principal.n_digests_queried,
                "certificate_sha256": principal.certificate_sha256,
                "certificate_expires": expires,
            });
            println!("{line}");
        } else {
            println!(
                "{:<24} {:<7} {:<10} {:<21} {:<21} {:>9} {:>9} {:<21} {}",
                principal.name,
                role_name(principal.role),
                status_name(principal.status),
                created,
                last_seen,
                principal.n_flags_submitted,
                principal.n_queries,
                expires.as_deref().unwrap_or("unknown"),
                principal.certificate_sha256
            );
        }
    }
    Ok(())
}

async fn set_status(
    client: &mut AdminClient<Channel>,
    name: &str,
    status: PrincipalStatus,
    withdraw_flags: bool,
) -> anyhow::Result<()> {
    let response = client
        .set_principal_status(pb::SetPrincipalStatusRequest {
            name: name.to_owned(),
            status: principal_status_to_pb(status) as i32,
            withdraw_flags,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let principal = response.principal.context("server sent no principal")?;
    println!(
        "{} is now {}; {} flag(s) withdrawn",
        principal.name,
        status_name(principal.status),
        response.n_withdrawn
    );
    Ok(())
}

async fn rotate_cert(
    client: &mut AdminClient<Channel>,
    admin_bundle: &Bundle,
    endpoint: Option<&str>,
    name: &str,
    out: &Path,
) -> anyhow::Result<()> {
    if out.join("client.toml").exists() {
        anyhow::bail!("{} already holds a bundle", out.display());
    }
    let endpoint = endpoint.map_or_else(|| admin_bundle.endpoints().join(","), str::to_owned);
    let bundle = rotate(client, name, &endpoint, &admin_bundle.config.server_name).await?;
    bundle.write(out)?;
    println!(
        "new certificate for '{name}' (sha256 {}) written to {}; the old one is refused from now on",
        hex::encode(crate::pki::pem_certificate_sha256(&bundle.cert_pem)?),
        out.display()
    );
    Ok(())
}

/// An RFC 3339 time, or an age such as `30d` counted back from now.
fn parse_time_or_age(field: &str, text: &str) -> anyhow::Result<prost_types::Timestamp> {
    let ms = if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        time.duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    } else if let Ok(age) = humantime::parse_duration(text) {
        crate::util::now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
    } else {
        anyhow::bail!("--{field}: '{text}' is neither an RFC 3339 time nor an age like 30d");
    };
    Ok(timestamp_from_ms(ms))
}

async fn audit_list(client: &mut AdminClient<Channel>, args: &AuditListArgs) -> anyhow::Result<()> {
    let digest = match &args.digest {
        Some(text) => {
            let bytes = hex::decode(text.trim()).map_err(|_| anyhow::anyhow!("--digest: '{text}' is not hex"))?;
            anyhow::ensure!(
                bytes.len() == 32,
                "--digest: {} bytes, expected 32 (64 hex characters)",
                bytes.len()
            );
            bytes
        }
        None => Vec::new(),
    };
    let request = pb::ListAuditRequest {
        principal: args.member.clone().unwrap_or_default(),
        op: args.op.map(|op| op.as_str().to_owned()).unwrap_or_default(),
        since: args
            .since
            .as_deref()
            .map(|t| parse_time_or_age("since", t))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_time_or_age("until", t))
            .transpose()?,
        digest,
        limit: args.limit,
    };
    let entries = client
        .list_audit(request)
        .await
        .map_err(status_error)?
        .into_inner()
        .entries;
    for entry in entries {
        let at = entry.at.map(|ts| timestamp_text(&ts)).unwrap_or_default();
        if args.json {
            let line = serde_json::json!({
                "sequence": entry.sequence,
                "at": at,
                "principal": entry.principal,
                "op": entry.op,
                "n_items": entry.n_items,
                "n_changed": entry.n_changed,
                "detail": entry.detail,
                "digests": entry.digests,
                "prev_hash": entry.prev_hash,
            });
            println!("{line}");
        } else {
            let mut line = format!(
                "{:>8} {at} {:<20} {:<20} items={} changed={}",
                entry.sequence, entry.principal, entry.op, entry.n_items, entry.n_changed
            );
            if !entry.detail.is_empty() {
                line.push_str(&format!(" ({})", entry.detail));
            }
            for digest in &entry.digests {
                line.push_str(&format!("\n{:>8} digest {digest}", ""));
            }
            println!("{line}");
        }
    }
    Ok(())
}

async fn audit_verify(client: &mut AdminClient<Channel>, json: bool) -> anyhow::Result<()> {
    let report = client
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": report.ok,
                "checked": report.n_checked,
                "first_sequence": report.first_sequence,
                "last_sequence": report.last_sequence,
                "head_hash": report.head_hash,
                "broken_sequence": (!report.ok).then_some(report.broken_sequence),
                "problem": report.problem,
            })
        );
    } else if report.ok {
        println!(
            "audit chain intact: {} entries ({}..={}), head {}",
            report.n_checked, report.first_sequence, report.last_sequence, report.head_hash
        );
    } else {
        println!(
            "audit chain BROKEN at entry {}: {} ({} entries checked before it)",
            report.broken_sequence, report.problem, report.n_checked
        );
    }
    anyhow::ensure!(report.ok, "the audit log failed verification");
    Ok(())
}

async fn cluster_list(client: &mut AdminClient<Channel>, json: bool) -> anyhow::Result<()> {
    let status = client
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let nodes: Vec<_> = status
            .nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "id": node.id,
                    "address": node.address,
                    "role": node.role,
                    "matched_index": node.matched_index,
                    "lag": node.lag,
                })
            })
            .collect();
        let value = serde_json::json!({
            "replicated": status.replicated,
            "node_id": status.node_id,
            "leader_id": status.leader_id,
            "term": status.term,
            "last_log_index": status.last_log_index,
            "applied_index": status.applied_index,
            "snapshot_index": status.snapshot_index,
            "nodes": nodes,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if !status.replicated {
        println!("not replicated: this server commits to its own store (replicated_log = false)");
        return Ok(());
    }
    println!(
        "node {} (term {}, leader {}): last log entry {}, applied {}, snapshot at {}",
        status.node_id,
        status.term,
        status.leader_id,
        status.last_log_index,
        status.applied_index,
        status.snapshot_index
    );
    println!("{:<6} {:<9} {:>9} {:>7}  address", "id", "role", "matched", "lag");
    let known = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |value| value.to_string());
    for node in &status.nodes {
        println!(
            "{:<6} {:<9} {:>9} {:>7}  {}",
            node.id,
            node.role,
            known(node.matched_index),
            known(node.lag),
            node.address
        );
    }
    Ok(())
}

async fn stats(client: &mut AdminClient<Channel>, json: bool) -> anyhow::Result<()> {
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let sorted = |map: &std::collections::HashMap<String, u64>| -> std::collections::BTreeMap<String, u64> {
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    };
    let time = |ts: &Option<prost_types::Timestamp>| ts.as_ref().map(timestamp_text);
    let value = serde_json::json!({
        "digests": stats.n_digests,
        "active_flags": stats.n_active_flags,
        "expired_flags_awaiting_purge": stats.n_expired_flags,
        "active_flags_by_kind": sorted(&stats.active_flags_by_kind),
        "active_flags_by_category": sorted(&stats.active_flags_by_category),
        "active_principals_by_role": sorted(&stats.active_principals_by_role),
        "disk_bytes": stats.disk_bytes,
        "oldest_flag": time(&stats.oldest_flag),
        "newest_flag": time(&stats.newest_flag),
        "change_sequence": stats.change_sequence,
        "audit_sequence": stats.audit_sequence,
        "flags_expired_purged_since_start": stats.flags_expired_purged,
        "audit_entries_pruned_since_start": stats.audit_entries_pruned,
        "operator_id": stats.operator_id,
        "operator_key": stats.operator_key,
    });
    if json {
        println!("{value}");
    } else if let Some(object) = value.as_object() {
        for (key, item) in object {
            println!("{key:<34} {item}");
        }
    }
    Ok(())
}

async fn backup(client: &mut AdminClient<Channel>, dir: &Path) -> anyhow::Result<()> {
    let response = client
        .backup(pb::BackupRequest {
            dir: dir.display().to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("backup written to {} on the server", response.dir);
    Ok(())
}

async fn add_peer(client: &mut AdminClient<Channel>, args: &PeerArgs) -> anyhow::Result<()> {
    let bundle_dir = match &args.bundle {
        Some(dir) => std::path::absolute(dir)?.display().to_string(),
        None => String::new(),
    };
    let status = client
        .configure_peer(pb::ConfigurePeerRequest {
            name: args.name.clone(),
            endpoint: args.endpoint.clone().unwrap_or_default(),
            bundle_dir,
            paused: false,
            categories: args
                .categories
                .iter()
                .map(|category| category_to_pb(*category) as i32)
                .collect(),
            pass_on: args.pass_on,
            reveal_names: args.reveal_names,
            operator_id: args.operator_id.clone().unwrap_or_default(),
            operator_key: args.operator_key.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("peer {} configured ({})", args.name, status.state);
    Ok(())
}

async fn set_peer_paused(client: &mut AdminClient<Channel>, name: &str, paused: bool) -> anyhow::Result<()> {
    let peers = client
        .list_peers(pb::ListPeersRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .peers;
    let mut config = peers
        .into_iter()
        .filter_map(|peer| peer.config)
        .find(|config| config.name == name)
        .with_context(|| format!("no peer named '{name}'"))?;
    config.paused = paused;
    let status = client.configure_peer(config).await.map_err(status_error)?.into_inner();
    println!("peer {name}: {}", status.state);
    Ok(())
}

async fn list_peers(client: &mut AdminClient<Channel>, json: bool) -> anyhow::Result<()> {
    let peers = client
        .list_peers(pb::ListPeersRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .peers;
    if !json {
        println!(
            "{:<20} {:<11} {:>10} {:>8} {:<21} {:>9} {:>9} {:>8} ENDPOINT",
            "NAME", "STATE", "CURSOR", "LAG", "LAST SYNC", "RECEIVED", "APPLIED", "REJECTED"
        );
    }
    for peer in peers {
        let config = peer.config.clone().unwrap_or_default();
        let last_sync = peer.last_sync.as_ref().map(timestamp_text);
        if json {
            let categories: Vec<&str> = config
                .categories
                .iter()
                .map(|value| category_of(*value).map_or("unknown", |c| c.as_str()))
                .collect();
            let line = serde_json::json!({
                "name": config.name,
                "endpoint": config.endpoint,
                "state": peer.state,
                "paused": config.paused,
                "cursor": peer.cursor,
                "lag": peer.lag,
                "last_sync": last_sync,
                "received": peer.n_received,
                "applied": peer.n_applied,
                "rejected": peer.n_rejected,
                "last_rejection": peer.last_rejection,
                "pause_reason": peer.pause_reason,
                "operator_id": peer.operator_id,
                "last_error": peer.last_error,
                "categories": categories,
                "pass_on": config.pass_on,
                "reveal_names": config.reveal_names,
            });
            println!("{line}");
        } else {
            println!(
                "{:<20} {:<11} {:>10} {:>8} {:<21} {:>9} {:>9} {:>8} {}",
                config.name,
                peer.state,
                peer.cursor,
                peer.lag,
                last_sync.unwrap_or_else(|| "never".to_owned()),
                peer.n_received,
                peer.n_applied,
                peer.n_rejected,
                config.endpoint
            );
            if !peer.pause_reason.is_empty() {
                println!("{:<20} {}", "", peer.pause_reason);
            }
            if !peer.last_rejection.is_empty() {
                println!("{:<20} last refused: {}", "", peer.last_rejection);
            }
        }
    }
    Ok(())
}

async fn member_limits(client: &mut AdminClient<Channel>, args: &LimitsArgs) -> anyhow::Result<()> {
    let changes = pb::Limits {
        digests_queried_per_second: args.digests_queried_per_second,
        flags_submitted_per_second: args.flags_submitted_per_second,
        flags_submitted_per_day: args.flags_submitted_per_day,
        streams: args.streams,
        quarantine_new_flags_per_hour: args.quarantine_new_flags_per_hour,
    };
    let setting = args.clear || changes != pb::Limits::default();
    let response = if setting {
        client
            .set_principal_limits(pb::SetPrincipalLimitsRequest {
                name: args.name.clone(),
                limits: Some(changes),
                clear: args.clear,
            })
            .await
    } else {
        client
            .get_principal_limits(pb::GetPrincipalLimitsRequest {
                name: args.name.clone(),
            })
            .await
    }
    .map_err(status_error)?
    .into_inner();
    let overrides = response.overrides.unwrap_or_default();
    let effective = response.effective.unwrap_or_default();
    let rows = [
        (
            "digests_queried_per_second",
            effective.digests_queried_per_second,
            overrides.digests_queried_per_second,
        ),
        (
            "flags_submitted_per_second",
            effective.flags_submitted_per_second,
            overrides.flags_submitted_per_second,
        ),
        (
            "flags_submitted_per_day",
            effective.flags_submitted_per_day,
            overrides.flags_submitted_per_day,
        ),
        (
            "streams",
            effective.streams.map(u64::from),
            overrides.streams.map(u64::from),
        ),
        (
            "quarantine_new_flags_per_hour",
            effective.quarantine_new_flags_per_hour,
            overrides.quarantine_new_flags_per_hour,
        ),
    ];
    if args.json {
        let mut object = serde_json::Map::new();
        object.insert("name".to_owned(), response.name.clone().into());
        for (name, value, set) in rows {
            object.insert(
                name.to_owned(),
                serde_json::json!({ "value": value, "overridden": set.is_some() }),
            );
        }
        println!("{}", serde_json::Value::Object(object));
        return Ok(());
    }
    println!("limits of {}:", response.name);
    for (name, value, set) in rows {
        let source = if set.is_some() { "set for it" } else { "role default" };
        println!("  {name:<28} {:>14}  ({source})", value.unwrap_or_default());
    }
    Ok(())
}

/// Releases or rejects every quarantined flag of `member`, one chunk per call.
async fn quarantine_action(client: &mut AdminClient<Channel>, member: &str, release: bool) -> anyhow::Result<()> {
    let mut total = 0u64;
    let mut held = u64::MAX;
    loop {
        let request = pb::QuarantineActionRequest {
            member: member.to_owned(),
        };
        let response = if release {
            client.release_quarantine(request).await
        } else {
            client.reject_quarantine(request).await
        }
        .map_err(status_error)?
        .into_inner();
        total += u64::from(response.n_done);
        // Done when none are left, or when a call made no progress (reported, not looped on).
        let stuck = response.n_remaining >= held;
        held = response.n_remaining;
        if held == 0 || stuck {
            let verb = if release { "released" } else { "rejected" };
            println!(
                "{total} quarantined flag(s) of {member} {verb}; {} still held",
                response.n_remaining
            );
            return Ok(());
        }
    }
}
