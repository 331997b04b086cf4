//! The `Flags` service for member platforms. Thin: identify, convert, call the domain.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::limits::{Limit, Limits};
use crate::domain::feed::{FeedItem, decode_cursor, encode_cursor};
use crate::domain::{Caller, Domain};
use crate::metrics::Metrics;
use crate::model::Role;
use crate::pb;
use crate::wire;

use super::convert::{self, feed_item_to_pb};
use super::identity::{ON_BEHALF_OF, authorize};
use super::streams::{self, Outbox, Step, StreamLimits, StreamPermit};
use crate::cluster::forward::{FORWARD_TIMEOUT, Leader};

pub struct FlagsService {
    pub domain: Domain,
    /// Set when the server stops: open streams end, so shutdown does not wait on them.
    pub stopping: watch::Receiver<bool>,
    pub streams: Arc<StreamLimits>,
    /// This database's identity, carried by every feed cursor.
    pub db_identity: [u8; 8],
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    /// Imports running at once, server-wide (`IMPORT_SLOTS`): each holds up to a block of
    /// flags in memory.
    pub imports: Arc<tokio::sync::Semaphore>,
    /// An import that sends nothing for this long is ended.
    pub import_idle: std::time::Duration,
    /// On a node of a replicated cluster: the leader, where members' writes go while
    /// another node leads.
    pub leader: Option<Arc<Leader>>,
    /// Cleared while this node has been cut off from its cluster for longer than
    /// `max_staleness_secs` (`server::watch_staleness`): its reads are refused then.
    pub fresh: Arc<std::sync::atomic::AtomicBool>,
}

/// Whether this node's answers are as fresh as its cluster promises.
#[derive(Clone)]
struct Freshness {
    fresh: Arc<std::sync::atomic::AtomicBool>,
    leader: Option<Arc<Leader>>,
}

impl Freshness {
    /// Fails while this node's data may be staler than its cluster allows: on a
    /// follower, cut off past the staleness bound; on the leader, when it cannot confirm
    /// that it still leads (its reads are linearizable, `Leader::confirm_read`).
    async fn check(&self) -> Result<(), Status> {
        if !self.fresh.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Status::unavailable(
                "this node has been cut off from its cluster for longer than its staleness bound; ask another node",
            ));
        }
        if let Some(leader) = &self.leader {
            leader.confirm_read().await?;
        }
        Ok(())
    }
}

impl FlagsService {
    fn freshness(&self) -> Freshness {
        Freshness {
            fresh: self.fresh.clone(),
            leader: self.leader.clone(),
        }
    }

    async fn check_fresh(&self) -> Result<(), Status> {
        self.freshness().check().await
    }

    /// The leader when it is another node: a member's write sent here goes on to it.
    /// This node, leading, takes it only while a majority hears it (`check_majority`). A
    /// call another node forwarded is not forwarded again (it could only travel in a
    /// circle while two nodes disagree on who leads): it is refused instead.
    fn forward_to<T>(&self, request: &Request<T>) -> Result<Option<&Leader>, Status> {
        let Some(leader) = self.leader.as_deref() else {
            return Ok(None);
        };
        if leader.is_this_node() {
            leader.check_majority()?;
            return Ok(None);
        }
        if request.metadata().contains_key(ON_BEHALF_OF) {
            return Err(Status::unavailable(
                "this node does not lead the cluster any more; call again and the leader is asked",
            ));
        }
        Ok(Some(leader))
    }
}

/// The metadata a forwarded call names its member by.
fn on_behalf_of(caller: &Caller) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, Status> {
    tonic::metadata::MetadataValue::try_from(hex::encode(caller.cert_sha256))
        .map_err(|_| Status::internal("a certificate fingerprint did not fit in metadata"))
}

