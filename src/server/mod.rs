//! The gRPC server: mutual TLS, the `Flags` and `Admin` services, health checking and
//! reflection. Handlers are thin; the rules live in `domain`.

mod admin;
pub mod cluster;
pub mod convert;
mod federation;
mod flags;
pub use flags::IMPORT_SLOTS;
mod identity;
pub(crate) mod idle;
pub mod limits;
pub mod streams;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::HeaderValue;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower::util::MapResponseLayer;

use crate::config::Config;
use crate::domain::Domain;
use crate::metrics::{Metrics, PeerReading, RpcMetricsLayer, Scraped};
use crate::pb;
use crate::pki::Pki;
use crate::store::Store;

/// Largest request message accepted, in bytes. A full batch of 10,000 flags with maximal
/// references is about 1.9 MB; a full query batch is 320 KB.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// After a shutdown signal, how long open calls may take to finish before the remaining
/// connections are closed: a reader that stopped reading cannot hold the server up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After serving stopped, how long to wait for the last calls to let go of the database.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// After serving stopped, how long the last commits (maintenance, queued read audit
/// entries) may wait for the cluster before the node's log stops under them.
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// HTTP/2 streams one connection may have open at once.
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 64;
/// An idle connection is pinged this often, and closed when a ping goes unanswered for
/// `HTTP2_KEEPALIVE_TIMEOUT`: a vanished client does not hold its streams for ever.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// tonic refuses an oversized request with OUT_OF_RANGE and an internal-sounding message;
/// callers expect RESOURCE_EXHAUSTED and a plain statement of the limit.
fn rewrite_oversized_request_status(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let is_out_of_range = headers.get("grpc-status").is_some_and(|code| code.as_bytes() == b"11");
    let is_size_refusal = headers.get("grpc-message").is_some_and(|message| {
        let message = String::from_utf8_lossy(message.as_bytes()).replace("%20", " ");
        message.contains("decoded message length too large")
    });
    if is_out_of_range && is_size_refusal {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "request%20message%20exceeds%20the%204%20MiB%20limit%3A%20send%20fewer%20items%20per%20call",
            ),
        );
    }
    response
}

