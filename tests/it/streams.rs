//! Streaming queries, prefix (k-anonymity) lookups and the resumable member feed.

use std::collections::BTreeSet;
use std::time::Duration;

use flagshare::digest::Digest;
use flagshare::pb;
use flagshare::pb::flags_client::FlagsClient;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TestServer, email_digest, flag, submit_request};

fn packed(digests: &[Digest]) -> Vec<u8> {
    digests.concat()
}

#[tokio::test]
async fn query_stream_answers_in_order_and_a_bad_batch_does_not_end_it() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let flagged: Vec<Digest> = (0..20).map(|i| email_digest(&format!("f{i}@example.com"))).collect();
    alpha
        .submit(submit_request(
            flagged.iter().map(|d| flag(*d, pb::Category::Grooming, 70)).collect(),
        ))
        .await
        .unwrap();
    let mut beta = server.member("beta").await;
    let clean = email_digest("clean@example.com");
    let batches = vec![
        pb::QueryBatch {
            batch_id: 10,
            digests: packed(&[flagged[0], clean, flagged[1]]).into(),
        },
        pb::QueryBatch {
            batch_id: 11,
            digests: vec![0u8; 33].into(),
        },
        pb::QueryBatch {
            batch_id: 12,
            digests: Vec::new().into(),
        },
        pb::QueryBatch {
            batch_id: 13,
            digests: packed(&flagged[5..20]).into(),
        },
        pb::QueryBatch {
            batch_id: 14,
            digests: packed(&[clean]).into(),
        },
    ];
    let answers: Vec<pb::QueryBatchResult> = beta
        .query_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner()
        .map(|answer| answer.unwrap())
        .collect()
        .await;
    let ids: Vec<u64> = answers.iter().map(|a| a.batch_id).collect();
    assert_eq!(ids, vec![10, 11, 12, 13, 14], "answers keep the request order");
    let indexes: Vec<u32> = answers[0].matches.iter().map(|m| m.index).collect();
    assert_eq!(indexes, vec![0, 2]);
    assert_eq!(answers[1].error_code, Code::InvalidArgument as i32);
    assert!(
        answers[1].error_message.contains("33 bytes"),
        "{}",
        answers[1].error_message
    );
    assert_eq!(answers[2].error_code, Code::InvalidArgument as i32);
    assert!(
        answers[2].error_message.contains("empty"),
        "{}",
        answers[2].error_message
    );
    assert_eq!(answers[3].matches.len(), 15);
    assert_eq!(answers[3].error_code, 0);
    assert!(answers[4].matches.is_empty());
    assert_eq!(answers[4].n_queried, 1);
}

