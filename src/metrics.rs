//! Prometheus metrics, served as text on a plain-HTTP listener of their own
//! (`metrics_listen`), never on the gRPC port: scraping needs no client certificate, and
//! the listener binds to loopback unless the operator says otherwise.
//!
//! Counters and histograms live in one `prometheus-client` registry, updated where things
//! happen (the RPC layer, the handlers, maintenance). What is read off state at scrape time
//! (federation peers, RocksDB, certificate expiry) is gathered by `scrape` into a second,
//! throwaway registry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// RPCs answered, by service, method and gRPC status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: String,
    pub method: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

/// A member (principal) by name: members are few and known, so the label is bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    pub member: String,
}

/// A refusal by limit: whose, and which limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub member: String,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerStateLabels {
    pub peer: String,
    pub state: String,
}

/// A certificate: `ca`, `server`, or `client` with the principal's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: String,
    pub principal: String,
}

fn histogram_buckets() -> impl Iterator<Item = f64> {
    // 0.25 ms to about 8 s, doubling.
    prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 16)
}

/// Everything counted while the server runs.
pub struct Metrics {
    registry: Registry,
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabels, Histogram>,
    pub digests_queried: Family<MemberLabels, Counter>,
    pub digests_matched: Family<MemberLabels, Counter>,
    pub flags_created: Family<MemberLabels, Counter>,
    pub flags_updated: Family<MemberLabels, Counter>,
    pub flags_retracted: Family<MemberLabels, Counter>,
    pub flags_expired: Counter,
    pub flags_quarantined: Family<MemberLabels, Counter>,
    pub limit_refusals: Family<LimitLabels, Counter>,
    pub connections_refused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("flagshare");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpcs",
            "RPCs answered, by service, method and gRPC status code",
            rpcs.clone(),
        );
        let rpc_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(|| Histogram::new(histogram_buckets()));
        registry.register(
            "rpc_duration_seconds",
            "Time to answer a unary RPC, from request to the end of the response",
            rpc_seconds.clone(),
        );
        let family = || Family::<MemberLabels, Counter>::default();
        let (digests_queried, digests_matched) = (family(), family());
        let (flags_created, flags_updated, flags_retracted) = (family(), family(), family());
        registry.register(
            "digests_queried",
            "Digests a member looked up (Query, QueryStream)",
            digests_queried.clone(),
        );
        registry.register(
            "digests_matched",
            "Looked-up digests that matched a live flag",
            digests_matched.clone(),
        );
        registry.register(
            "flags_created",
            "Flags a member raised that did not exist before",
            flags_created.clone(),
        );
        registry.register(
            "flags_updated",
            "Flags a member submitted again (updated)",
            flags_updated.clone(),
        );
        registry.register("flags_retracted", "Flags a member retracted", flags_retracted.clone());
        let flags_expired = Counter::default();
        registry.register(
            "flags_expired",
            "Flags removed by the expiry purge",
            flags_expired.clone(),
        );
        let flags_quarantined = family();
        registry.register(
            "flags_quarantined",
            "New flags of a member held back by the flood quarantine",
            flags_quarantined.clone(),
        );
        let limit_refusals = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limit_refusals",
            "Calls refused because a principal was over one of its limits",
            limit_refusals.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because max_connections were open",
            connections_refused.clone(),
        );
        Arc::new(Metrics {
            registry,
            limit_refusals,
            connections_refused,
            flags_quarantined,
            rpcs,
            rpc_seconds,
            digests_queried,
            digests_matched,
            flags_created,
            flags_updated,
            flags_retracted,
            flags_expired,
        })
    }

    pub fn member(name: &str) -> MemberLabels {
        MemberLabels {
            member: name.to_owned(),
        }
    }

    /// The text exposition of the counters and of `state`, read at this moment.
    pub fn render(&self, state: &Scraped) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoding error would be a bug in the crate.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &state.registry());
        text
    }
}

/// One federation peer as the scrape sees it.
pub struct PeerReading {
    pub name: String,
    pub state: String,
    pub lag_events: u64,
    /// Seconds since the last batch from the peer was applied, while it has events we
    /// lack; 0 when caught up.
    pub lag_seconds: i64,
    pub applied: u64,
    pub rejected: u64,
}

/// A node of a replicated operator as the scrape sees itself and its cluster.
pub struct ClusterReading {
    pub leads: bool,
    pub leader_known: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Whether it answers reads (in touch with its cluster within its staleness bound).
    pub serving_reads: bool,
    /// Read-index rounds run for reads while it led and its lease had lapsed.
    pub read_index_rounds: u64,
    /// On the leader: each node's id and how many entries it lacks.
    pub lags: Vec<(u64, u64)>,
}

/// A node of the cluster (its `node_id`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

/// What is read off the server's state at scrape time.
#[derive(Default)]
pub struct Scraped {
    pub peers: Vec<PeerReading>,
    /// With a replicated log only.
    pub cluster: Option<ClusterReading>,
    pub rocks: crate::store::RocksReading,
    /// (certificate, principal, expiry as Unix seconds): `ca` and `server` with no
    /// principal, `client` with each principal's name.
    pub certificates: Vec<(String, String, i64)>,
}

