//! Every kind of bad input gets a clear status naming the item and field, and writes nothing.

use flagshare::pb;
use flagshare::pb::flags_client::FlagsClient;
use flagshare::wire::timestamp_from_ms;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TestServer, email_digest, flag, query, query_request, submit_request};

/// Submits `[a valid flag, bad]` and checks the refusal, then that nothing was written:
/// the valid flag does not match and the change log did not move.
async fn assert_submit_refused(bad: pb::Flag, code: Code, message_part: &str) {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let before = alpha
        .submit(submit_request(vec![flag(
            email_digest("baseline@example.com"),
            pb::Category::Other,
            1,
        )]))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let good = email_digest("good@example.com");
    let status = alpha
        .submit(submit_request(vec![flag(good, pb::Category::Grooming, 50), bad]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(message_part),
        "{:?} lacks {message_part:?}",
        status.message()
    );
    assert_unchanged(&mut alpha, good, before).await;
}

async fn assert_unchanged(client: &mut FlagsClient<Channel>, good: [u8; 32], sequence_before: u64) {
    assert!(
        query(client, &[good]).await.is_empty(),
        "a refused batch must write nothing"
    );
    let next = client
        .submit(submit_request(vec![flag(
            email_digest("probe@example.com"),
            pb::Category::Other,
            1,
        )]))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    assert_eq!(next, sequence_before + 1, "the change log must not have moved");
}

#[tokio::test]
async fn a_digest_of_the_wrong_length_is_refused() {
    let mut bad = flag(email_digest("x@example.com"), pb::Category::Grooming, 50);
    bad.digest.truncate(31);
    assert_submit_refused(bad, Code::InvalidArgument, "flags[1].digest: expected 32 bytes, got 31").await;
}

#[tokio::test]
async fn an_unknown_or_missing_kind_is_refused() {
    let mut bad = flag(email_digest("x@example.com"), pb::Category::Grooming, 50);
    bad.kind = 17;
    assert_submit_refused(
        bad.clone(),
        Code::InvalidArgument,
        "flags[1].kind: unknown identifier kind 17",
    )
    .await;
    bad.kind = 0;
    assert_submit_refused(bad, Code::InvalidArgument, "flags[1].kind: must be set").await;
}

#[tokio::test]
async fn an_unknown_category_is_refused() {
    let mut bad = flag(email_digest("x@example.com"), pb::Category::Grooming, 50);
    bad.category = 42;
    assert_submit_refused(bad, Code::InvalidArgument, "flags[1].category: unknown category 42").await;
}

#[tokio::test]
async fn a_confidence_above_100_is_refused() {
    let bad = flag(email_digest("x@example.com"), pb::Category::Grooming, 101);
    assert_submit_refused(bad, Code::InvalidArgument, "flags[1].confidence: 101 is above 100").await;
}

#[tokio::test]
async fn a_reference_over_128_bytes_is_refused() {
    let mut bad = flag(email_digest("x@example.com"), pb::Category::Grooming, 50);
    bad.reference = vec![b'r'; 129];
    assert_submit_refused(
        bad,
        Code::InvalidArgument,
        "flags[1].reference: 129 bytes, the limit is 128",
    )
    .await;
}

#[tokio::test]
async fn an_expiry_in_the_past_is_refused() {
    let mut bad = flag(email_digest("x@example.com"), pb::Category::Grooming, 50);
    bad.expires_at = Some(timestamp_from_ms(1_000));
    assert_submit_refused(bad, Code::InvalidArgument, "flags[1].expires_at").await;
}

#[tokio::test]
async fn an_observation_in_the_year_10000_is_refused_with_its_date() {
    // Formatting this date for the message panicked the handler once.
    let mut bad = flag(email_digest("x@example.com"), pb::Category::Grooming, 50);
    bad.observed_at = Some(prost_types::Timestamp {
        seconds: 253_402_300_800, // 10000-01-01
        nanos: 0,
    });
    assert_submit_refused(
        bad,
        Code::InvalidArgument,
        "flags[1].observed_at: +10000-01-01T00:00:00Z lies in the future",
    )
    .await;
}

#[tokio::test]
async fn empty_and_oversized_batches_are_refused() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;

    let status = alpha.submit(submit_request(vec![])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "flags: the batch is empty");

    let status = alpha.query(query_request(&[])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "digests: the batch is empty");

    let good = email_digest("good@example.com");
    let too_many: Vec<pb::Flag> = (0..10_001u32)
        .map(|i| {
            let mut digest = good;
            digest[..4].copy_from_slice(&i.to_be_bytes());
            flag(digest, pb::Category::Grooming, 50)
        })
        .collect();
    let status = alpha.submit(submit_request(too_many)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "flags: the batch holds 10001 items, the limit is 10000"
    );

    let digests = vec![good; 10_001];
    let status = alpha.query(query_request(&digests)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "digests: the batch holds 10001 items, the limit is 10000"
    );

    let status = alpha
        .query(pb::QueryRequest {
            digests: vec![0u8; 33].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("33 bytes is not a whole number"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let status = alpha
        .query(pb::QueryRequest {
            digests: vec![7u8; 5 << 20].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("4 MiB limit"), "{}", status.message());
    assert!(query(&mut alpha, &[email_digest("still@example.com")]).await.is_empty());
}

#[tokio::test]
async fn bad_retractions_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let digest = email_digest("kept@example.com");
    let before = alpha
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 50)]))
        .await
        .unwrap()
        .into_inner()
        .sequence;

    let selector = |digest: Vec<u8>| pb::FlagSelector {
        digest,
        kind: 0,
        category: 0,
    };
    let status = alpha
        .retract(pb::RetractRequest {
            flags: vec![selector(digest.to_vec()), selector(vec![1; 5])],
            reason: pb::RetractReason::AppealUpheld as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "flags[1].digest: expected 32 bytes, got 5");

    let status = alpha
        .retract(pb::RetractRequest {
            flags: vec![selector(digest.to_vec())],
            reason: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "reason: unknown retract reason 99");

    // An appeal trail needs a reason: UNSPECIFIED is refused, as are the server's own.
    for (reason, expected) in [
        (pb::RetractReason::Unspecified, "reason: must be set"),
        (pb::RetractReason::Withdrawn, "reason: withdrawn is set by the server"),
        (pb::RetractReason::Unshared, "reason: unshared is set by the server"),
    ] {
        let status = alpha
            .retract(pb::RetractRequest {
                flags: vec![selector(digest.to_vec())],
                reason: reason as i32,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(expected), "{}", status.message());
    }

    assert_eq!(query(&mut alpha, &[digest]).await.len(), 1, "the flag is still there");
    let next = alpha
        .submit(submit_request(vec![flag(
            email_digest("probe@example.com"),
            pb::Category::Other,
            1,
        )]))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    assert_eq!(next, before + 1);
}

#[tokio::test]
async fn bad_operator_and_dispute_requests_are_refused_and_record_nothing() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let _beta = server.member("beta").await;
    let digest = email_digest("flagged@example.com");
    alpha
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 50)]))
        .await
        .unwrap();
    let mut admin = server.admin_client().await;
    let audit_len = |entries: pb::ListAuditResponse| entries.entries.len();
    let before = audit_len(
        admin
            .list_audit(pb::ListAuditRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );

    let refusals = [
        alpha
            .dispute(pb::DisputeRequest {
                digest: digest[..31].to_vec(),
                member: "beta".to_owned(),
                note: String::new(),
            })
            .await
            .unwrap_err(),
        alpha
            .dispute(pb::DisputeRequest {
                digest: digest.to_vec(),
                member: "beta".to_owned(),
                note: "x".repeat(129),
            })
            .await
            .unwrap_err(),
        alpha
            .dispute(pb::DisputeRequest {
                digest: digest.to_vec(),
                member: "nobody".to_owned(),
                note: String::new(),
            })
            .await
            .unwrap_err(),
        alpha
            .retract(pb::RetractRequest {
                flags: vec![pb::FlagSelector {
                    digest: digest.to_vec(),
                    ..Default::default()
                }],
                reason: pb::RetractReason::Withdrawn as i32,
            })
            .await
            .unwrap_err(),
        admin
            .list_audit(pb::ListAuditRequest {
                op: "delete_everything".to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        admin
            .list_audit(pb::ListAuditRequest {
                digest: vec![1; 5],
                ..Default::default()
            })
            .await
            .unwrap_err(),
        admin
            .list_audit(pb::ListAuditRequest {
                limit: 10_001,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        admin
            .backup(pb::BackupRequest {
                dir: "relative/backup".to_owned(),
            })
            .await
            .unwrap_err(),
        admin
            .set_principal_status(pb::SetPrincipalStatusRequest {
                name: "alpha".to_owned(),
                status: pb::PrincipalStatus::Active as i32,
                withdraw_flags: true,
            })
            .await
            .unwrap_err(),
        admin
            .rotate_certificate(pb::RotateCertificateRequest {
                name: "alpha".to_owned(),
                public_key_der: vec![1, 2, 3],
            })
            .await
            .unwrap_err(),
    ];
    let expected = [
        (Code::InvalidArgument, "digest: "),
        (Code::InvalidArgument, "note: 129 bytes"),
        (Code::NotFound, "member: no principal named 'nobody'"),
        (Code::InvalidArgument, "reason: withdrawn is set by the server"),
        (Code::InvalidArgument, "op: unknown audit op 'delete_everything'"),
        (Code::InvalidArgument, "digest: expected 32 bytes, got 5"),
        (Code::InvalidArgument, "limit: 10001 is outside 1 to 10000"),
        (Code::InvalidArgument, "dir: 'relative/backup' must be an absolute path"),
        (Code::InvalidArgument, "withdraw_flags: only a suspension or a removal"),
        (
            Code::InvalidArgument,
            "public_key_der: not a usable SubjectPublicKeyInfo",
        ),
    ];
    for (status, (code, message)) in refusals.iter().zip(expected) {
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }

    // Nothing was recorded but the listing above (and this one's own entry comes after).
    let after = audit_len(
        admin
            .list_audit(pb::ListAuditRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(after, before + 1);
    assert_eq!(query(&mut alpha, &[digest]).await.len(), 1, "the flag is untouched");
}
