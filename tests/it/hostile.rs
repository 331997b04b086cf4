//! Hostile insiders: a peer operator serving forged and malformed events, and a member
//! holding hundreds of streams it never reads. The server refuses what is not the caller's
//! to say, counts it, keeps serving everyone else, and stops when told.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flagshare::client::{Bundle, BundleConfig};
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pki::{Pki, generate_client_key};
use flagshare::wire::timestamp_from_ms;
use rcgen::PublicKeyData as _;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use crate::support::{TestServer, email_digest, eventually, flag, peer_status, query, submit_request};

/// The fake peer's own operator id: the only origin the receiver may believe from it.
const FAKE_ORIGIN: [u8; 8] = [0xF0; 8];
/// Another operator the fake peer pretends to speak for.
const OTHER_ORIGIN: [u8; 8] = [0x0A; 8];

/// A peer operator's server that serves scripted batches of its "change log" over mutual
/// TLS, with its own CA, then keeps the stream open.
struct FakePeer {
    batches: Arc<Vec<pb::PullBatch>>,
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullBatch, Status>> + Send>>;

#[tonic::async_trait]
impl pb::federation_server::Federation for FakePeer {
    type PullStream = PullStream;

    async fn pull(&self, request: Request<pb::PullRequest>) -> Result<Response<PullStream>, Status> {
        let after = request.into_inner().after;
        let batches: Vec<Result<pb::PullBatch, Status>> = self
            .batches
            .iter()
            .filter(|batch| batch.cursor > after)
            .cloned()
            .map(Ok)
            .collect();
        let stream = tokio_stream::iter(batches).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Starts the fake peer on 127.0.0.1:0 and returns the bundle its operator issues to the
/// receiver (a `peer` certificate from the fake peer's CA, naming its operator id).
async fn start_fake_peer(dir: &std::path::Path, batches: Vec<pb::PullBatch>) -> Bundle {
    let pki = Pki::create(dir, "op-fake", &["localhost".to_owned()]).unwrap();
    let key = generate_client_key().unwrap();
    let (cert_pem, _) = pki
        .issue_client_certificate("receiver", Role::Peer, &key.subject_public_key_info())
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server_pem, &pki.server_key_pem))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem));
    let service = pb::federation_server::FederationServer::new(FakePeer {
        batches: Arc::new(batches),
    })
    .max_encoding_message_size(64 << 20);
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Bundle {
        dir: Default::default(),
        config: BundleConfig {
            name: "receiver".to_owned(),
            role: "peer".to_owned(),
            endpoint: format!("https://127.0.0.1:{}", addr.port()),
            endpoints: Vec::new(),
            server_name: "localhost".to_owned(),
            operator_id: hex::encode(FAKE_ORIGIN),
            operator_key: String::new(),
        },
        cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem: pki.ca_pem.clone(),
    }
}

fn event(sequence: u64, origin: [u8; 8], member: &str, digest: [u8; 32], expires_at_ms: i64) -> pb::FederatedEvent {
    let now = flagshare::util::now_ms();
    pb::FederatedEvent {
        sequence,
        origin_operator: origin.to_vec(),
        origin_operator_name: "op-fake".to_owned(),
        origin_sequence: sequence,
        member_id: member.to_owned(),
        member_name: String::new(),
        digest: digest.to_vec(),
        kind: pb::IdentifierKind::Email as i32,
        category: pb::Category::Grooming as i32,
        op: pb::federated_event::Op::Upsert as i32,
        confidence: 60,
        first_seen: Some(timestamp_from_ms(now - 1_000)),
        last_seen: Some(timestamp_from_ms(now - 500)),
        expires_at: Some(timestamp_from_ms(expires_at_ms)),
        reason: 0,
        signature: Vec::new(),
    }
}

fn batch(cursor: u64, events: Vec<pb::FederatedEvent>) -> pb::PullBatch {
    pb::PullBatch {
        events,
        cursor,
        head: cursor,
        db_identity: vec![1; 8],
    }
}

