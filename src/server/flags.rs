//! The `Flags` service for member platforms. Thin: identify, convert, call the domain.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::Domain;
use crate::model::Role;
use crate::pb;

use super::convert::{self, status_from_error};
use super::identity::authorize;

pub struct FlagsService {
    pub domain: Domain,
    /// Set when the server stops: open feeds end, so shutdown does not wait on them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// How often a caught-up feed looks for new changes.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(100);

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::FeedBatch, Status>> + Send>>;

fn feed_item_to_pb(item: crate::domain::feed::FeedItem) -> pb::FeedEvent {
    use crate::domain::feed::FeedOp;
    let (op, reason) = match item.op {
        FeedOp::Snapshot => (pb::feed_event::Op::Snapshot, 0),
        FeedOp::Upsert => (pb::feed_event::Op::Upsert, 0),
        FeedOp::Retract(reason) => (pb::feed_event::Op::Retract, reason as i32),
        FeedOp::Expire => (pb::feed_event::Op::Expire, 0),
    };
    let (kind, category, member) = match item.flag {
        Some((kind, category, member)) => (
            convert::kind_to_pb(kind) as i32,
            convert::category_to_pb(category) as i32,
            member,
        ),
        None => (0, 0, String::new()),
    };
    pb::FeedEvent {
        sequence: item.sequence,
        op: op as i32,
        digest: item.digest.to_vec(),
        kind,
        category,
        member,
        reason,
        state: item.state.map(convert::match_to_pb),
    }
}

/// Batches of one `QueryStream` answered at once; answers still leave in request order.
const STREAM_PIPELINE: usize = 4;

type QueryStreamStream = Pin<Box<dyn Stream<Item = Result<pb::QueryBatchResult, Status>> + Send>>;

/// One batch of packed digests, as `Query` and each `QueryStream` batch answer it.
async fn query_packed(
    domain: &Domain,
    caller: crate::domain::Caller,
    packed: &[u8],
) -> crate::error::Result<pb::QueryResponse> {
    let digests = convert::digests_from_packed(packed)?;
    let n_queried = digests.len() as u32;
    let matches = domain.query(caller, digests).await?;
    Ok(pb::QueryResponse {
        matches: matches.into_iter().map(convert::match_to_pb).collect(),
        n_queried,
    })
}

async fn answer_batch(domain: Domain, caller: crate::domain::Caller, batch: pb::QueryBatch) -> pb::QueryBatchResult {
    match query_packed(&domain, caller, &batch.digests).await {
        Ok(pb::QueryResponse { matches, n_queried }) => pb::QueryBatchResult {
            batch_id: batch.batch_id,
            matches,
            n_queried,
            error_code: 0,
            error_message: String::new(),
        },
        Err(err) => {
            let status = status_from_error(err);
            pb::QueryBatchResult {
                batch_id: batch.batch_id,
                matches: Vec::new(),
                n_queried: 0,
                error_code: status.code() as i32,
                error_message: status.message().to_owned(),
            }
        }
    }
}

#[tonic::async_trait]
impl pb::flags_server::Flags for FlagsService {
    type QueryStreamStream = QueryStreamStream;
    type SubscribeStream = SubscribeStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        use crate::domain::feed::{decode_cursor, encode_cursor};
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let cursor = request.into_inner().cursor;
        let resume_from = match cursor.as_str() {
            "" => None,
            text => Some(decode_cursor(text).map_err(status_from_error)?),
        };
        if resume_from.is_some() {
            self.domain
                .record_subscribe(caller.clone(), cursor.clone())
                .await
                .map_err(status_from_error)?;
        }
        let (sender, receiver) = mpsc::channel(4);
        let domain = self.domain.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut after = match resume_from {
                Some(after) => after,
                None => {
                    let snapshot_sender = sender.clone();
                    let emitted = domain
                        .feed_snapshot(caller.clone(), move |items| {
                            let batch = pb::FeedBatch {
                                events: items.into_iter().map(feed_item_to_pb).collect(),
                                cursor: String::new(),
                                caught_up: false,
                            };
                            snapshot_sender.blocking_send(Ok(batch)).is_ok()
                        })
                        .await;
                    match emitted {
                        Ok(head) => head,
                        Err(err) => {
                            let _ = sender.send(Err(status_from_error(err))).await;
                            return;
                        }
                    }
                }
            };
            // The first live batch is always sent: it carries the snapshot's cursor.
            let mut send_next = true;
            loop {
                if *stopping.borrow() {
                    return;
                }
                let (items, covered, head) = match domain.feed_changes(caller.clone(), after).await {
                    Ok(found) => found,
                    Err(err) => {
                        let _ = sender.send(Err(status_from_error(err))).await;
                        return;
                    }
                };
                let advanced = covered > after;
                if advanced || send_next {
                    send_next = false;
                    after = covered;
                    let batch = pb::FeedBatch {
                        events: items.into_iter().map(feed_item_to_pb).collect(),
                        cursor: encode_cursor(covered),
                        caught_up: covered >= head,
                    };
                    if sender.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
                if !advanced {
                    tokio::select! {
                        _ = tokio::time::sleep(FEED_POLL) => {}
                        _ = stopping.changed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn query_stream(
        &self,
        request: Request<Streaming<pb::QueryBatch>>,
    ) -> Result<Response<QueryStreamStream>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let mut inbound = request.into_inner();
        let (answers, receiver) = mpsc::channel(STREAM_PIPELINE);
        // Each batch is answered by its own task; the handles queue in request order, so
        // up to STREAM_PIPELINE batches are worked on at once and still answered in order.
        let (pending, mut in_order) = mpsc::channel::<tokio::task::JoinHandle<pb::QueryBatchResult>>(STREAM_PIPELINE);
        let domain = self.domain.clone();
        let reader_answers = answers.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    _ = stopping.changed() => return,
                };
                match message {
                    Ok(Some(batch)) => {
                        // Re-checked per batch: a suspension ends the stream at once.
                        if let Err(err) = domain.authorize_id(caller.id) {
                            let _ = reader_answers.send(Err(status_from_error(err))).await;
                            return;
                        }
                        let task = tokio::spawn(answer_batch(domain.clone(), caller.clone(), batch));
                        if pending.send(task).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = reader_answers.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Some(task) = in_order.recv().await {
                let answer = task
                    .await
                    .map_err(|err| Status::internal(format!("a query batch failed: {err}")));
                if answers.send(answer).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn range_query(
        &self,
        request: Request<pb::RangeQueryRequest>,
    ) -> Result<Response<pb::RangeQueryResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let matches = self
            .domain
            .range_query(caller, request.into_inner().prefix)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(pb::RangeQueryResponse {
            matches: matches.into_iter().map(convert::match_to_pb).collect(),
        }))
    }

    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let request = request.into_inner();
        let flags = convert::new_flags_from_pb(request.flags).map_err(status_from_error)?;
        let outcome = self
            .domain
            .submit(caller, flags, request.key_id)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(convert::submit_outcome_to_pb(outcome)))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let response = query_packed(&self.domain, caller, &request.get_ref().digests)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(response))
    }

    async fn retract(&self, request: Request<pb::RetractRequest>) -> Result<Response<pb::RetractResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let request = request.into_inner();
        let reason = convert::retract_reason_from_pb(request.reason).map_err(status_from_error)?;
        let selectors = convert::selectors_from_pb(request.flags).map_err(status_from_error)?;
        let outcome = self
            .domain
            .retract(caller, selectors, reason)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(convert::retract_outcome_to_pb(outcome)))
    }

    async fn dispute(&self, request: Request<pb::DisputeRequest>) -> Result<Response<pb::DisputeResponse>, Status> {
        let caller = authorize(&self.domain, &request, &[Role::Member])?;
        let request = request.into_inner();
        let digest = convert::digest_from_bytes("digest", &request.digest).map_err(status_from_error)?;
        let n_flags = self
            .domain
            .dispute(caller, digest, request.member, request.note)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(pb::DisputeResponse { n_flags }))
    }
}