/// A member's import sent to a follower, streamed on to the leader as that member's own
/// call, and the leader's answers streamed back. The follower holds the member's stream
/// permit and an import slot meanwhile, as for an import of its own; the leader applies
/// the member's limits. At most `STREAM_BUFFER` messages wait here in each direction.
async fn forward_import(
    leader: &Leader,
    caller: &Caller,
    mut inbound: Streaming<pb::ImportRequest>,
    held: impl Send + 'static,
) -> Result<Response<ImportStream>, Status> {
    let channel = leader.channel().await?;
    let mut client = pb::flags_client::FlagsClient::new(channel)
        .max_encoding_message_size(super::MAX_MESSAGE_BYTES)
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES);
    let (to_leader, outbound) = mpsc::channel(streams::STREAM_BUFFER);
    let mut request = Request::new(ReceiverStream::new(outbound));
    request.metadata_mut().insert(ON_BEHALF_OF, on_behalf_of(caller)?);
    let (sender, receiver) = mpsc::channel(streams::STREAM_BUFFER);
    let relay_errors = sender.clone();
    tokio::spawn(async move {
        loop {
            match inbound.message().await {
                Ok(Some(message)) => {
                    if to_leader.send(message).await.is_err() {
                        return;
                    }
                }
                // The member's stream ended: so does the leader's.
                Ok(None) => return,
                Err(status) => {
                    let _ = relay_errors.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    let mut answers = match client.import(request).await {
        Ok(answers) => answers.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::Unavailable {
                leader.forget_channel();
            }
            return Err(status);
        }
    };
    tokio::spawn(async move {
        let _held = held;
        loop {
            let answer = match answers.message().await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let failed = answer.is_err();
            if sender.send(answer).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
}

/// Sends a member's call on to the leader, which answers it as that member's own.
async fn forward<Req, Resp, Fut>(
    leader: &Leader,
    caller: &Caller,
    message: Req,
    call: impl FnOnce(pb::flags_client::FlagsClient<tonic::transport::Channel>, Request<Req>) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
{
    let channel = leader.channel().await?;
    let client = pb::flags_client::FlagsClient::new(channel).max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    let mut request = Request::new(message);
    request.metadata_mut().insert(ON_BEHALF_OF, on_behalf_of(caller)?);
    request.set_timeout(FORWARD_TIMEOUT);
    let answered = call(client, request).await;
    if answered
        .as_ref()
        .is_err_and(|status| status.code() == tonic::Code::Unavailable)
    {
        leader.forget_channel();
    }
    answered
}

/// How long an import's message waits for its member's per-second flag limit to refill
/// before the import is refused: an import runs at the member's rate, not over it.
const IMPORT_RATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Flags in an import's block when other nodes receive it: a block is one log entry (its
/// files), which every follower must receive, write and acknowledge within one heartbeat
/// (250 ms); 200,000 flags' rows (about 50 MB) did not, on a 2-core machine, and the
/// cluster fell into repeated elections. A one-node cluster takes `IMPORT_BLOCK`.
pub const REPLICATED_IMPORT_BLOCK: usize = 10_000;

/// Imports that may run at once on a server; one more is refused until one ends.
pub const IMPORT_SLOTS: usize = 2;

type ImportStream = Pin<Box<dyn Stream<Item = Result<pb::ImportProgress, Status>> + Send>>;

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::FeedBatch, Status>> + Send>>;

/// Batches of one `QueryStream` answered at once; answers still leave in request order.
const STREAM_PIPELINE: usize = 4;

type QueryStreamStream = Pin<Box<dyn Stream<Item = Result<pb::QueryBatchResult, Status>> + Send>>;

/// One batch of packed digests, as `Query` and each `QueryStream` batch answer it.
async fn query_packed(
    domain: &Domain,
    metrics: &Metrics,
    limits: &Limits,
    caller: Caller,
    packed: &[u8],
) -> Result<pb::QueryResponse, Status> {
    let digests = wire::digests_from_packed(packed)?;
    let n_queried = digests.len() as u32;
    limits.take(&caller, &[Limit::DigestsQueried], u64::from(n_queried))?;
    let member = Metrics::member(&caller.name);
    let matches = domain.query(caller, digests).await?;
    metrics
        .digests_queried
        .get_or_create(&member)
        .inc_by(u64::from(n_queried));
    metrics
        .digests_matched
        .get_or_create(&member)
        .inc_by(matches.len() as u64);
    Ok(pb::QueryResponse {
        matches: matches.into_iter().map(convert::match_to_pb).collect(),
        n_queried,
    })
}

async fn answer_batch(
    domain: Domain,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    caller: Caller,
    batch: pb::QueryBatch,
) -> pb::QueryBatchResult {
    match query_packed(&domain, &metrics, &limits, caller, &batch.digests).await {
        Ok(pb::QueryResponse { matches, n_queried }) => pb::QueryBatchResult {
            batch_id: batch.batch_id,
            matches,
            n_queried,
            error_code: 0,
            error_message: String::new(),
        },
        Err(status) => pb::QueryBatchResult {
            batch_id: batch.batch_id,
            matches: Vec::new(),
            n_queried: 0,
            error_code: status.code() as i32,
            error_message: status.message().to_owned(),
        },
    }
}

fn feed_batch(items: Vec<FeedItem>, cursor: String, caught_up: bool) -> pb::FeedBatch {
    pb::FeedBatch {
        events: items.into_iter().map(feed_item_to_pb).collect(),
        cursor,
        caught_up,
    }
}

/// The feed of one `Subscribe` call: the snapshot in chunks (when there is no cursor), then
/// the change log from where the snapshot's head or the cursor left off.
async fn run_feed(
    domain: Domain,
    caller: Caller,
    mut outbox: Outbox<pb::FeedBatch>,
    resume_from: Option<u64>,
    db_identity: [u8; 8],
    _permit: StreamPermit,
) {
    // A resumed cursor below the change horizon is refused; the horizon now is what later
    // chunks are checked against.
    let horizon_at_start = match domain.stream_start(resume_from.unwrap_or(0)).await {
        Ok(horizon) => horizon,
        Err(err) => return outbox.fail(err.into()).await,
    };
    let after = match resume_from {
        Some(after) => after,
        None => {
            // The head is read before the scan: changes during the scan are sent again
            // after it, and as events carry state, the repeat is harmless.
            let head = match domain.feed_head().await {
                Ok(head) => head,
                Err(err) => return outbox.fail(err.into()).await,
            };
            let mut next = None;
            loop {
                if outbox.stopping() {
                    return;
                }
                let (items, last) = match domain.feed_snapshot_chunk(caller.clone(), next).await {
                    Ok(chunk) => chunk,
                    Err(err) => return outbox.fail(err.into()).await,
                };
                if !items.is_empty() && outbox.send(Ok(feed_batch(items, String::new(), false))).await.is_err() {
                    return;
                }
                match last {
                    Some(last) => next = Some(last),
                    None => break,
                }
            }
            head
        }
    };
    // The first live batch is always sent: it carries the snapshot's cursor.
    let mut send_next = true;
    let tail_domain = domain.clone();
    let tail_caller = caller.clone();
    streams::tail(domain, caller, outbox, after, move |after| {
        let domain = tail_domain.clone();
        let caller = tail_caller.clone();
        let send = std::mem::replace(&mut send_next, false);
        async move {
            let (items, covered, head) = domain.feed_changes(caller, after, horizon_at_start).await?;
            let advanced = covered > after;
            let message =
                (advanced || send).then(|| feed_batch(items, encode_cursor(&db_identity, covered), covered >= head));
            Ok(Step {
                message,
                position: covered,
                advanced,
            })
        }
    })
    .await;
}

#[tonic::async_trait]
impl pb::flags_server::Flags for FlagsService {
    type QueryStreamStream = QueryStreamStream;
    type SubscribeStream = SubscribeStream;
    type ImportStream = ImportStream;

    async fn import(&self, request: Request<Streaming<pb::ImportRequest>>) -> Result<Response<ImportStream>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let permit = self.streams.acquire(&caller)?;
        let slot = self.imports.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "import: {IMPORT_SLOTS} imports are running on this server, the most at once; retry when one ends"
            ))
        })?;
        if let Some(leader) = self.forward_to(&request)? {
            return forward_import(leader, &caller, request.into_inner(), (permit, slot)).await;
        }
        let (sender, receiver) = mpsc::channel(streams::STREAM_BUFFER);
        let import = Import {
            domain: self.domain.clone(),
            metrics: self.metrics.clone(),
            limits: self.limits.clone(),
            caller,
            idle: self.import_idle,
        };
        // Decoding and checking an import's messages stays on the server's workers. On a
        // one-thread runtime at nice 19, single-digest p99 during an import of 10,000,000
        // was 5.3-5.4 ms (5.8-6.3 here) but the import took 1.03-1.08 of the Submit load's
        // time in the same runs, against 0.99 here: not worth the slower import.
        tokio::spawn(async move {
            let _held = (permit, slot);
            let bulk_load = import.domain.begin_import();
            if let Err(status) = import.run(request.into_inner(), &sender, bulk_load).await {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        self.check_fresh().await?;
        let cursor = request.into_inner().cursor;
        let resume_from = match cursor.as_str() {
            "" => None,
            text => Some(decode_cursor(text, &self.db_identity)?),
        };
        let permit = self.streams.acquire(&caller)?;
        let detail = match &resume_from {
            Some(_) => format!("from {cursor}"),
            None => "snapshot".to_owned(),
        };
        self.domain.record_subscribe(caller.clone(), detail).await?;
        let (sender, receiver) = mpsc::channel(streams::STREAM_BUFFER);
        let outbox = Outbox::new(sender, self.stopping.clone());
        tokio::spawn(run_feed(
            self.domain.clone(),
            caller,
            outbox,
            resume_from,
            self.db_identity,
            permit,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn query_stream(
        &self,
        request: Request<Streaming<pb::QueryBatch>>,
    ) -> Result<Response<QueryStreamStream>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        self.check_fresh().await?;
        let permit = self.streams.acquire(&caller)?;
        let mut inbound = request.into_inner();
        let (answers, receiver) = mpsc::channel(STREAM_PIPELINE);
        // Each batch is answered by its own task; the handles queue in request order, so
        // up to STREAM_PIPELINE batches are worked on at once and still answered in order.
        let (pending, mut in_order) = mpsc::channel::<tokio::task::JoinHandle<pb::QueryBatchResult>>(STREAM_PIPELINE);
        let domain = self.domain.clone();
        let metrics = self.metrics.clone();
        let limits = self.limits.clone();
        let freshness = self.freshness();
        let mut reader = Outbox::new(answers.clone(), self.stopping.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut checks = tokio::time::interval(streams::POLL_INTERVAL * 5);
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    // An idle stream still ends soon after its caller's credentials do.
                    _ = checks.tick() => {
                        if let Err(err) = domain.reauthorize(&caller) {
                            return reader.fail(err.into()).await;
                        }
                        continue;
                    }
                    _ = reader.until_shutdown() => return,
                };
                match message {
                    Ok(Some(batch)) => {
                        // Re-checked per batch: a suspension ends the stream at once, and a
                        // node that may have gone stale answers no further batch.
                        if let Err(err) = domain.reauthorize(&caller) {
                            return reader.fail(err.into()).await;
                        }
                        if let Err(status) = freshness.check().await {
                            return reader.fail(status).await;
                        }
                        let task = tokio::spawn(answer_batch(
                            domain.clone(),
                            metrics.clone(),
                            limits.clone(),
                            caller.clone(),
                            batch,
                        ));
                        if pending.send(task).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => return reader.fail(status).await,
                }
            }
        });
        let mut writer = Outbox::new(answers, self.stopping.clone());
        tokio::spawn(async move {
            while let Some(task) = in_order.recv().await {
                let answer = task
                    .await
                    .map_err(|err| Status::internal(format!("a query batch failed: {err}")));
                if writer.send(answer).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_held(&self, request: Request<pb::ListHeldRequest>) -> Result<Response<pb::ListHeldResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        self.check_fresh().await?;
        // A page costs as many queried digests as it can hold.
        self.limits
            .take(&caller, &[Limit::DigestsQueried], crate::domain::HELD_PAGE as u64)?;
        let (flags, next_page_after) = self
            .domain
            .held_flags(caller, None, request.into_inner().page_after)
            .await?;
        Ok(Response::new(pb::ListHeldResponse {
            flags: flags.into_iter().map(convert::held_flag_to_pb).collect(),
            next_page_after,
        }))
    }

    async fn range_query(
        &self,
        request: Request<pb::RangeQueryRequest>,
    ) -> Result<Response<pb::RangeQueryResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        self.check_fresh().await?;
        let request = request.into_inner();
        let (matches, next) = self
            .domain
            .range_query(caller, request.prefix, request.page_after)
            .await?;
        Ok(Response::new(pb::RangeQueryResponse {
            matches: matches.into_iter().map(convert::match_to_pb).collect(),
            next_page_after: next.map(|digest| digest.to_vec()).unwrap_or_default(),
        }))
    }

    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        if let Some(leader) = self.forward_to(&request)? {
            // What the member may send is bounded here too, before it costs a call.
            self.limits
                .take(&caller, &[Limit::FlagsPerSecond], request.get_ref().flags.len() as u64)?;
            return forward(
                leader,
                &caller,
                request.into_inner(),
                |mut client, request| async move { client.submit(request).await },
            )
            .await;
        }
        let request = request.into_inner();
        let flags = convert::new_flags_from_pb(request.flags)?;
        self.limits.take(
            &caller,
            &[Limit::FlagsPerSecond, Limit::FlagsPerDay],
            flags.len() as u64,
        )?;
        let member = Metrics::member(&caller.name);
        let outcome = self.domain.submit(caller, flags, request.key_id).await?;
        count_flags(&self.metrics, &member, &outcome);
        Ok(Response::new(convert::submit_outcome_to_pb(outcome)))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        self.check_fresh().await?;
        let response = query_packed(
            &self.domain,
            &self.metrics,
            &self.limits,
            caller,
            &request.get_ref().digests,
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn retract(&self, request: Request<pb::RetractRequest>) -> Result<Response<pb::RetractResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        if let Some(leader) = self.forward_to(&request)? {
            return forward(
                leader,
                &caller,
                request.into_inner(),
                |mut client, request| async move { client.retract(request).await },
            )
            .await;
        }
        let request = request.into_inner();
        let reason = wire::member_retract_reason_from_pb(request.reason)?;
        let selectors = convert::selectors_from_pb(request.flags)?;
        let member = Metrics::member(&caller.name);
        let outcome = self.domain.retract(caller, selectors, reason).await?;
        self.metrics
            .flags_retracted
            .get_or_create(&member)
            .inc_by(u64::from(outcome.n_retracted));
        Ok(Response::new(convert::retract_outcome_to_pb(outcome)))
    }

    async fn dispute(&self, request: Request<pb::DisputeRequest>) -> Result<Response<pb::DisputeResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        if let Some(leader) = self.forward_to(&request)? {
            return forward(
                leader,
                &caller,
                request.into_inner(),
                |mut client, request| async move { client.dispute(request).await },
            )
            .await;
        }
        let request = request.into_inner();
        let digest = wire::digest_from_bytes("digest", &request.digest)?;
        let n_flags = self
            .domain
            .dispute(caller, digest, request.member, request.note)
            .await?;
        Ok(Response::new(pb::DisputeResponse { n_flags }))
    }
}

/// One member's import: messages are gathered into blocks of `block` flags, each
/// checked and committed (and answered with the running totals) when full.
struct Import {
    domain: Domain,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    caller: Caller,
    idle: std::time::Duration,
}

impl Import {
    async fn run(
        &self,
        mut input: Streaming<pb::ImportRequest>,
        progress: &mpsc::Sender<Result<pb::ImportProgress, Status>>,
        bulk_load: crate::store::BulkLoad,
    ) -> Result<(), Status> {
        let mut totals = pb::ImportProgress::default();
        // One block commits while the next one is received: the two overlap.
        let mut committing = None;
        let received = self.receive(&mut input, &mut committing, &mut totals, progress).await;
        // Whatever ended the input, the block in flight is settled first: reported with the
        // last answer when all went well, or on its own before an error, so the caller
        // knows which blocks stay.
        let report = received.is_err().then_some(progress);
        let settled = self.settle(&mut committing, &mut totals, report).await;
        // Compaction returns to its pace before the caller hears the import is done.
        drop(bulk_load);
        received?;
        settled?;
        totals.done = true;
        let _ = progress.send(Ok(totals)).await;
        Ok(())
    }

    /// Reads the input to its end, committing each full block (and the last partial one).
    async fn receive(
        &self,
        input: &mut Streaming<pb::ImportRequest>,
        committing: &mut Option<Committing>,
        totals: &mut pb::ImportProgress,
        progress: &mpsc::Sender<Result<pb::ImportProgress, Status>>,
    ) -> Result<(), Status> {
        // The block being gathered: its messages' flags as received, each with the index of
        // its first flag in the import, and how many flags they hold.
        let mut block: Vec<(usize, Vec<pb::Flag>)> = Vec::new();
        let mut n_block = 0usize;
        let mut key_id = None;
        let mut n_received = 0usize;
        loop {
            let message = match tokio::time::timeout(self.idle, input.message()).await {
                Ok(message) => message?,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "import: no message for {} s; blocks committed so far stay",
                        self.idle.as_secs()
                    )));
                }
            };
            let Some(message) = message else { break };
            match key_id {
                None => key_id = Some(message.key_id),
                Some(first) if first != message.key_id => {
                    return Err(Status::invalid_argument(format!(
                        "key_id: {} after {first} in the same import (flags[{n_received}] on); one import, one key epoch",
                        message.key_id
                    )));
                }
                Some(_) => {}
            }
            crate::domain::flags::check_batch_len("flags", message.flags.len())?;
            self.limits
                .take_waiting(
                    &self.caller,
                    &[Limit::FlagsPerSecond, Limit::FlagsPerDay],
                    message.flags.len() as u64,
                    IMPORT_RATE_PATIENCE,
                )
                .await?;
            let mut flags = message.flags;
            while !flags.is_empty() {
                let block_size = self.block_size();
                let room = block_size.saturating_sub(n_block).max(1);
                let rest = if flags.len() > room {
                    flags.split_off(room)
                } else {
                    Vec::new()
                };
                let n = flags.len();
                block.push((n_received, flags));
                (n_block, n_received) = (n_block + n, n_received + n);
                flags = rest;
                if n_block >= block_size {
                    let full = std::mem::take(&mut block);
                    n_block = 0;
                    // Checked and sorted while the block before it commits.
                    let sorted = self.sort(full).await?;
                    self.settle(committing, totals, Some(progress)).await?;
                    *committing = Some(self.start_commit(sorted, key_id.unwrap_or_default()));
                }
            }
        }
        if !block.is_empty() {
            let sorted = self.sort(block).await?;
            self.settle(committing, totals, Some(progress)).await?;
            *committing = Some(self.start_commit(sorted, key_id.unwrap_or_default()));
        }
        Ok(())
    }

    /// Flags in a block: `IMPORT_BLOCK`, or `REPLICATED_IMPORT_BLOCK` when other nodes
    /// receive each block (asked block by block: a node may join during the import).
    fn block_size(&self) -> usize {
        match self.domain.store().shares_commits() {
            true => REPLICATED_IMPORT_BLOCK,
            false => crate::domain::IMPORT_BLOCK,
        }
    }

    /// A block's messages read into flags, checked (errors name each flag by its index in
    /// the import) and sorted, on a bulk thread: at 200,000 flags this is milliseconds of
    /// work that would otherwise hold a server worker other calls are waiting for.
    async fn sort(&self, messages: Vec<(usize, Vec<pb::Flag>)>) -> Result<crate::domain::SortedFlags, Status> {
        let domain = self.domain.clone();
        let sorted = self
            .domain
            .sort_import_block(&self.caller, move || {
                let mut flags = Vec::new();
                for (first_index, raw) in messages {
                    let converted = convert::new_flags_from_pb_at(raw, first_index)?;
                    domain.check_import_message(&converted, first_index)?;
                    flags.extend(converted);
                }
                Ok(flags)
            })
            .await?;
        Ok(sorted)
    }

    fn start_commit(&self, block: crate::domain::SortedFlags, key_id: u32) -> Committing {
        let (domain, caller) = (self.domain.clone(), self.caller.clone());
        tokio::spawn(async move { domain.import_sorted(caller, block, key_id).await })
    }

    /// Waits for the block in flight, if any, and reports it to `progress` (none for the
    /// last one: the final answer reports it with `done`).
    async fn settle(
        &self,
        committing: &mut Option<Committing>,
        totals: &mut pb::ImportProgress,
        progress: Option<&mpsc::Sender<Result<pb::ImportProgress, Status>>>,
    ) -> Result<(), Status> {
        let Some(task) = committing.take() else {
            return Ok(());
        };
        let outcome = task
            .await
            .map_err(|err| Status::internal(format!("import: a block's commit failed: {err}")))??;
        self.count(outcome, totals);
        // A reader that went away still gets its blocks committed; it learns of them by
        // importing again (they count as updates).
        if let Some(progress) = progress {
            let _ = progress.send(Ok(*totals)).await;
        }
        Ok(())
    }

    fn count(&self, outcome: crate::domain::SubmitOutcome, totals: &mut pb::ImportProgress) {
        count_flags(&self.metrics, &Metrics::member(&self.caller.name), &outcome);
        totals.n_created += u64::from(outcome.n_created);
        totals.n_updated += u64::from(outcome.n_updated);
        totals.n_quarantined += u64::from(outcome.n_quarantined);
        totals.n_blocks += 1;
        totals.sequence = outcome.sequence;
    }
}

/// A Submit's or an import block's flags, in the member's counters.
fn count_flags(metrics: &Metrics, member: &crate::metrics::MemberLabels, outcome: &crate::domain::SubmitOutcome) {
    metrics
        .flags_created
        .get_or_create(member)
        .inc_by(u64::from(outcome.n_created));
    metrics
        .flags_updated
        .get_or_create(member)
        .inc_by(u64::from(outcome.n_updated));
    if outcome.n_quarantined > 0 {
        metrics
            .flags_quarantined
            .get_or_create(member)
            .inc_by(u64::from(outcome.n_quarantined));
    }
}

type Committing = tokio::task::JoinHandle<crate::error::Result<crate::domain::SubmitOutcome>>;