/// Opens the store and PKI of `config`, serves gRPC on `listener` (and metrics on
/// `metrics_listener`, when given) until `shutdown` completes, then drains in-flight calls
/// and closes the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let pki = Arc::new(Pki::load(&config.data_dir)?);
    let local_addr = listener.local_addr()?;
    let metrics = Metrics::new();
    let ca_expiry = crate::pki::certificate_not_after(&pki.ca_pem);
    let store = Arc::new(Store::open(&config.db_dir(), &config.store_options())?);
    let server_certificate = tls::ServerCertificate::new(&pki.server_pem, &pki.server_key_pem)?;
    let tls_config = tls::server_config(&pki.ca_pem, server_certificate.clone())?;
    let idle_limit = Duration::from_secs(config.idle_connection_secs);
    // A connection beyond max_connections is closed at accept: what many addresses can
    // open at once is bounded, whatever each of them sends.
    let connection_slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let mut incoming = tls::accept(
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(HTTP2_KEEPALIVE_INTERVAL)),
        tls_config,
        idle_limit,
        connection_slots,
        metrics.clone(),
    );
    let mut shutdown = std::pin::pin!(shutdown);
    // The log's committed entries are applied before the domain reads the store.
    let node = match config.replicated_log {
        true => {
            // Where other nodes reach this one (a one-node cluster has none yet).
            let port = local_addr.port();
            let host = config.host_names.first().map_or("localhost", String::as_str);
            let address = format!("https://{host}:{port}");
            let credentials = match config.cluster_credentials_dir() {
                Some(dir) => Some(
                    crate::client::Bundle::load(&dir)
                        .with_context(|| format!("cluster_credentials: {}", dir.display()))?,
                ),
                None => None,
            };
            let join = !config.join_trusted_nodes.is_empty();
            let node = Arc::new(
                crate::cluster::node::Node::start(store.clone(), config.node_id, address.clone(), credentials, join)
                    .await?,
            );
            if join && !node.has_joined() {
                let trusted = join_trusted_nodes(&config.join_trusted_nodes)?;
                tracing::info!(
                    node_id = config.node_id,
                    %address,
                    "waiting to join: on the leader, run `flagshare admin cluster add-node --id {} --address {address} --principal NAME`",
                    config.node_id
                );
                match serve_until_joined(
                    &node,
                    trusted,
                    Duration::from_secs(config.request_timeout_secs),
                    incoming,
                    shutdown.as_mut(),
                )
                .await?
                {
                    Some(rest) => incoming = rest,
                    None => {
                        node.stop().await;
                        tracing::info!("flagshare stopped before it joined its cluster");
                        return Ok(());
                    }
                }
                tracing::info!(node_id = config.node_id, "joined the cluster; serving");
            }
            Some(node)
        }
        false => None,
    };
    let domain = Domain::open(store.clone(), config.policy().map_err(anyhow::Error::msg)?)?;
    // The leader as this node reaches it: one connection for read entries and members' writes.
    let leader = node.as_ref().map(|node| node.leader());
    if let (Some(node), Some(leader)) = (&node, &leader) {
        // Another node's commits applied here change the store under the domain's memory.
        store.set_apply_listener(node.own_entries(), Some(domain.apply_listener()));
        // Entries applied between the domain's read and the listener's start.
        domain.refresh()?;
        node.route_commits();
        // A follower answers reads; the leader commits their audit entries.
        domain.set_read_forwarder(Some(leader.clone()));
    }
    let db_identity = domain.db_identity();
    let limits = limits::Limits::load(&config, domain.clone(), metrics.clone()).await?;
    let stream_limits = streams::StreamLimits::new(limits.clone());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let fresh = Arc::new(std::sync::atomic::AtomicBool::new(true));
    health_reporter
        .set_serving::<pb::flags_server::FlagsServer<flags::FlagsService>>()
        .await;
    health_reporter
        .set_serving::<pb::admin_server::AdminServer<admin::AdminService>>()
        .await;
    health_reporter
        .set_serving::<pb::federation_server::FederationServer<federation::FederationService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("building reflection v1alpha")?;

    let (stopping, stop_requested) = tokio::sync::watch::channel(false);
    let flags_service = pb::flags_server::FlagsServer::new(flags::FlagsService {
        domain: domain.clone(),
        stopping: stop_requested.clone(),
        streams: stream_limits.clone(),
        db_identity,
        metrics: metrics.clone(),
        limits: limits.clone(),
        imports: Arc::new(tokio::sync::Semaphore::new(flags::IMPORT_SLOTS)),
        import_idle: Duration::from_secs(config.request_timeout_secs),
        leader: leader.clone(),
        fresh: fresh.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let peers = federation::Peers::new(domain.clone(), stop_requested.clone());
    let admin_service = pb::admin_server::AdminServer::new(admin::AdminService {
        domain: domain.clone(),
        pki,
        peers: peers.clone(),
        limits: limits.clone(),
        server_certificate: server_certificate.clone(),
        operator_name: config.operator_name.clone(),
        host_names: config.host_names.clone(),
        cluster: node.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Only with a replicated log: the other nodes' calls, behind a gate that admits the
    // certificates of the membership's nodes and of active principals with the node role.
    let cluster_service = node.as_ref().map(|node| {
        let (gate_node, gate_domain) = (node.clone(), domain.clone());
        let gate: cluster::NodeGate = Arc::new(move |sha256| {
            gate_node.has_member_certificate(sha256)
                || gate_domain.authorize(sha256, &[crate::model::Role::Node]).is_ok()
        });
        cluster::service(node.raft().clone(), Some(domain.clone()), gate)
    });
    let federation_service = pb::federation_server::FederationServer::new(federation::FederationService {
        domain: domain.clone(),
        stopping: stop_requested.clone(),
        streams: stream_limits,
        db_identity,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(federation::MAX_PULL_MESSAGE_BYTES);

    tracing::info!(%local_addr, "flagshare serving (mutual TLS required)");
    let maintenance = tokio::spawn(maintenance_loop(
        domain.clone(),
        metrics.clone(),
        ExpiryWatch {
            ca_expiry,
            server_certificate: server_certificate.clone(),
        },
        Duration::from_secs(config.maintenance_interval_secs),
        config.retention(),
        stop_requested.clone(),
    ));
    let read_flusher = tokio::spawn(read_flush_loop(domain.clone(), stop_requested.clone()));
    if let Some(node) = &node {
        tokio::spawn(watch_staleness(
            node.clone(),
            Duration::from_secs(config.max_staleness_secs),
            health_reporter.clone(),
            fresh.clone(),
            stop_requested.clone(),
        ));
    }
    let metrics_server = metrics_listener.map(|metrics_listener| {
        if let Ok(address) = metrics_listener.local_addr() {
            tracing::info!(%address, "metrics at http://{address}/metrics");
        }
        let scrape_domain = domain.clone();
        let scrape_peers = peers.clone();
        let scrape_certificate = server_certificate.clone();
        let (scrape_node, scrape_fresh) = (node.clone(), fresh.clone());
        let scrape = move || {
            // The server certificate is read at each scrape: a renewal shows at once.
            let certificates = [
                ("ca", ca_expiry),
                ("server", crate::pki::certificate_not_after(&scrape_certificate.pem())),
            ]
            .into_iter()
            .filter_map(|(name, at)| at.map(|at| (name.to_owned(), String::new(), at)))
            .collect();
            let cluster = scrape_node
                .as_ref()
                .map(|node| cluster_reading(node, scrape_fresh.load(std::sync::atomic::Ordering::Acquire)));
            scrape(scrape_domain.clone(), scrape_peers.clone(), certificates, cluster)
        };
        tokio::spawn(crate::metrics::serve(
            metrics_listener,
            metrics.clone(),
            scrape,
            stop_requested.clone(),
        ))
    });
    peers.start_all().await.context("starting federation peers")?;
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let serving = Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS_PER_CONNECTION))
        .timeout(Duration::from_secs(config.request_timeout_secs))
        .layer(
            tower::ServiceBuilder::new()
                .layer(RpcMetricsLayer::new(metrics.clone()))
                .layer(MapResponseLayer::new(rewrite_oversized_request_status)),
        )
        .add_service(flags_service)
        .add_service(admin_service)
        .add_service(federation_service)
        .add_optional_service(cluster_service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown);
    // A graceful shutdown waits for every open call; a stream whose reader stopped reading
    // cannot finish (its last frames wait on HTTP/2 flow control), so after a grace
    // period the remaining connections are dropped.
    let mut stop_watch = stop_requested;
    let grace = async move {
        let _ = stop_watch.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serving => served.context("serving")?,
        () = grace => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "calls still open after the shutdown grace period; closing their connections"
        ),
    }
    let finish = async {
        maintenance.await.context("maintenance task")?;
        read_flusher.await.context("read audit flusher")?;
        if let Some(metrics_server) = metrics_server {
            match metrics_server.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(%err, "the metrics endpoint failed"),
                Err(err) => tracing::error!(%err, "the metrics task failed"),
            }
        }
        peers.join_all().await;
        drop(peers);
        // Stream tasks end on the shutdown signal within a poll; the store closes when the last
        // of them lets go of the domain, and a restart on the same folder needs it closed. A
        // connection dropped after the grace period may still hold it: then the process exit
        // closes it, a little later.
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        while !domain.is_sole_owner() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !domain.is_sole_owner() {
            tracing::warn!("calls still hold the database after the shutdown grace period");
        }
        if let Err(err) = domain.flush_reads().await {
            tracing::error!(%err, "committing queued read audit entries failed");
        }
        anyhow::Ok(())
    };
    let mut finish = Box::pin(finish);
    let finished = match &node {
        Some(node) => match tokio::time::timeout(COMMIT_WAIT, &mut finish).await {
            Ok(finished) => finished,
            Err(_) => {
                // A leader whose other nodes stopped first waits for ever for a majority:
                // its log stops, and the commits still waiting fail (they were never
                // acknowledged).
                tracing::warn!(
                    wait_secs = COMMIT_WAIT.as_secs(),
                    "commits still wait for a majority of the cluster; stopping without them"
                );
                node.stop().await;
                (&mut finish).await
            }
        },
        None => (&mut finish).await,
    };
    drop(finish);
    finished?;
    if let Some(node) = node {
        node.stop().await;
    }
    drop(domain);
    tracing::info!("flagshare stopped");
    Ok(())
}

/// `join_trusted_nodes` as certificate fingerprints.
fn join_trusted_nodes(hex_list: &[String]) -> anyhow::Result<Vec<[u8; 32]>> {
    hex_list
        .iter()
        .enumerate()
        .map(|(at, text)| {
            hex::decode(text)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| anyhow::anyhow!("join_trusted_nodes[{at}]: '{text}' is not a SHA-256 in hex"))
        })
        .collect()
}

