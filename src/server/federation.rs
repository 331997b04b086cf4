//! Federation over gRPC: the `Federation.Pull` service that peers pull this server's
//! changes from, and `Peers`, which runs one sync task per configured peer to pull theirs.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::client::Bundle;
use crate::domain::{Domain, PeerRecord};
use crate::model::Role;
use crate::pb;
use crate::pb::federation_client::FederationClient;

use super::convert::{self, status_from_error};
use super::identity::authorize;

/// Default and largest events per pulled batch.
const DEFAULT_PULL_BATCH: u32 = 5_000;
/// How often a caught-up stream looks for new changes, and sends an empty batch (so the
/// puller's lag and last-sync stay current) when idle this long.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct FederationService {
    pub domain: Domain,
    /// Set when the server stops: open pull streams end, so shutdown does not wait on them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullBatch, Status>> + Send>>;

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    type PullStream = PullStream;

    async fn pull(&self, request: Request<pb::PullRequest>) -> Result<Response<PullStream>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Peer])?;
        let request = request.into_inner();
        let max = match request.max_batch {
            0 => DEFAULT_PULL_BATCH,
            n if n as usize <= crate::domain::federation::MAX_PULL_BATCH => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "max_batch: {n} is above {}",
                    crate::domain::federation::MAX_PULL_BATCH
                )));
            }
        } as usize;
        self.domain
            .record_pull(caller.clone(), request.after)
            .await
            .map_err(status_from_error)?;
        tracing::info!(peer = %caller.name, after = request.after, "peer started pulling");
        let (sender, receiver) = mpsc::channel(4);
        let domain = self.domain.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut cursor = request.after;
            let mut idle = Duration::ZERO;
            loop {
                if *stopping.borrow() {
                    return;
                }
                let batch = match domain.outgoing(caller.clone(), cursor, max).await {
                    Ok(batch) => batch,
                    Err(err) => {
                        let _ = sender.send(Err(status_from_error(err))).await;
                        return;
                    }
                };
                let advanced = batch.cursor > cursor;
                if advanced || idle >= HEARTBEAT {
                    idle = Duration::ZERO;
                    cursor = batch.cursor;
                    let message = pb::PullBatch {
                        cursor: batch.cursor,
                        head: batch.head,
                        events: batch.events.into_iter().map(convert::event_to_pb).collect(),
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return; // the peer went away
                    }
                }
                if !advanced {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL_INTERVAL) => idle += POLL_INTERVAL,
                        _ = stopping.changed() => return,
                    }
                }
            }
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
        let mut current = self.state.lock().expect("peer state lock poisoned");
        if *current != state {
            match error {
                Some(error) => tracing::warn!(peer, state, error, "federation peer state changed"),
                None => tracing::info!(peer, state, "federation peer state changed"),
            }
            *current = state.to_owned();
        }
        if let Some(error) = error {
            *self.last_error.lock().expect("peer error lock poisoned") = error.to_owned();
        }
    }

    pub fn state(&self) -> String {
        self.state.lock().expect("peer state lock poisoned").clone()
    }

    pub fn last_error(&self) -> String {
        self.last_error.lock().expect("peer error lock poisoned").clone()
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
}

impl Peers {
    pub fn new(domain: Domain, stopping: tokio::sync::watch::Receiver<bool>) -> Arc<Peers> {
        Arc::new(Peers {
            domain,
            tasks: Mutex::new(HashMap::new()),
            stopping,
        })
    }

    /// Starts the tasks of every stored peer.
    pub async fn start_all(self: &Arc<Self>) -> crate::error::Result<()> {
        for peer in self.domain.peers().await? {
            self.restart(&peer);
        }
        Ok(())
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
        self.tasks
            .lock()
            .expect("peer tasks lock poisoned")
            .insert(name.to_owned(), (task, progress));
    }

    pub fn stop(&self, name: &str) {
        if let Some((task, _)) = self.tasks.lock().expect("peer tasks lock poisoned").remove(name) {
            task.abort();
        }
    }

    /// Waits for every task to end; call after `stopping` was set.
    pub async fn join_all(&self) {
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .expect("peer tasks lock poisoned")
            .drain()
            .map(|(_, (task, _))| task)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    pub fn progress(&self, name: &str) -> Option<Arc<PeerProgress>> {
        self.tasks
            .lock()
            .expect("peer tasks lock poisoned")
            .get(name)
            .map(|(_, progress)| progress.clone())
    }
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
            progress.set_state(&name, "paused", None);
            return; // configuration changes restart the task
        }
        progress.set_state(&name, "connecting", None);
        match sync_once(&domain, &peer, &progress, &mut stopping).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(err) => {
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

/// Pulls from `peer` until the stream ends or fails; each batch is applied together with
/// the new cursor, so a crash never skips or repeats an event.
async fn sync_once(
    domain: &Domain,
    peer: &PeerRecord,
    progress: &PeerProgress,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let bundle = Bundle::load(std::path::Path::new(&peer.bundle_dir)).map_err(|err| err.to_string())?;
    let channel = bundle
        .connect(Some(&peer.endpoint))
        .await
        .map_err(|err| crate::client::error_chain(&err))?;
    let mut client = FederationClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .pull(pb::PullRequest {
            after: peer.cursor,
            max_batch: DEFAULT_PULL_BATCH,
        })
        .await
        .map_err(|status| format!("pull refused: {} ({:?})", status.message(), status.code()))?
        .into_inner();
    progress.set_state(&peer.name, "streaming", None);
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = stopping.changed() => return Ok(()),
        };
        let batch = match message {
            Ok(Some(batch)) => batch,
            Ok(None) => return Err("the peer closed the stream".to_owned()),
            Err(status) => return Err(format!("stream failed: {} ({:?})", status.message(), status.code())),
        };
        progress.head.store(batch.head, Ordering::Relaxed);
        progress
            .received
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        let events = batch.events.into_iter().map(convert::event_from_pb).collect();
        let outcome = domain
            .apply_federated(peer.name.clone(), events, batch.cursor)
            .await
            .map_err(|err| format!("applying a batch failed: {err}"))?;
        progress.applied.fetch_add(outcome.applied, Ordering::Relaxed);
        progress.rejected.fetch_add(outcome.rejected, Ordering::Relaxed);
    }
}
