//! Federation over gRPC: the `Federation.Pull` service that peers pull this server's
//! changes from, and `Peers`, which runs one sync task per configured peer to pull theirs.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::client::Bundle;
use crate::domain::federation::MAX_PULL_BATCH;
use crate::domain::{Domain, PeerRecord};
use crate::model::Role;
use crate::pb;
use crate::pb::federation_client::FederationClient;

use super::convert;
use super::identity::authorize;
use super::streams::{self, Outbox, Step, StreamLimits};

/// Default events per pulled batch.
const DEFAULT_PULL_BATCH: u32 = 5_000;
/// An empty batch is sent when a caught-up stream was idle this long, so the puller's lag
/// and last-sync stay current.
const HEARTBEAT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest pulled batch message accepted, in bytes: 10,000 events of a few hundred bytes.
pub const MAX_PULL_MESSAGE_BYTES: usize = 16 << 20;

pub struct FederationService {
    pub domain: Domain,
    /// Set when the server stops: open pull streams end, so shutdown does not wait on them.
    pub stopping: watch::Receiver<bool>,
    pub streams: Arc<StreamLimits>,
    /// This database's identity, sent with every batch.
    pub db_identity: [u8; 8],
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullBatch, Status>> + Send>>;

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    type PullStream = PullStream;

    async fn pull(&self, request: Request<pb::PullRequest>) -> Result<Response<PullStream>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Peer])?;
        let request = request.into_inner();
        let max = match request.max_batch {
            0 => DEFAULT_PULL_BATCH as usize,
            n if n as usize <= MAX_PULL_BATCH => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "max_batch: {n} is above {MAX_PULL_BATCH}"
                )));
            }
        };
        if !request.db_identity.is_empty() && request.db_identity != self.db_identity {
            return Err(Status::out_of_range(
                "db_identity: this server's database was restored or replaced since that cursor; pull again from 0",
            ));
        }
        let permit = self.streams.acquire(&caller)?;
        let horizon_at_start = self.domain.stream_start(request.after).await?;
        self.domain.record_pull(caller.clone(), request.after).await?;
        tracing::info!(peer = %caller.name, after = request.after, "peer started pulling");
        let (sender, receiver) = mpsc::channel(streams::STREAM_BUFFER);
        let outbox = Outbox::new(sender, self.stopping.clone());
        let domain = self.domain.clone();
        let db_identity = self.db_identity.to_vec();
        // Milliseconds since the last batch sent; each step that finds nothing new is
        // followed by one poll interval of waiting.
        let idle_ms = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            let _permit = permit;
            let tail_domain = domain.clone();
            let tail_caller = caller.clone();
            streams::tail(domain, caller, outbox, request.after, move |cursor| {
                let domain = tail_domain.clone();
                let caller = tail_caller.clone();
                let db_identity = db_identity.clone();
                let idle_ms = idle_ms.clone();
                async move {
                    let heartbeat = idle_ms.load(Ordering::Relaxed) >= HEARTBEAT.as_millis() as u64;
                    let batch = domain
                        .outgoing(caller, cursor, horizon_at_start, max, request.signed)
                        .await?;
                    let advanced = batch.cursor > cursor;
                    let message = (advanced || heartbeat).then(|| pb::PullBatch {
                        cursor: batch.cursor,
                        head: batch.head,
                        events: batch.events.into_iter().map(convert::event_to_pb).collect(),
                        db_identity,
                    });
                    if message.is_some() {
                        idle_ms.store(0, Ordering::Relaxed);
                    } else {
                        idle_ms.fetch_add(streams::POLL_INTERVAL.as_millis() as u64, Ordering::Relaxed);
                    }
                    Ok(Step {
                        message,
                        position: batch.cursor,
                        advanced,
                    })
                }
            })
            .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// What a sync task reports, for `admin peer list`.
#[derive(Default)]
pub struct PeerProgress {
    pub state: Mutex<String>,
    pub last_error: Mutex<String>,
    /// The peer's newest sequence number, as of the last batch.
    pub head: AtomicU64,
    pub received: AtomicU64,
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
}