/// While a node joins, a call of any service but `Cluster` is answered UNAVAILABLE (a
/// client listing several nodes tries the next), not UNIMPLEMENTED.
fn not_joined_yet(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|code| code.as_bytes() == b"12") {
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "this%20node%20is%20joining%20its%20cluster%20and%20holds%20nothing%20yet%3B%20ask%20another%20node",
            ),
        );
    }
    response
}

/// A node made by `init --join` holds nothing yet: until its leader has sent it the
/// cluster's state it serves only the `Cluster` service, to the nodes it was told to trust
/// (and, once it knows one, its membership's). Returns the connections still to accept, or
/// `None` when `shutdown` came first. The join server's connections (the leader's) stay
/// open and keep reaching the same Raft after it stops accepting.
async fn serve_until_joined(
    node: &Arc<crate::cluster::node::Node>,
    trusted: Vec<[u8; 32]>,
    request_timeout: Duration,
    incoming: tls::Accepted,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Option<tls::Accepted>> {
    let gate_node = node.clone();
    let gate: cluster::NodeGate =
        Arc::new(move |sha256| trusted.contains(sha256) || gate_node.has_member_certificate(sha256));
    let (forward, forwarded) = tokio::sync::mpsc::channel(16);
    let joining = Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS_PER_CONNECTION))
        .timeout(request_timeout)
        .layer(MapResponseLayer::new(not_joined_yet))
        .add_service(cluster::service(node.raft().clone(), None, gate))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(forwarded));
    tokio::spawn(async move {
        if let Err(err) = joining.await {
            tracing::warn!(%err, "the join phase's server stopped");
        }
    });
    let mut accepted = incoming.into_inner();
    let joined = node.wait_until_joined();
    let mut joined = std::pin::pin!(joined);
    loop {
        tokio::select! {
            done = &mut joined => {
                done?;
                return Ok(Some(tls::Accepted::new(accepted)));
            }
            () = &mut shutdown => return Ok(None),
            connection = accepted.recv() => match connection {
                Some(connection) => {
                    let _ = forward.send(connection).await;
                }
                None => anyhow::bail!("the listener stopped before this node joined its cluster"),
            },
        }
    }
}

