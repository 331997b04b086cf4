//! The Prometheus endpoint, scraped during real traffic: counters move by exactly what the
//! calls did.

use std::time::Duration;

use flagshare::pb;

use crate::support::{TestServer, email_digest, flag, query_request, submit_request};

const FLAGS: &str = r#"service="flagshare.v1.Flags""#;

#[tokio::test]
async fn a_query_of_ten_digests_with_two_hits_moves_the_counters_by_exactly_that() {
    let server = TestServer::start().await;
    let mut platform_a = server.member("platform-a").await;
    let mut platform_b = server.member("platform-b").await;
    let digests: Vec<_> = (0..10).map(|i| email_digest(&format!("user{i}@example.com"))).collect();
    platform_a
        .submit(submit_request(vec![
            flag(digests[2], pb::Category::Grooming, 80),
            flag(digests[7], pb::Category::Sextortion, 60),
        ]))
        .await
        .unwrap();

    let before = server.scrape().await;
    assert_eq!(
        before.counter("flagshare_flags_created_total", r#"member="platform-a""#),
        2.0
    );
    let matches = platform_b
        .query(query_request(&digests))
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert_eq!(matches.len(), 2);
    let bad = platform_b
        .query(pb::QueryRequest {
            digests: vec![0; 31].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let after = server.scrape().await;

    let delta = |name: &str, labels: &str| after.counter(name, labels) - before.counter(name, labels);
    assert_eq!(delta("flagshare_digests_queried_total", r#"member="platform-b""#), 10.0);
    assert_eq!(delta("flagshare_digests_matched_total", r#"member="platform-b""#), 2.0);
    assert_eq!(delta("flagshare_digests_queried_total", r#"member="platform-a""#), 0.0);
    let query_ok = format!(r#"{FLAGS},method="Query",code="ok""#);
    let query_refused = format!(r#"{FLAGS},method="Query",code="invalid_argument""#);
    assert_eq!(delta("flagshare_rpcs_total", &query_ok), 1.0);
    assert_eq!(delta("flagshare_rpcs_total", &query_refused), 1.0);
    assert_eq!(
        after.counter("flagshare_rpcs_total", &format!(r#"{FLAGS},method="Submit",code="ok""#)),
        1.0
    );
    // Both answered Query calls are in the latency histogram, and took well under 8 s.
    let query = format!(r#"{FLAGS},method="Query""#);
    assert_eq!(delta("flagshare_rpc_duration_seconds_count", &query), 2.0);
    assert_eq!(
        delta(
            "flagshare_rpc_duration_seconds_bucket",
            &format!(r#"{FLAGS},method="Query",le="8.192""#)
        ),
        2.0
    );

    platform_a
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: digests[2].to_vec(),
                kind: 0,
                category: 0,
            }],
            reason: pb::RetractReason::AppealUpheld as i32,
        })
        .await
        .unwrap();
    let retracted = server.scrape().await;
    assert_eq!(
        retracted.counter("flagshare_flags_retracted_total", r#"member="platform-a""#),
        1.0
    );
    // Read at scrape time: the database and both certificates.
    assert!(retracted.value("flagshare_rocksdb_live_sst_bytes", "").is_some());
    assert!(retracted.value("flagshare_rocksdb_running_compactions", "").is_some());
    assert_eq!(retracted.value("flagshare_rocksdb_delayed_write_rate", ""), Some(0.0));
    // The presence filter: its first filter sized for at least 1,048,576 digests, ready
    // once the scan of a near-empty store is done (long before these calls end).
    assert!(
        retracted
            .value("flagshare_presence_filter_bytes", "")
            .is_some_and(|bytes| bytes >= 1_310_720.0)
    );
    assert_eq!(retracted.value("flagshare_presence_filter_ready", ""), Some(1.0));
    assert_eq!(retracted.value("flagshare_presence_filters", ""), Some(1.0));
    // Tickers cost lookups: only with rocksdb_statistics on.
    assert!(retracted.value("flagshare_rocksdb_block_cache_hit_ratio", "").is_none());
    assert!(retracted.value("flagshare_disk_bytes", "").unwrap() > 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for certificate in ["ca", "server"] {
        let expiry = retracted
            .value(
                "flagshare_certificate_expiry_timestamp_seconds",
                &format!(r#"certificate="{certificate}",principal="""#),
            )
            .unwrap();
        assert!(expiry > now + 365.0 * 86_400.0, "{certificate} expires at {expiry}");
    }
}

#[tokio::test]
async fn the_metrics_listener_holds_a_bounded_number_of_connections_and_closes_silent_ones() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start().await;
    let bound = flagshare::metrics::MAX_METRICS_CONNECTIONS;
    let mut silent = Vec::new();
    for _ in 0..bound {
        silent.push(tokio::net::TcpStream::connect(server.metrics_addr).await.unwrap());
    }
    // Accepted in order: once the bound is held, a new connection is closed unanswered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = tokio::net::TcpStream::connect(server.metrics_addr).await.unwrap();
    let _ = refused
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), refused.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {read:?} {}",
        String::from_utf8_lossy(&answer)
    );

    // Silent connections are closed by the server after METRICS_IDLE, freeing their places.
    let idle = flagshare::metrics::METRICS_IDLE;
    for connection in &mut silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(idle + Duration::from_secs(10), connection.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    // And a scraper gets its answer again (`scrape` asserts a 200 with the text format).
    let scraped = server.scrape().await;
    assert!(scraped.0.contains("flagshare_certificate_expiry_timestamp_seconds{"));
}