/// What the hostile peer serves: one good flag among forgeries, a forged u64::MAX
/// version, over-long expiries, garbage, 70,000 members on one digest, then batches of
/// nothing but garbage (which make the receiver pause it).
fn hostile_script(good: [u8; 32], crowded: [u8; 32]) -> Vec<pb::PullBatch> {
    let now = flagshare::util::now_ms();
    let year = 365 * 24 * 3600 * 1000;
    let mut garbage = event(4, FAKE_ORIGIN, "m-garbage", good, now + year);
    garbage.digest = vec![1; 31];
    let mut unknown_op = event(5, FAKE_ORIGIN, "m-garbage", good, now + year);
    unknown_op.op = 42;
    let mut forged_max = event(6, OTHER_ORIGIN, "m-victim", good, now + year);
    forged_max.origin_sequence = u64::MAX;
    let far_future = flagshare::util::now_ms() + 5_000 * year; // the year ~7000
    let mut script = vec![batch(
        6,
        vec![
            event(1, FAKE_ORIGIN, "m-honest", good, far_future),
            event(2, OTHER_ORIGIN, "m-victim", good, now + year),
            event(
                3,
                OTHER_ORIGIN,
                "m-invented",
                email_digest("victim@example.com"),
                now + year,
            ),
            garbage,
            unknown_op,
            forged_max,
        ],
    )];
    // 70,000 members of the fake operator on one digest, 10,000 a batch, each batch with
    // one good flag of its own (so the peer is not paused before it sent them all).
    for chunk in 0..7u64 {
        let mut events: Vec<pb::FederatedEvent> = (0..10_000u64)
            .map(|i| {
                let n = chunk * 10_000 + i;
                event(100 + n, FAKE_ORIGIN, &format!("m-{n}"), crowded, now + year)
            })
            .collect();
        let own = email_digest(&format!("own-{chunk}@example.com"));
        events.push(event(90_000 + chunk, FAKE_ORIGIN, "m-honest", own, now + year));
        script.push(batch(100 + (chunk + 1) * 10_000, events));
    }
    for extra in 0..3u64 {
        let mut bad = event(200_000 + extra, FAKE_ORIGIN, "m-garbage", good, now + year);
        bad.kind = 99;
        script.push(batch(200_000 + extra, vec![bad]));
    }
    script
}