/// Purges expired flags and prunes the audit log every `interval`, first right after start.
/// Certificates to warn about before they expire.
struct ExpiryWatch {
    ca_expiry: Option<i64>,
    server_certificate: Arc<tls::ServerCertificate>,
}

/// A certificate expiring within this many days is warned about in the log, once a day.
const EXPIRY_WARNING_DAYS: i64 = 30;

impl ExpiryWatch {
    /// (what, expiry in Unix seconds) of every certificate expiring within 30 days.
    fn expiring(&self, domain: &Domain, now_secs: i64) -> Vec<(String, i64)> {
        let server = crate::pki::certificate_not_after(&self.server_certificate.pem());
        [
            ("the CA certificate".to_owned(), self.ca_expiry),
            ("the server certificate".to_owned(), server),
        ]
        .into_iter()
        .filter_map(|(what, at)| at.map(|at| (what, at)))
        .chain(
            domain
                .principal_certificates()
                .into_iter()
                .map(|(name, ms)| (format!("the certificate of '{name}'"), ms / 1000)),
        )
        .filter(|(_, at)| *at - now_secs < EXPIRY_WARNING_DAYS * 86_400)
        .collect()
    }
}

/// How often a node checks that it is in touch with its cluster.
const TOUCH_INTERVAL: Duration = Duration::from_millis(200);