impl PeerProgress {
    fn set_state(&self, peer: &str, state: &str, error: Option<&str>) {
        let mut current = self.state.lock();
        if *current != state {
            match error {
                Some(error) => tracing::warn!(peer, state, error, "federation peer state changed"),
                None => tracing::info!(peer, state, "federation peer state changed"),
            }
            *current = state.to_owned();
        }
        if let Some(error) = error {
            *self.last_error.lock() = error.to_owned();
        }
    }

    pub fn state(&self) -> String {
        self.state.lock().clone()
    }

    pub fn last_error(&self) -> String {
        self.last_error.lock().clone()
    }
}

/// A peer's sync task and what it reports.
type PeerTask = (JoinHandle<()>, Arc<PeerProgress>);

/// One sync task per peer that has an endpoint.
pub struct Peers {
    domain: Domain,
    tasks: Mutex<HashMap<String, PeerTask>>,
    /// Set when the server stops: tasks finish the batch in hand and end.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Whether the running pulls ask for signed events (this server passes flags on).
    signing: std::sync::atomic::AtomicBool,
}

impl Peers {
    pub fn new(domain: Domain, stopping: tokio::sync::watch::Receiver<bool>) -> Arc<Peers> {
        Arc::new(Peers {
            domain,
            tasks: Mutex::new(HashMap::new()),
            stopping,
            signing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the tasks of every stored peer.
    pub async fn start_all(self: &Arc<Self>) -> crate::error::Result<()> {
        self.signing
            .store(self.domain.wants_signatures().await?, Ordering::Relaxed);
        for peer in self.domain.peers().await? {
            self.restart(&peer);
        }
        Ok(())
    }

    /// After `changed` was configured: restarts its task, and every pulling peer's too when
    /// whether this server passes flags on changed (a pull asks for signed events only when
    /// it does, and the question is asked when the stream opens).
    pub async fn reconfigured(self: &Arc<Self>, changed: &PeerRecord) -> crate::error::Result<()> {
        let wanted = self.domain.wants_signatures().await?;
        if self.signing.swap(wanted, Ordering::Relaxed) == wanted {
            self.restart(changed);
            return Ok(());
        }
        self.start_all().await
    }

    /// (Re)starts the sync task of `peer` after its configuration changed.
    pub fn restart(self: &Arc<Self>, peer: &PeerRecord) {
        self.stop(&peer.name);
        let progress = Arc::new(PeerProgress::default());
        if !peer.pulls() {
            progress.set_state(&peer.name, "idle", None);
            self.insert(&peer.name, tokio::spawn(async {}), progress);
            return;
        }
        let task = tokio::spawn(sync_loop(
            self.domain.clone(),
            peer.name.clone(),
            progress.clone(),
            self.stopping.clone(),
        ));
        self.insert(&peer.name, task, progress);
    }

    fn insert(&self, name: &str, task: JoinHandle<()>, progress: Arc<PeerProgress>) {
        self.tasks.lock().insert(name.to_owned(), (task, progress));
    }

    pub fn stop(&self, name: &str) {
        if let Some((task, _)) = self.tasks.lock().remove(name) {
            task.abort();
        }
    }

    /// Waits for every task to end; call after `stopping` was set.
    pub async fn join_all(&self) {
        let tasks: Vec<_> = self.tasks.lock().drain().map(|(_, (task, _))| task).collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    pub fn progress(&self, name: &str) -> Option<Arc<PeerProgress>> {
        self.tasks.lock().get(name).map(|(_, progress)| progress.clone())
    }

    /// What `record`'s sync task reports now: for `admin peer list` and the metrics.
    pub fn live(&self, record: &crate::domain::PeerRecord) -> PeerLive {
        let Some(progress) = self.progress(&record.name) else {
            return PeerLive {
                state: "stopped".to_owned(),
                ..PeerLive::default()
            };
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PeerLive {
            state: progress.state(),
            lag: load(&progress.head).saturating_sub(record.cursor),
            received: load(&progress.received),
            applied: load(&progress.applied),
            last_error: progress.last_error(),
        }
    }
}

/// A peer's sync task, read once.
#[derive(Debug, Default)]
pub struct PeerLive {
    pub state: String,
    /// Events of the peer's change log not applied here, as of its last batch.
    pub lag: u64,
    pub received: u64,
    pub applied: u64,
    pub last_error: String,
}

async fn sync_loop(
    domain: Domain,
    name: String,
    progress: Arc<PeerProgress>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if *stopping.borrow() {
            return;
        }
        let peer = match domain.peer(name.clone()).await {
            Ok(Some(peer)) => peer,
            Ok(None) => return,
            Err(err) => {
                progress.set_state(&name, "backoff", Some(&err.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(MAX_BACKOFF) => continue,
                    _ = stopping.changed() => return,
                }
            }
        };
        if peer.paused {
            let reason = (!peer.pause_reason.is_empty()).then_some(peer.pause_reason.as_str());
            progress.set_state(&name, "paused", reason);
            return; // configuration changes restart the task
        }
        progress.set_state(&name, "connecting", None);
        match sync_once(&domain, &peer, &progress, &mut stopping).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(SyncError::Resnapshot(reason)) => {
                // The peer cannot continue our cursor (its database was restored or
                // replaced): start again from 0, at once.
                progress.set_state(&name, "resnapshot", Some(&reason));
                if let Err(err) = domain.reset_peer_cursor(name.clone(), reason).await {
                    progress.set_state(&name, "backoff", Some(&err.to_string()));
                }
            }
            Err(SyncError::Paused) => {
                progress.set_state(&name, "paused", None);
                continue;
            }
            Err(SyncError::Failed(err)) => {
                progress.set_state(&name, "backoff", Some(&err));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Why one pull stream ended.
enum SyncError {
    /// The peer cannot continue the cursor: pull again from 0.
    Resnapshot(String),
    /// The server paused the peer (it sent only refused events).
    Paused,
    Failed(String),
}

impl From<String> for SyncError {
    fn from(reason: String) -> SyncError {
        SyncError::Failed(reason)
    }
}

/// Pulls from `peer` until the stream ends or fails; each batch is applied together with
/// the new cursor, so a crash never skips or repeats an event.
async fn sync_once(
    domain: &Domain,
    peer: &PeerRecord,
    progress: &PeerProgress,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let bundle = Bundle::load(std::path::Path::new(&peer.bundle_dir)).map_err(|err| err.to_string())?;
    let channel = bundle
        .connect(Some(&peer.endpoint))
        .await
        .map_err(|err| crate::client::error_chain(&err))?;
    let mut client = FederationClient::new(channel).max_decoding_message_size(MAX_PULL_MESSAGE_BYTES);
    let db_identity = if peer.cursor == 0 {
        Vec::new()
    } else {
        hex::decode(&peer.remote_db_identity).unwrap_or_default()
    };
    let mut stream = match client
        .pull(pb::PullRequest {
            after: peer.cursor,
            max_batch: DEFAULT_PULL_BATCH,
            db_identity,
            signed: domain.wants_signatures().await.map_err(|err| err.to_string())?,
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::OutOfRange => {
            return Err(SyncError::Resnapshot(status.message().to_owned()));
        }
        Err(status) => {
            return Err(SyncError::Failed(format!(
                "pull refused: {} ({:?})",
                status.message(),
                status.code()
            )));
        }
    };
    progress.set_state(&peer.name, "streaming", None);
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = stopping.changed() => return Ok(()),
        };
        let batch = match message {
            Ok(Some(batch)) => batch,
            Ok(None) => return Err(SyncError::Failed("the peer closed the stream".to_owned())),
            Err(status) => {
                return Err(SyncError::Failed(format!(
                    "stream failed: {} ({:?})",
                    status.message(),
                    status.code()
                )));
            }
        };
        progress.head.store(batch.head, Ordering::Relaxed);
        progress
            .received
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        let events = batch.events.into_iter().map(convert::event_from_pb).collect();
        let db_identity = hex::encode(&batch.db_identity);
        let outcome = domain
            .apply_federated(peer.name.clone(), events, batch.cursor, db_identity)
            .await
            .map_err(|err| format!("applying a batch failed: {err}"))?;
        progress.applied.fetch_add(outcome.applied, Ordering::Relaxed);
        progress.rejected.fetch_add(outcome.rejected, Ordering::Relaxed);
        if outcome.paused {
            return Err(SyncError::Paused);
        }
    }
}