#[tokio::test]
async fn range_query_returns_exactly_the_bucket() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let flagged: Vec<Digest> = (0..3_000).map(|i| email_digest(&format!("r{i}@example.com"))).collect();
    for chunk in flagged.chunks(1_000) {
        alpha
            .submit(submit_request(
                chunk.iter().map(|d| flag(*d, pb::Category::Sextortion, 60)).collect(),
            ))
            .await
            .unwrap();
    }
    let mut beta = server.member("beta").await;
    for len in [2usize, 3] {
        let prefix = &flagged[7][..len];
        let expected: BTreeSet<Vec<u8>> = flagged
            .iter()
            .filter(|d| d.starts_with(prefix))
            .map(|d| d.to_vec())
            .collect();
        let found = beta
            .range_query(pb::RangeQueryRequest {
                prefix: prefix.to_vec(),
                page_after: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .matches;
        let got: BTreeSet<Vec<u8>> = found.iter().map(|m| m.digest.clone()).collect();
        assert_eq!(got, expected, "bucket of a {len}-byte prefix");
        assert!(found.iter().all(|m| m.n_members == 1 && m.members == ["alpha"]));
    }
    for len in [0usize, 1, 4, 32] {
        let status = beta
            .range_query(pb::RangeQueryRequest {
                prefix: vec![0xab; len],
                page_after: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), format!("prefix: {len} bytes, expected 2 to 3"));
    }

    // A bucket filled on purpose is read in pages: no call reads more than 2,000 digests.
    let crowded: Vec<Digest> = (0..2_500u32)
        .map(|i| {
            let mut digest = *blake3::hash(&i.to_be_bytes()).as_bytes();
            digest[..2].copy_from_slice(&[0xfe, 0xed]);
            digest
        })
        .collect();
    for chunk in crowded.chunks(1_000) {
        alpha
            .submit(submit_request(
                chunk.iter().map(|d| flag(*d, pb::Category::Other, 10)).collect(),
            ))
            .await
            .unwrap();
    }
    let mut pages = Vec::new();
    let mut page_after = Vec::new();
    loop {
        let page = beta
            .range_query(pb::RangeQueryRequest {
                prefix: vec![0xfe, 0xed],
                page_after: page_after.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.matches.len());
        if page.next_page_after.is_empty() {
            break;
        }
        page_after = page.next_page_after;
        assert!(pages.len() < 10, "paging ends");
    }
    assert_eq!(pages, vec![2_000, 500]);
}

/// Reads feed batches until one is caught up; returns the events and the last cursor.
async fn read_until_caught_up(stream: &mut tonic::Streaming<pb::FeedBatch>) -> (Vec<pb::FeedEvent>, String) {
    let mut events = Vec::new();
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a feed batch within 30 s")
            .unwrap()
            .expect("the feed stays open");
        events.extend(batch.events);
        if batch.caught_up {
            return (events, batch.cursor);
        }
    }
}

async fn subscribe(client: &mut FlagsClient<Channel>, cursor: &str) -> tonic::Streaming<pb::FeedBatch> {
    client
        .subscribe(pb::SubscribeRequest {
            cursor: cursor.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn the_feed_starts_with_a_snapshot_follows_changes_and_resumes_across_a_restart() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let d: Vec<Digest> = (0..5).map(|i| email_digest(&format!("feed{i}@example.com"))).collect();
    alpha
        .submit(submit_request(vec![
            flag(d[0], pb::Category::Grooming, 70),
            flag(d[1], pb::Category::Grooming, 70),
        ]))
        .await
        .unwrap();
    let mut beta = server.member("beta").await;
    let mut feed = subscribe(&mut beta, "").await;
    let (snapshot, _) = read_until_caught_up(&mut feed).await;
    let snapshot_digests: BTreeSet<Vec<u8>> = snapshot.iter().map(|e| e.digest.clone()).collect();
    assert_eq!(snapshot_digests, BTreeSet::from([d[0].to_vec(), d[1].to_vec()]));
    assert!(
        snapshot
            .iter()
            .all(|e| e.op == pb::feed_event::Op::Snapshot as i32 && e.state.is_some())
    );

    alpha
        .submit(submit_request(vec![flag(d[2], pb::Category::Sextortion, 80)]))
        .await
        .unwrap();
    alpha
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: d[0].to_vec(),
                ..Default::default()
            }],
            reason: pb::RetractReason::AppealUpheld as i32,
        })
        .await
        .unwrap();
    let mut live = Vec::new();
    let mut cursor = String::new();
    while live.len() < 2 {
        let (events, at) = read_until_caught_up(&mut feed).await;
        live.extend(events);
        cursor = at;
    }
    assert_eq!(live.len(), 2, "{live:?}");
    assert_eq!(live[0].op, pb::feed_event::Op::Upsert as i32);
    assert_eq!(live[0].digest, d[2].to_vec());
    assert_eq!(live[0].member, "alpha");
    assert_eq!(live[0].state.as_ref().unwrap().max_confidence, 80);
    assert_eq!(
        live[1].op,
        pb::feed_event::Op::Retract as i32,
        "a retraction arrives as one"
    );
    assert_eq!(live[1].reason, pb::RetractReason::AppealUpheld as i32);
    assert!(live[1].state.is_none(), "no live flag is left on the retracted digest");
    drop(feed);

    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    let mut alpha = server.member("alpha2").await;
    alpha
        .submit(submit_request(vec![flag(d[3], pb::Category::Other, 40)]))
        .await
        .unwrap();
    let mut beta = server.member("beta2").await;
    let mut resumed = subscribe(&mut beta, &cursor).await;
    let (after_restart, _) = read_until_caught_up(&mut resumed).await;
    let digests: Vec<Vec<u8>> = after_restart.iter().map(|e| e.digest.clone()).collect();
    assert_eq!(digests, vec![d[3].to_vec()], "only what changed after the cursor, once");

    let status = beta
        .subscribe(pb::SubscribeRequest {
            cursor: "yesterday".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("cursor:"), "{}", status.message());
}
