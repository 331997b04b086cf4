//! What every long-lived response stream shares: a bound on how many one principal holds
//! open, and one loop that tails the change log, sends with a deadline, and ends on
//! shutdown, on a credential change, or when the reader is gone.
//!
//! A stream never holds a thread: work is done in short blocking chunks between awaits,
//! and a reader that stops reading costs its channel (a few batches) and nothing more; after
//! `SEND_STALL` without progress the stream is ended.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::domain::{Caller, Domain};
use crate::model::PrincipalId;

/// How often a caught-up stream looks for new changes (and re-checks its caller's
/// credentials).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A stream whose reader accepts nothing for this long is ended: its buffers are freed.
pub const SEND_STALL: Duration = Duration::from_secs(60);
/// Batches buffered per stream beyond what HTTP/2 flow control holds.
pub const STREAM_BUFFER: usize = 1;

/// Open streams per principal (`Subscribe`, `QueryStream` and `Pull` together).
pub struct StreamLimits {
    /// Each principal's `streams` limit (its role's default or its override).
    limits: Arc<super::limits::Limits>,
    open: Mutex<HashMap<PrincipalId, usize>>,
}

/// One open stream of a principal; dropping it frees the slot.
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    principal: PrincipalId,
}

impl StreamLimits {
    pub fn new(limits: Arc<super::limits::Limits>) -> Arc<StreamLimits> {
        Arc::new(StreamLimits {
            limits,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more stream of `caller`, or RESOURCE_EXHAUSTED naming the limit.
    pub fn acquire(self: &Arc<Self>, caller: &Caller) -> Result<StreamPermit, Status> {
        let max = self.limits.effective(&caller.name, caller.role).streams as usize;
        let mut open = self.open.lock();
        let n_open = open.entry(caller.id).or_default();
        if *n_open >= max {
            return Err(Status::resource_exhausted(format!(
                "streams: '{}' already has {} streams open, the most it may hold (its streams limit, by default max_streams_per_principal); close one first",
                caller.name, n_open
            )));
        }
        *n_open += 1;
        Ok(StreamPermit {
            limits: self.clone(),
            principal: caller.id,
        })
    }

    /// Streams `principal` holds open now.
    pub fn n_open(&self, principal: PrincipalId) -> usize {
        self.open.lock().get(&principal).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        if let Some(n_open) = open.get_mut(&self.principal) {
            *n_open = n_open.saturating_sub(1);
            if *n_open == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// Why a stream's sender stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The reader went away, or stopped reading for `SEND_STALL`.
    Reader,
    /// The server is shutting down.
    Shutdown,
}

/// The sending half of a response stream, with the shutdown signal it watches.
pub struct Outbox<T> {
    sender: mpsc::Sender<Result<T, Status>>,
    stopping: watch::Receiver<bool>,
}

impl<T> Outbox<T> {
    pub fn new(sender: mpsc::Sender<Result<T, Status>>, stopping: watch::Receiver<bool>) -> Outbox<T> {
        Outbox { sender, stopping }
    }

    pub fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Sends one item; gives up on shutdown, when the reader is gone, or after
    /// `SEND_STALL` without room.
    pub async fn send(&mut self, item: Result<T, Status>) -> Result<(), Stopped> {
        if self.stopping() {
            return Err(Stopped::Shutdown);
        }
        tokio::select! {
            sent = tokio::time::timeout(SEND_STALL, self.sender.send(item)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(Stopped::Reader),
            },
            _ = self.stopping.changed() => Err(Stopped::Shutdown),
        }
    }

    /// Sends a final error status (best effort) and ends.
    pub async fn fail(mut self, status: Status) {
        let _ = self.send(Err(status)).await;
    }

    /// Resolves once shutdown begins.
    pub async fn until_shutdown(&mut self) {
        let _ = self.stopping.wait_for(|stopping| *stopping).await;
    }

    /// Waits `delay`, or less when shutdown begins; false on shutdown.
    pub async fn pause(&mut self, delay: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.stopping.changed() => false,
        }
    }
}

/// One step of a tail: what to send (if anything), the position reached, and whether it
/// moved (a stream that did not move waits `POLL_INTERVAL` before the next step).
pub struct Step<T> {
    pub message: Option<T>,
    pub position: u64,
    pub advanced: bool,
}

/// Tails the change log from `position` for `caller`: before each step the caller's
/// credentials are checked again (a suspension, removal or certificate rotation ends the
/// stream within a poll), then `step` reads the next piece. Ends on shutdown, when the
/// reader goes, or with the first error as the stream's status.
pub async fn tail<T, F, Fut>(domain: Domain, caller: Caller, mut outbox: Outbox<T>, mut position: u64, mut step: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = crate::error::Result<Step<T>>>,
{
    loop {
        if outbox.stopping() {
            return;
        }
        if let Err(err) = domain.reauthorize(&caller) {
            return outbox.fail(err.into()).await;
        }
        let next = match step(position).await {
            Ok(next) => next,
            Err(err) => return outbox.fail(err.into()).await,
        };
        position = next.position;
        if let Some(message) = next.message
            && outbox.send(Ok(message)).await.is_err()
        {
            return;
        }
        if !next.advanced && !outbox.pause(POLL_INTERVAL).await {
            return;
        }
    }
}