#[tokio::test]
async fn a_hostile_peer_is_refused_counted_and_paused_and_the_server_keeps_serving() {
    let fake_dir = tempfile::tempdir().unwrap();
    let good = email_digest("honest-flag@example.com");
    let crowded = email_digest("crowded@example.com");
    let bundle = start_fake_peer(fake_dir.path(), hostile_script(good, crowded)).await;
    let receiver = TestServer::start_named("op-r").await;
    let bundle_dir = receiver.data_dir().join("peer-fake");
    bundle.write(&bundle_dir).unwrap();
    receiver
        .admin_client()
        .await
        .configure_peer(pb::ConfigurePeerRequest {
            name: "fake".to_owned(),
            endpoint: bundle.config.endpoint.clone(),
            bundle_dir: bundle_dir.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the receiver pauses the peer", || async {
        peer_status(&receiver, "fake").await.state == "paused"
    })
    .await;

    let status = peer_status(&receiver, "fake").await;
    assert_eq!(status.operator_id, hex::encode(FAKE_ORIGIN));
    assert!(
        status.pause_reason.contains("only refused events"),
        "{}",
        status.pause_reason
    );
    // 2 forged origins + 1 forged u64::MAX version + 2 malformed + 3 garbage batches, and
    // of the 70,000 members everything past the digest's per-origin bound of 1,024
    // (the member bound of 5,000 is reached first for the rest).
    let n_expected = 3 + 2 + 3 + (70_000 - 1_024);
    assert_eq!(status.n_rejected, n_expected, "{}", status.last_rejection);
    assert!(status.last_rejection.contains("kind"), "{}", status.last_rejection);

    let mut member = receiver.member("alpha").await;
    let found = query(&mut member, &[good, crowded, email_digest("victim@example.com")]).await;
    let by_digest = |digest: [u8; 32]| found.iter().find(|m| m.digest == digest.to_vec());
    let honest = by_digest(good).expect("the peer's own good flag is kept");
    assert_eq!(
        honest.members,
        vec!["op-fake/m-honest"],
        "no forged member of another operator"
    );
    let crowd = by_digest(crowded).expect("the crowded digest still answers");
    assert_eq!(crowd.n_members, 1_024, "bounded per origin per digest");
    assert!(
        by_digest(email_digest("victim@example.com")).is_none(),
        "an invented member of another operator is not believed"
    );

    // Good writes go on, and the audit log names the refusals.
    member
        .submit(submit_request(vec![flag(
            email_digest("next@example.com"),
            pb::Category::Grooming,
            80,
        )]))
        .await
        .unwrap();
    let audit = receiver
        .admin_client()
        .await
        .list_audit(pb::ListAuditRequest {
            op: "federation_apply".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        audit.iter().any(|entry| entry.detail.contains("origin_operator")),
        "{:?}",
        audit.iter().map(|entry| &entry.detail).collect::<Vec<_>>()
    );

    // After a restart: the same state, the pause kept, writes still fine.
    let dir = receiver.stop().await;
    let receiver = TestServer::start_in_named(dir, "op-r").await;
    let status = peer_status(&receiver, "fake").await;
    assert_eq!(status.state, "paused");
    assert_eq!(status.n_rejected, n_expected);
    let mut member = receiver.member("beta").await;
    member
        .submit(submit_request(vec![flag(
            email_digest("after@example.com"),
            pb::Category::Grooming,
            80,
        )]))
        .await
        .unwrap();
    let found = query(&mut member, &[good, email_digest("after@example.com")]).await;
    assert_eq!(found.len(), 2);
    let stats = receiver
        .admin_client()
        .await
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    // The honest flag, its 7 companions, 1,024 crowd members, and the two member flags.
    assert_eq!(stats.n_active_flags, 1 + 7 + 1_024 + 2);
}

#[tokio::test]
async fn hundreds_of_unread_streams_cost_no_threads_and_shutdown_still_ends_the_server() {
    use crate::support::process::{ServeProcess, flagshare, ok, path};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(flagshare(&["init", "--data", path(&data)]));
    // One member loads 200,000 flags: above the flood quarantine's hourly default.
    let settings = data.join("flagshare.toml");
    let text = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        text.replace(
            "quarantine_new_flags_per_hour = 100000",
            "quarantine_new_flags_per_hour = 0",
        ),
    )
    .unwrap();
    let server = ServeProcess::start(&data);
    let admin_bundle = Bundle::load(&data.join("clients").join("admin")).unwrap();
    let admin_channel = admin_bundle.connect(Some(&server.endpoint())).await.unwrap();
    let mut admin = pb::admin_client::AdminClient::new(admin_channel);
    let mut channels = Vec::new();
    for i in 0..21 {
        let bundle = flagshare::client::enroll(
            &mut admin,
            &format!("m{i}"),
            Role::Member,
            &server.endpoint(),
            "localhost",
        )
        .await
        .unwrap();
        channels.push(bundle.connect(None).await.unwrap());
    }
    // 200,000 flags, so every snapshot has far more to send than a reader takes.
    let mut loader = pb::flags_client::FlagsClient::new(channels[0].clone());
    for chunk in 0..20u32 {
        let flags = (0..10_000u32)
            .map(|i| {
                flag(
                    *blake3::hash(&(chunk * 10_000 + i).to_be_bytes()).as_bytes(),
                    pb::Category::Grooming,
                    70,
                )
            })
            .collect();
        loader.submit(submit_request(flags)).await.unwrap();
    }
    // Memory with the data loaded and every connection open, before any stream.
    let before_streams = server.resident_bytes();
    // 600 Subscribe calls that are never read: 20 members x 30, each on its own connection.
    let mut open = Vec::new();
    for channel in &channels[1..] {
        let mut client = pb::flags_client::FlagsClient::new(channel.clone());
        for _ in 0..30 {
            let stream = client
                .subscribe(pb::SubscribeRequest::default())
                .await
                .unwrap()
                .into_inner();
            open.push(stream);
        }
    }
    assert_eq!(open.len(), 600);
    // The per-principal bound: a member's 33rd stream is refused, naming the limit.
    let mut greedy = pb::flags_client::FlagsClient::new(channels[1].clone());
    let mut extra = Vec::new();
    let refusal = loop {
        match greedy.subscribe(pb::SubscribeRequest::default()).await {
            Ok(stream) => extra.push(stream.into_inner()),
            Err(status) => break status,
        }
        assert!(extra.len() <= 32, "the stream bound was not enforced");
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted);
    assert!(
        refusal.message().contains("max_streams_per_principal"),
        "{}",
        refusal.message()
    );

    // Everyone else is still answered.
    let digest = *blake3::hash(&7u32.to_be_bytes()).as_bytes();
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        loader.query(crate::support::query_request(&[digest])),
    )
    .await
    .expect("a query is answered while 600 streams are stalled")
    .unwrap()
    .into_inner();
    assert_eq!(answer.matches.len(), 1);

    // What the stalled streams cost is bounded: each holds the batch in hand, one queued
    // batch (2,000 events) and the message HTTP/2 flow control holds back, never its
    // snapshot (200,000 digests each). The stated bound: 2 MiB of resident memory per
    // stalled stream, and no growth once they are stalled. Measured figures are printed.
    let mut growth = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        growth.push(server.resident_bytes().saturating_sub(before_streams));
    }
    eprintln!(
        "resident memory: {} MiB before the streams; +{} MiB, then +{} MiB two seconds later, with 600 stalled streams",
        before_streams >> 20,
        growth[0] >> 20,
        growth[1] >> 20
    );
    for grown in &growth {
        assert!(
            *grown <= 600 * (2 << 20),
            "600 stalled streams grew the server by {} MiB",
            grown >> 20
        );
    }
    assert!(
        growth[1] <= growth[0] + (16 << 20),
        "memory still grows: {} MiB, then {} MiB",
        growth[0] >> 20,
        growth[1] >> 20
    );

    // SIGTERM ends the server within 10 s while every stream is still open and unread.
    let status = server.stop_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    drop(open);
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_handshake_is_closed() {
    use tokio::io::AsyncReadExt as _;
    let server = TestServer::start_configured(|config| config.idle_connection_secs = 1).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buffer = [0u8; 64];
    // Nothing is sent: no ClientHello. The server closes the socket after a second idle.
    let closed = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buffer))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // And keeps serving real clients, whose connections answer its pings.
    let mut alpha = server.member("alpha").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(query(&mut alpha, &[email_digest("x@example.com")]).await.is_empty());
}
