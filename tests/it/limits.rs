//! Per-principal limits: one member over its limit is refused (with the limit named and a
//! retry delay) while another's calls in the same seconds go through; overrides persist.

use flagshare::pb;

use crate::support::{
    TestServer, audit_count, email_digest, eventually, flag, query, query_request, set_limits, submit_request,
};

fn digests(n: usize, seed: u8) -> Vec<flagshare::digest::Digest> {
    (0..n)
        .map(|i| {
            let mut digest = [seed; 32];
            digest[..8].copy_from_slice(&(i as u64).to_be_bytes());
            digest
        })
        .collect()
}

#[tokio::test]
async fn a_member_over_its_query_limit_is_refused_while_another_goes_on() {
    let server = TestServer::start().await;
    let mut throttled = server.member("throttled").await;
    let mut other = server.member("other").await;
    let mut admin = server.admin_client().await;
    let limits = set_limits(
        &mut admin,
        "throttled",
        pb::Limits {
            digests_queried_per_second: Some(100),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(limits.effective.unwrap().digests_queried_per_second, Some(100));
    assert_eq!(limits.overrides.unwrap().flags_submitted_per_second, None);

    // The bucket holds one full batch: the first is answered, the next ones are not.
    let batch = digests(10_000, 1);
    throttled.query(query_request(&batch)).await.unwrap();
    for _ in 0..3 {
        let refused = throttled.query(query_request(&batch)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("'throttled' is over its digests_queried_per_second of 100"),
            "{}",
            refused.message()
        );
        let retry_ms: u64 = refused
            .metadata()
            .get("grpc-retry-pushback-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // 10,000 digests at 100 a second: about 100 s, less what trickled in meanwhile.
        assert!((90_000..=100_000).contains(&retry_ms), "{retry_ms}");
        // The other member, in the same seconds, is not held back.
        let answered = other.query(query_request(&batch)).await.unwrap().into_inner();
        assert_eq!(answered.n_queried, 10_000);
    }
    // A refused stream batch fails alone, with the same reason.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(pb::QueryBatch {
            batch_id: 7,
            digests: batch.concat().into(),
        })
        .await
        .unwrap();
    drop(sender);
    let mut answers = throttled
        .query_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.batch_id, 7);
    assert_eq!(answer.error_code, tonic::Code::ResourceExhausted as i32);
    assert!(answer.error_message.contains("digests_queried_per_second"));

    let scraped = server.scrape().await;
    assert_eq!(
        scraped.counter(
            "flagshare_limit_refusals_total",
            r#"member="throttled",limit="digests_queried_per_second""#
        ),
        4.0
    );
    assert_eq!(
        scraped.counter("flagshare_digests_queried_total", r#"member="throttled""#),
        10_000.0
    );
    // Four refusals in a minute: one audit entry.
    eventually("the refusal is audited", || async {
        audit_count(&mut server.admin_client().await, "limit_exceeded").await == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(audit_count(&mut admin, "limit_exceeded").await, 1);
    assert_eq!(audit_count(&mut admin, "set_limits").await, 1);
}

#[tokio::test]
async fn a_daily_flag_limit_refuses_the_batch_that_would_pass_it_and_stores_nothing_of_it() {
    let server = TestServer::start().await;
    let mut member = server.member("bulk").await;
    let mut admin = server.admin_client().await;
    set_limits(
        &mut admin,
        "bulk",
        pb::Limits {
            flags_submitted_per_day: Some(5),
            ..Default::default()
        },
    )
    .await;
    let first: Vec<_> = (0..3).map(|i| email_digest(&format!("first{i}@example.com"))).collect();
    let second: Vec<_> = (0..3)
        .map(|i| email_digest(&format!("second{i}@example.com")))
        .collect();
    let request = |digests: &[flagshare::digest::Digest]| {
        submit_request(digests.iter().map(|d| flag(*d, pb::Category::Grooming, 80)).collect())
    };
    member.submit(request(&first)).await.unwrap();
    let refused = member.submit(request(&second)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("flags_submitted_per_day of 5"),
        "{}",
        refused.message()
    );
    assert!(query(&mut member, &second).await.is_empty());
    assert_eq!(query(&mut member, &first).await.len(), 3);
    // More than the whole day's allowance in one call is said so, without a retry delay.
    let too_many: Vec<_> = (0..6).map(|i| email_digest(&format!("many{i}@example.com"))).collect();
    let refused = member.submit(request(&too_many)).await.unwrap_err();
    assert!(
        refused
            .message()
            .contains("asks for more than its whole flags_submitted_per_day")
    );
    assert!(refused.metadata().get("grpc-retry-pushback-ms").is_none());
}

#[tokio::test]
async fn a_streams_override_applies_and_overrides_survive_a_restart_until_cleared() {
    let server = TestServer::start().await;
    let bundle = server.enroll("streamer", flagshare::model::Role::Member).await;
    let mut admin = server.admin_client().await;
    set_limits(
        &mut admin,
        "streamer",
        pb::Limits {
            streams: Some(1),
            ..Default::default()
        },
    )
    .await;
    let mut member = pb::flags_client::FlagsClient::new(server.channel(&bundle).await);
    let _open = member
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let refused = member.subscribe(pb::SubscribeRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("streams limit"), "{}", refused.message());
    // Zero is refused, naming the field.
    let zero = admin
        .set_principal_limits(pb::SetPrincipalLimitsRequest {
            name: "streamer".to_owned(),
            limits: Some(pb::Limits {
                flags_submitted_per_day: Some(0),
                ..Default::default()
            }),
            clear: false,
        })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), tonic::Code::InvalidArgument);
    assert!(zero.message().contains("limits: every limit must be at least 1"));
    drop(member);
    drop(_open);

    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    let mut admin = server.admin_client().await;
    let kept = admin
        .get_principal_limits(pb::GetPrincipalLimitsRequest {
            name: "streamer".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.overrides.unwrap().streams, Some(1));
    let cleared = admin
        .set_principal_limits(pb::SetPrincipalLimitsRequest {
            name: "streamer".to_owned(),
            limits: None,
            clear: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.overrides.unwrap(), pb::Limits::default());
    assert_eq!(cleared.effective.unwrap().streams, Some(32));
    let unknown = admin
        .get_principal_limits(pb::GetPrincipalLimitsRequest {
            name: "nobody".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_accept() {
    let server = TestServer::start_configured(|config| config.max_connections = 3).await;
    let bundle = server.enroll("many", flagshare::model::Role::Member).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        // The admin connection of `enroll` may take a moment to be given back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let channel = loop {
            match bundle.connect(Some(&server.endpoint())).await {
                Ok(channel) => break channel,
                Err(err) => assert!(std::time::Instant::now() < deadline, "{err}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let mut client = pb::flags_client::FlagsClient::new(channel);
        client.query(query_request(&[[9; 32]])).await.unwrap();
        held.push(client);
    }
    let refused = bundle.connect(Some(&server.endpoint())).await;
    assert!(refused.is_err(), "a fourth connection was accepted");
    assert!(server.scrape().await.counter("flagshare_connections_refused_total", "") >= 1.0);
    // The held connections still work, and a closed one frees its place.
    held[0].query(query_request(&[[9; 32]])).await.unwrap();
    held.pop();
    eventually("a connection can be made again", || async {
        bundle.connect(Some(&server.endpoint())).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_unary_call_whose_request_never_arrives_is_ended_by_the_server_deadline() {
    let server = TestServer::start_configured(|config| config.request_timeout_secs = 1).await;
    let bundle = server.enroll("slow", flagshare::model::Role::Member).await;
    let mut grpc = tonic::client::Grpc::new(server.channel(&bundle).await);
    grpc.ready().await.unwrap();
    // The request message never comes: the handler would wait for it for ever.
    let never = tokio_stream::pending::<pb::QueryRequest>();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        grpc.client_streaming::<_, pb::QueryRequest, pb::QueryResponse, _>(
            tonic::Request::new(never),
            http::uri::PathAndQuery::from_static("/flagshare.v1.Flags/Query"),
            tonic_prost::ProstCodec::default(),
        ),
    )
    .await
    .expect("the server ends the call itself");
    let status = answer.unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{status:?}"
    );
    // And goes on answering.
    let mut client = pb::flags_client::FlagsClient::new(server.channel(&bundle).await);
    client.query(query_request(&[[1; 32]])).await.unwrap();
}

#[tokio::test]
async fn hundreds_of_silent_connections_do_not_hold_up_a_real_client() {
    let server = TestServer::start().await;
    let bundle = server.enroll("real", flagshare::model::Role::Member).await;
    // 300 connections that never start their TLS handshake.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let channel = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        bundle.connect(Some(&server.endpoint())),
    )
    .await
    .expect("a real client connects while silent ones wait out their handshake timeout")
    .unwrap();
    pb::flags_client::FlagsClient::new(channel)
        .query(query_request(&[[3; 32]]))
        .await
        .unwrap();
    drop(silent);
}

#[tokio::test]
async fn each_page_of_held_flags_costs_a_pages_worth_of_queried_digests() {
    let server = TestServer::start().await;
    let mut lister = server.member("lister").await;
    let mut admin = server.admin_client().await;
    set_limits(
        &mut admin,
        "lister",
        pb::Limits {
            digests_queried_per_second: Some(100),
            ..Default::default()
        },
    )
    .await;
    // The bucket holds one full query batch (10,000 digests): ten pages of 1,000, even
    // empty ones, then a refusal naming the limit.
    for page in 0..10 {
        let listed = lister.list_held(pb::ListHeldRequest::default()).await;
        assert!(listed.is_ok(), "page {page}: {listed:?}");
    }
    let refused = lister.list_held(pb::ListHeldRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("digests_queried_per_second"),
        "{}",
        refused.message()
    );
    // The same bucket as queries: a query now waits as well.
    let query_refused = lister.query(query_request(&digests(1_000, 3))).await.unwrap_err();
    assert_eq!(query_refused.code(), tonic::Code::ResourceExhausted);
}