impl Scraped {
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("flagshare");
        let peer_up = Family::<PeerStateLabels, Gauge>::default();
        let lag_events = Family::<PeerLabels, Gauge>::default();
        let lag_seconds = Family::<PeerLabels, Gauge>::default();
        let applied = Family::<PeerLabels, Counter>::default();
        let rejected = Family::<PeerLabels, Counter>::default();
        for peer in &self.peers {
            let name = || PeerLabels {
                peer: peer.name.clone(),
            };
            peer_up
                .get_or_create(&PeerStateLabels {
                    peer: peer.name.clone(),
                    state: peer.state.clone(),
                })
                .set(1);
            lag_events.get_or_create(&name()).set(saturating_i64(peer.lag_events));
            lag_seconds.get_or_create(&name()).set(peer.lag_seconds);
            applied.get_or_create(&name()).inc_by(peer.applied);
            rejected.get_or_create(&name()).inc_by(peer.rejected);
        }
        registry.register(
            "peer_state",
            "1 for each federation peer, labelled with its sync state (streaming, connecting, backoff, paused, idle, stopped)",
            peer_up,
        );
        registry.register(
            "peer_lag_events",
            "Events of the peer's change log not applied here yet, as of its last batch",
            lag_events,
        );
        registry.register(
            "peer_lag_seconds",
            "Seconds since the last batch from a peer that has events not applied here; 0 when caught up",
            lag_seconds,
        );
        registry.register(
            "peer_events_applied",
            "Events from the peer applied since this server started",
            applied,
        );
        registry.register(
            "peer_events_rejected",
            "Events from the peer refused, ever (kept across restarts)",
            rejected,
        );
        let gauge = |value: u64| {
            let gauge = Gauge::<i64>::default();
            gauge.set(saturating_i64(value));
            gauge
        };
        // Totals kept elsewhere since start, exposed as counters.
        let counter = |value: u64| {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            counter
        };
        registry.register(
            "rocksdb_live_sst_bytes",
            "Bytes of the SST files the database currently uses",
            gauge(self.rocks.live_sst_bytes),
        );
        registry.register(
            "rocksdb_pending_compaction_bytes",
            "Bytes RocksDB estimates compaction still has to rewrite",
            gauge(self.rocks.pending_compaction_bytes),
        );
        registry.register(
            "rocksdb_running_compactions",
            "Compactions RocksDB is running now",
            gauge(self.rocks.running_compactions),
        );
        registry.register(
            "rocksdb_delayed_write_rate",
            "Bytes per second RocksDB slows writes to while compaction catches up; 0 when it does not",
            gauge(self.rocks.delayed_write_rate),
        );
        registry.register(
            "presence_filter_bytes",
            "Bytes of the in-memory filter of stored digests that answers most misses without RocksDB",
            gauge(self.rocks.presence_bytes),
        );
        registry.register(
            "presence_filters",
            "Filters of stored digests a lookup probes: one, until growth adds another, folded in once no import runs",
            gauge(self.rocks.presence_filters),
        );
        registry.register(
            "presence_filter_ready",
            "1 once the filter of stored digests holds every one (a scan after start), else 0",
            gauge(u64::from(self.rocks.presence_ready)),
        );
        // Tickers exist only with rocksdb_statistics on.
        if let (Some(hits), Some(misses)) = (self.rocks.block_cache_hits, self.rocks.block_cache_misses) {
            registry.register(
                "rocksdb_block_cache_hits",
                "Block cache hits since start",
                counter(hits),
            );
            registry.register(
                "rocksdb_block_cache_misses",
                "Block cache misses since start",
                counter(misses),
            );
            let ratio = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            ratio.set(if hits + misses == 0 {
                1.0
            } else {
                hits as f64 / (hits + misses) as f64
            });
            registry.register(
                "rocksdb_block_cache_hit_ratio",
                "Block cache hits over lookups since start",
                ratio,
            );
        }
        if let Some(stall_micros) = self.rocks.stall_micros {
            registry.register(
                "rocksdb_stall_microseconds",
                "Microseconds writes were stalled by RocksDB since start",
                counter(stall_micros),
            );
        }
        registry.register(
            "rocksdb_write_stopped",
            "1 while RocksDB stops writes (too many files waiting for compaction)",
            gauge(self.rocks.write_stopped),
        );
        registry.register(
            "disk_bytes",
            "Bytes of the database's files on disk",
            gauge(self.rocks.disk_bytes),
        );
        if let Some(cluster) = &self.cluster {
            registry.register(
                "cluster_leader",
                "1 while this node leads its cluster, else 0",
                gauge(u64::from(cluster.leads)),
            );
            registry.register(
                "cluster_leader_known",
                "1 while this node knows a leader of its cluster (itself included), else 0",
                gauge(u64::from(cluster.leader_known)),
            );
            registry.register("cluster_term", "This node's Raft term", gauge(cluster.term));
            registry.register(
                "cluster_last_log_index",
                "The last entry of this node's Raft log",
                gauge(cluster.last_log_index),
            );
            registry.register(
                "cluster_applied_index",
                "The last entry this node applied",
                gauge(cluster.applied_index),
            );
            registry.register(
                "cluster_serving_reads",
                "1 while this node answers reads (in touch with its cluster within max_staleness_secs), else 0",
                gauge(u64::from(cluster.serving_reads)),
            );
            registry.register(
                "cluster_read_index_rounds",
                "Rounds of heartbeats this node ran as leader to confirm it still leads before reads (its lease had lapsed); concurrent reads share one",
                counter(cluster.read_index_rounds),
            );
            let lags = Family::<NodeLabels, Gauge>::default();
            for (node, lag) in &cluster.lags {
                lags.get_or_create(&NodeLabels { node: node.to_string() })
                    .set(saturating_i64(*lag));
            }
            registry.register(
                "cluster_node_lag_entries",
                "On the leader: the entries each node of the cluster lacks",
                lags,
            );
        }
        let expiry = Family::<CertificateLabels, Gauge>::default();
        for (certificate, principal, not_after) in &self.certificates {
            expiry
                .get_or_create(&CertificateLabels {
                    certificate: certificate.clone(),
                    principal: principal.clone(),
                })
                .set(*not_after);
        }
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When a certificate stops being valid (Unix seconds): the CA, the server's, and each principal's (client)",
            expiry,
        );
        registry
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Methods whose responses are streams: their duration is a session's, not a latency.
const STREAMING_METHODS: [&str; 5] = ["QueryStream", "Subscribe", "Pull", "Watch", "ServerReflectionInfo"];

fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "ok",
        b"1" => "cancelled",
        b"2" => "unknown",
        b"3" => "invalid_argument",
        b"4" => "deadline_exceeded",
        b"5" => "not_found",
        b"6" => "already_exists",
        b"7" => "permission_denied",
        b"8" => "resource_exhausted",
        b"9" => "failed_precondition",
        b"10" => "aborted",
        b"11" => "out_of_range",
        b"12" => "unimplemented",
        b"13" => "internal",
        b"14" => "unavailable",
        b"15" => "data_loss",
        b"16" => "unauthenticated",
        _ => "other",
    }
}

/// Counts every RPC by its final status and times the unary ones. The status of a call
/// is in its trailers (or, for a refusal before any message, its headers), so the
/// response body is wrapped to see them.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> RpcMetricsLayer {
        RpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// One call being measured: recorded once, when its status is known or it is dropped.
struct Call {
    metrics: Arc<Metrics>,
    labels: MethodLabels,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        self.metrics
            .rpcs
            .get_or_create(&RpcLabels {
                service: self.labels.service.clone(),
                method: self.labels.method.clone(),
                code,
            })
            .inc();
        if !STREAMING_METHODS.contains(&self.labels.method.as_str()) {
            self.metrics
                .rpc_seconds
                .get_or_create(&self.labels)
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The response ended without a status: the client went away.
        self.finish("cancelled");
    }
}

fn method_labels(path: &str) -> MethodLabels {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    MethodLabels {
        service: service.to_owned(),
        method: method.to_owned(),
    }
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut call = Call {
            metrics: self.metrics.clone(),
            labels: method_labels(request.uri().path()),
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = response.headers().get("grpc-status") {
                call.finish(code_name(code.as_bytes()));
            }
            Ok(response.map(|body| tonic::body::Body::new(MeasuredBody { inner: body, call })))
        })
    }
}

pin_project_lite::pin_project! {
    struct MeasuredBody {
        #[pin]
        inner: tonic::body::Body,
        call: Call,
    }
}

impl http_body::Body for MeasuredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|trailers| trailers.get("grpc-status")) {
                    this.call.finish(code_name(code.as_bytes()));
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish("internal"),
            Poll::Ready(None) => this.call.finish("ok"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `GET /metrics` on `listener` until `stopping` turns true. `scrape` gathers what
/// is read at scrape time.
/// Connections the metrics listener holds at once: more are closed at accept. A scraper
/// needs one; the bound keeps whoever can reach the port from holding sockets and tasks
/// without end (with HTTP/1.1, one request at a time per connection, it bounds scrapes too).
pub const MAX_METRICS_CONNECTIONS: usize = 8;
/// A metrics connection from which nothing arrives for this long is closed.
pub const METRICS_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The metrics listener with its bounds: `MAX_METRICS_CONNECTIONS` at once, each closed
/// after `METRICS_IDLE` without a byte from its client.
struct BoundedListener {
    inner: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl axum::serve::Listener for BoundedListener {
    type Io = crate::server::idle::IdleTimeout<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, address) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::debug!(%err, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    return (
                        crate::server::idle::IdleTimeout::new(stream, METRICS_IDLE).holding(slot),
                        address,
                    );
                }
                Err(_) => tracing::debug!(%address, "metrics connections at their bound; closing a new one"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub async fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    scrape: F,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Scraped> + Send,
{
    let handler = move || {
        let metrics = metrics.clone();
        let scrape = scrape.clone();
        async move {
            let state = scrape().await;
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                metrics.render(&state),
            )
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(handler));
    let listener = BoundedListener {
        inner: listener,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS)),
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .await
}