/// Keeps `fresh` and the Flags service's health in step with whether this node has been
/// cut off from its cluster's majority for longer than `bound` (`Node::in_touch`): past
/// it, the node's applied state may be staler than the bound, so its reads are refused
/// and its health says NOT_SERVING, until it is in touch again.
async fn watch_staleness(
    node: Arc<crate::cluster::node::Node>,
    bound: Duration,
    health: tonic_health::server::HealthReporter,
    fresh: Arc<std::sync::atomic::AtomicBool>,
    mut stop_requested: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(TOUCH_INTERVAL);
    let mut last_touch = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop_requested.changed() => return,
        }
        if node.in_touch(bound) {
            last_touch = tokio::time::Instant::now();
        }
        let now_fresh = last_touch.elapsed() <= bound;
        if fresh.swap(now_fresh, std::sync::atomic::Ordering::AcqRel) != now_fresh {
            if now_fresh {
                tracing::info!("in touch with the cluster again: serving reads");
                health
                    .set_serving::<pb::flags_server::FlagsServer<flags::FlagsService>>()
                    .await;
            } else {
                tracing::warn!(
                    bound_secs = bound.as_secs(),
                    "cut off from the cluster past the staleness bound: refusing reads"
                );
                health
                    .set_not_serving::<pb::flags_server::FlagsServer<flags::FlagsService>>()
                    .await;
            }
        }
    }
}

/// How often a failure that goes on is logged again.
const FAILURE_REPEAT: Duration = Duration::from_secs(10);

/// Commits the audit entries of queries and other reads, queued as they are answered,
/// every `READ_FLUSH_INTERVAL` (and once more as the server stops).
async fn read_flush_loop(domain: Domain, mut stop_requested: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(crate::domain::READ_FLUSH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A follower whose leader is away fails every 10 ms: said once, then every 10 s.
    let mut failing_since: Option<(tokio::time::Instant, u64)> = None;
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop_requested.changed() => true,
        };
        match domain.flush_reads().await {
            Ok(()) => {
                if let Some((_, failures)) = failing_since.take() {
                    tracing::info!(failures, "read audit entries committed again");
                }
            }
            Err(err) => match &mut failing_since {
                Some((said_at, failures)) => {
                    *failures += 1;
                    if said_at.elapsed() >= FAILURE_REPEAT {
                        tracing::error!(%err, failures = *failures, "committing read audit entries still fails; they stay queued");
                        *said_at = tokio::time::Instant::now();
                    }
                }
                None => {
                    tracing::error!(%err, "committing read audit entries failed; they stay queued");
                    failing_since = Some((tokio::time::Instant::now(), 1));
                }
            },
        }
        if stopping {
            return;
        }
    }
}

async fn maintenance_loop(
    domain: Domain,
    metrics: Arc<Metrics>,
    expiry: ExpiryWatch,
    interval: Duration,
    retention: crate::domain::Retention,
    mut stop_requested: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop_requested.changed() => return,
        }
        if warned_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(86_400)) {
            let now_secs = crate::util::now_ms() / 1000;
            let expiring = expiry.expiring(&domain, now_secs);
            for (what, at) in &expiring {
                let days = (at - now_secs) / 86_400;
                tracing::warn!(
                    certificate = %what,
                    expires = %crate::util::format_ms(at.saturating_mul(1000)),
                    "{what} expires in {days} days: renew it (admin server-cert renew, admin member rotate-cert)"
                );
            }
            warned_at = Some(tokio::time::Instant::now());
        }
        match domain.sweep(retention).await {
            Ok(sweep) if sweep != Default::default() => {
                metrics.flags_expired.inc_by(sweep.flags_purged);
                tracing::info!(
                    sweep.flags_purged,
                    sweep.audit_entries_pruned,
                    sweep.tombstones_deleted,
                    sweep.members_forgotten,
                    "maintenance pass"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::error!(%err, "maintenance pass failed; retrying at the next interval"),
        }
    }
}

/// What the metrics endpoint reads off the server at scrape time.
/// This node and its cluster, for the metrics endpoint.
fn cluster_reading(node: &crate::cluster::node::Node, serving_reads: bool) -> crate::metrics::ClusterReading {
    let view = node.view();
    crate::metrics::ClusterReading {
        leads: view.leader_id == Some(view.node_id),
        leader_known: view.leader_id.is_some(),
        term: view.term,
        last_log_index: view.last_log_index.unwrap_or(0),
        applied_index: view.applied_index.unwrap_or(0),
        serving_reads,
        read_index_rounds: node.read_index_rounds(),
        lags: view
            .nodes
            .iter()
            .filter_map(|node| Some((node.id, node.lag?)))
            .collect(),
    }
}

async fn scrape(
    domain: Domain,
    peers: Arc<federation::Peers>,
    mut certificates: Vec<(String, String, i64)>,
    cluster: Option<crate::metrics::ClusterReading>,
) -> Scraped {
    certificates.extend(
        domain
            .principal_certificates()
            .into_iter()
            .map(|(name, not_after_ms)| ("client".to_owned(), name, not_after_ms / 1000)),
    );
    let now_ms = crate::util::now_ms();
    let records = domain.peers().await.unwrap_or_default();
    let readings = records
        .iter()
        .map(|record| {
            let live = peers.live(record);
            PeerReading {
                name: record.name.clone(),
                lag_seconds: if live.lag > 0 && record.last_sync_ms > 0 {
                    (now_ms - record.last_sync_ms).max(0) / 1000
                } else {
                    0
                },
                state: live.state,
                lag_events: live.lag,
                applied: live.applied,
                rejected: record.n_rejected,
            }
        })
        .collect();
    let rocks = domain.rocks_reading().await.unwrap_or_default();
    Scraped {
        peers: readings,
        cluster,
        rocks,
        certificates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IssuedCertificate, Role};

    #[tokio::test]
    async fn certificates_within_thirty_days_of_expiry_are_the_ones_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path(), "op", &["localhost".to_owned()]).unwrap();
        let store = Store::open(&dir.path().join("db"), &Default::default()).unwrap();
        let domain = Domain::open(store, crate::domain::Policy::default()).unwrap();
        let now_secs = crate::util::now_ms() / 1000;
        for (name, days) in [("soon", 10), ("later", 300)] {
            domain
                .add_principal(
                    crate::domain::Actor::system(),
                    name.to_owned(),
                    Role::Member,
                    IssuedCertificate {
                        sha256: *blake3::hash(name.as_bytes()).as_bytes(),
                        not_after_ms: (now_secs + days * 86_400) * 1000,
                    },
                )
                .await
                .unwrap();
        }
        let watch = ExpiryWatch {
            ca_expiry: crate::pki::certificate_not_after(&pki.ca_pem),
            server_certificate: tls::ServerCertificate::new(&pki.server_pem, &pki.server_key_pem).unwrap(),
        };
        let names = |now| -> Vec<String> { watch.expiring(&domain, now).into_iter().map(|(what, _)| what).collect() };
        assert_eq!(names(now_secs), vec!["the certificate of 'soon'"]);
        // 20 days before the server certificate's 2 years are up, it is warned about too.
        let server_expiry = crate::pki::certificate_not_after(&pki.server_pem).unwrap();
        let late = names(server_expiry - 20 * 86_400);
        assert!(late.contains(&"the server certificate".to_owned()), "{late:?}");
        assert!(!late.contains(&"the CA certificate".to_owned()), "{late:?}");
    }
}
