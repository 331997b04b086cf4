//! Submit, query and retract across members, and durability across a restart.

use flagshare::pb;
use tonic::Code;

use crate::support::{TestServer, email_digest, flag, import_messages_of, imported, query, submit_request};

#[tokio::test]
async fn a_flag_submitted_by_one_member_matches_another_members_query() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let flagged = email_digest("offender@example.com");
    let clean = email_digest("someone.else@example.com");

    let response = alpha
        .submit(submit_request(vec![flag(flagged, pb::Category::Grooming, 90)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.n_created, response.n_updated), (1, 0));
    assert!(response.sequence >= 1);

    let matches = query(&mut beta, &[clean, flagged, clean]).await;
    assert_eq!(matches.len(), 1, "misses are not returned");
    let found = &matches[0];
    assert_eq!(found.index, 1);
    assert_eq!(found.digest, flagged.to_vec());
    assert_eq!(found.n_members, 1);
    assert_eq!(found.members, vec!["alpha"]);
    assert_eq!(found.categories, vec![pb::Category::Grooming as i32]);
    assert_eq!(found.kinds, vec![pb::IdentifierKind::Email as i32]);
    assert_eq!(found.max_confidence, 90);
    assert!(!found.flagged_by_caller);
    assert!(found.first_seen.is_some() && found.last_seen.is_some());

    let own = query(&mut alpha, &[flagged]).await;
    assert!(own[0].flagged_by_caller);
}

#[tokio::test]
async fn distinct_members_are_counted_once_each() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let mut gamma = server.member("gamma").await;
    let digest = email_digest("counted@example.com");

    alpha
        .submit(submit_request(vec![
            flag(digest, pb::Category::Grooming, 40),
            flag(digest, pb::Category::Sextortion, 60),
        ]))
        .await
        .unwrap();
    beta.submit(submit_request(vec![flag(digest, pb::Category::Grooming, 75)]))
        .await
        .unwrap();

    let matches = query(&mut gamma, &[digest]).await;
    assert_eq!(
        matches[0].n_members, 2,
        "two categories from alpha still count alpha once"
    );
    assert_eq!(matches[0].members, vec!["alpha", "beta"]);
    assert_eq!(
        matches[0].categories,
        vec![pb::Category::Grooming as i32, pb::Category::Sextortion as i32]
    );
    assert_eq!(matches[0].max_confidence, 75);
}

#[tokio::test]
async fn resubmitting_the_same_flag_updates_it_instead_of_duplicating_it() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let digest = email_digest("again@example.com");

    let observed = |seconds: i64, confidence: u32| pb::Flag {
        observed_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..flag(digest, pb::Category::Grooming, confidence)
    };
    let first = alpha
        .submit(submit_request(vec![observed(1_700_000_000, 30)]))
        .await
        .unwrap()
        .into_inner();
    // Observed earlier than the first: the stored record must be read back to widen it.
    let second = alpha
        .submit(submit_request(vec![observed(1_600_000_000, 95)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.n_created, first.n_updated), (1, 0));
    assert_eq!((second.n_created, second.n_updated), (0, 1));
    assert!(second.sequence > first.sequence);

    let matches = query(&mut beta, &[digest]).await;
    assert_eq!(matches[0].n_members, 1);
    assert_eq!(matches[0].categories.len(), 1);
    assert_eq!(matches[0].max_confidence, 95, "the latest confidence wins");
    assert_eq!(matches[0].first_seen.as_ref().unwrap().seconds, 1_600_000_000);
    assert_eq!(matches[0].last_seen.as_ref().unwrap().seconds, 1_700_000_000);
}

#[tokio::test]
async fn a_batch_mixing_stored_new_and_repeated_flags_merges_each_in_order() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let stored = email_digest("stored@example.com");
    let fresh = email_digest("fresh@example.com");
    let repeated = email_digest("repeated@example.com");
    let observed = |digest, seconds: i64, confidence: u32| pb::Flag {
        observed_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..flag(digest, pb::Category::Grooming, confidence)
    };
    alpha
        .submit(submit_request(vec![observed(stored, 1_500_000_000, 10)]))
        .await
        .unwrap();

    let outcome = alpha
        .submit(submit_request(vec![
            observed(repeated, 1_700_000_000, 20),
            observed(stored, 1_600_000_000, 40),
            observed(fresh, 1_650_000_000, 50),
            observed(repeated, 1_690_000_000, 60),
        ]))
        .await
        .unwrap()
        .into_inner();
    // `repeated` is created by its first item and updated by its second.
    assert_eq!((outcome.n_created, outcome.n_updated), (2, 2));

    let matches = query(&mut beta, &[stored, fresh, repeated]).await;
    let seen = |digest: flagshare::digest::Digest| {
        let found = matches
            .iter()
            .find(|found| found.digest == digest.to_vec())
            .expect("every digest matches");
        (
            found.max_confidence,
            found.first_seen.as_ref().unwrap().seconds,
            found.last_seen.as_ref().unwrap().seconds,
        )
    };
    assert_eq!(seen(stored), (40, 1_500_000_000, 1_600_000_000));
    assert_eq!(seen(fresh), (50, 1_650_000_000, 1_650_000_000));
    assert_eq!(
        seen(repeated),
        (60, 1_690_000_000, 1_700_000_000),
        "the later item wins, times widen"
    );
    assert!(matches.iter().all(|found| found.n_members == 1));
}

#[tokio::test]
async fn retraction_removes_the_match_and_only_touches_the_callers_flags() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let shared = email_digest("shared@example.com");
    let alpha_only = email_digest("alpha.only@example.com");
    alpha
        .submit(submit_request(vec![
            flag(shared, pb::Category::Grooming, 80),
            flag(alpha_only, pb::Category::Grooming, 80),
            flag(alpha_only, pb::Category::Trafficking, 80),
        ]))
        .await
        .unwrap();
    beta.submit(submit_request(vec![flag(shared, pb::Category::Sextortion, 50)]))
        .await
        .unwrap();

    // beta cannot withdraw alpha's flag: its selector matches nothing of its own.
    let refused = beta
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: alpha_only.to_vec(),
                kind: 0,
                category: 0,
            }],
            reason: pb::RetractReason::FalsePositive as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refused.n_retracted, 0);
    assert_eq!(refused.unmatched_indexes, vec![0]);
    assert_eq!(query(&mut beta, &[alpha_only]).await.len(), 1);

    // An unspecified kind and category withdraw every one of alpha's flags on the digest.
    let retracted = alpha
        .retract(pb::RetractRequest {
            flags: vec![
                pb::FlagSelector {
                    digest: alpha_only.to_vec(),
                    kind: 0,
                    category: 0,
                },
                pb::FlagSelector {
                    digest: shared.to_vec(),
                    kind: pb::IdentifierKind::Email as i32,
                    category: pb::Category::Grooming as i32,
                },
            ],
            reason: pb::RetractReason::AppealUpheld as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retracted.n_retracted, 3);
    assert!(retracted.unmatched_indexes.is_empty());

    let matches = query(&mut beta, &[alpha_only, shared]).await;
    assert_eq!(matches.len(), 1, "alpha_only no longer matches");
    assert_eq!(matches[0].index, 1);
    assert_eq!(
        matches[0].members,
        vec!["beta"],
        "beta's own flag on the shared digest stays"
    );
}

#[tokio::test]
async fn flags_and_principals_survive_a_restart() {
    let server = TestServer::start().await;
    let alpha_bundle = server.enroll("alpha", flagshare::model::Role::Member).await;
    let beta_bundle = server.enroll("beta", flagshare::model::Role::Member).await;
    let digest = email_digest("durable@example.com");
    let mut alpha = flagshare::pb::flags_client::FlagsClient::new(server.channel(&alpha_bundle).await);
    let before = alpha
        .submit(submit_request(vec![flag(digest, pb::Category::CsamSharing, 70)]))
        .await
        .unwrap()
        .into_inner();

    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;

    let mut beta = flagshare::pb::flags_client::FlagsClient::new(server.channel(&beta_bundle).await);
    let matches = query(&mut beta, &[digest]).await;
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].members, vec!["alpha"]);
    assert_eq!(matches[0].categories, vec![pb::Category::CsamSharing as i32]);

    // The change log continues where it stopped: sequence numbers never repeat.
    let mut alpha = flagshare::pb::flags_client::FlagsClient::new(server.channel(&alpha_bundle).await);
    let after = alpha
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 70)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.sequence, before.sequence + 1);
}

#[tokio::test]
async fn an_expired_flag_stops_matching() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let digest = email_digest("short.lived@example.com");
    let mut short = flag(digest, pb::Category::Grooming, 80);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let expires_ms = now.as_millis() as i64 + 1_500;
    short.expires_at = Some(flagshare::wire::timestamp_from_ms(expires_ms));
    alpha.submit(submit_request(vec![short])).await.unwrap();
    assert_eq!(query(&mut alpha, &[digest]).await.len(), 1);
    // Bounded wait for the expiry to pass (the flag's own clock, not a timing assertion).
    tokio::time::sleep(std::time::Duration::from_millis(1_700)).await;
    assert!(query(&mut alpha, &[digest]).await.is_empty());
}

#[tokio::test]
async fn health_and_reflection_answer_without_proto_files() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let channel = server.channel(&server.admin).await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "flagshare.v1.Flags".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    for expected in ["flagshare.v1.Flags", "flagshare.v1.Admin", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// Messages of 10,000 flags with digests `from..to`.
fn import_messages(from: u32, to: u32) -> Vec<pb::ImportRequest> {
    import_messages_of(from, to, 10_000)
}

/// Every answer of an import of `messages`, and how it ended.
async fn import(
    client: &mut flagshare::pb::flags_client::FlagsClient<tonic::transport::Channel>,
    messages: Vec<pb::ImportRequest>,
) -> (Vec<pb::ImportProgress>, Result<(), tonic::Status>) {
    let mut answers = match client.import(tokio_stream::iter(messages)).await {
        Ok(answers) => answers.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut progress = Vec::new();
    loop {
        match answers.message().await {
            Ok(Some(answer)) => progress.push(answer),
            Ok(None) => return (progress, Ok(())),
            Err(status) => return (progress, Err(status)),
        }
    }
}

/// An import faster than its member's per-second flag limit slows to it: every message
/// waits for the limit to refill (the stream's flow control holds the client back) and
/// the import completes with no refusal (before, its second message was refused).
#[tokio::test]
async fn an_import_over_its_members_rate_slows_to_it_instead_of_failing() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut admin = server.admin_client().await;
    crate::support::set_limits(
        &mut admin,
        "alpha",
        pb::Limits {
            flags_submitted_per_second: Some(10_000),
            ..Default::default()
        },
    )
    .await;
    let n = 40_000;
    let (progress, ended) = import(&mut alpha, import_messages_of(0, n, 10_000)).await;
    ended.unwrap();
    assert_eq!(progress.last().unwrap().n_created, u64::from(n));
    assert!(progress.last().unwrap().done);
    assert_eq!(crate::support::audit_count(&mut admin, "limit_exceeded").await, 0);
}

#[tokio::test]
async fn an_import_commits_in_blocks_reports_each_and_reads_as_submitted_flags() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let n = 250_000;
    let (progress, ended) = import(&mut alpha, import_messages(0, n)).await;
    ended.unwrap();
    let blocks: Vec<(u32, u64, bool)> = progress.iter().map(|p| (p.n_blocks, p.n_created, p.done)).collect();
    assert_eq!(blocks, [(1, 200_000, false), (2, 250_000, true)]);
    assert_eq!(progress[1].sequence, u64::from(n));

    let sample: Vec<[u8; 32]> = (0..n).step_by(997).map(imported).collect();
    assert_eq!(query(&mut beta, &sample).await.len(), sample.len());
    assert!(query(&mut beta, &[imported(n)]).await.is_empty());
    let mut admin = server.admin_client().await;
    assert_eq!(crate::support::audit_count(&mut admin, "import").await, 2);
    let stats = admin
        .get_stats(pb::GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.n_active_flags, u64::from(n));

    // Again: updates, nothing new.
    let (progress, ended) = import(&mut alpha, import_messages(0, 10_000)).await;
    ended.unwrap();
    assert_eq!((progress[0].n_created, progress[0].n_updated), (0, 10_000));
}

#[tokio::test]
async fn a_bad_message_ends_an_import_naming_the_flag_and_leaves_the_open_block_unstored() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let mut messages = import_messages(0, 30_000);
    messages[2].flags[5].kind = 0;
    let (progress, ended) = import(&mut alpha, messages).await;
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("flags[20005].kind"),
        "{}",
        status.message()
    );
    assert!(progress.is_empty());
    let first: Vec<[u8; 32]> = (0..20_000).step_by(100).map(imported).collect();
    assert!(
        query(&mut beta, &first).await.is_empty(),
        "the open block was never committed"
    );

    let mut messages = import_messages(0, 20_000);
    messages[1].key_id = 2;
    let status = import(&mut alpha, messages).await.1.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("key_id: 2 after 1"),
        "{}",
        status.message()
    );
}

/// Messages of 7,000: the one across the end of the first block is split there, and a bad
/// flag just past it is named by its index in the import, after the first block committed.
#[tokio::test]
async fn a_message_across_a_block_boundary_is_split_there_and_its_flags_keep_their_indexes() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let mut messages = import_messages_of(0, 210_000, 7_000);
    // Message 28 holds flags 196,000..203,000; its 5,001st is flag 200,001.
    messages[28].flags[4_001].kind = 0;
    let (progress, ended) = import(&mut alpha, messages).await;
    let status = ended.unwrap_err();
    assert!(
        status.message().starts_with("flags[200001].kind"),
        "{}",
        status.message()
    );
    let blocks: Vec<(u32, u64)> = progress.iter().map(|p| (p.n_blocks, p.n_created)).collect();
    assert_eq!(blocks, [(1, 200_000)]);
    assert_eq!(query(&mut beta, &[imported(199_999)]).await.len(), 1, "the first block");
    assert!(
        query(&mut beta, &[imported(200_000)]).await.is_empty(),
        "not the second"
    );

    let (progress, ended) = import(&mut alpha, import_messages_of(0, 203_000, 7_000)).await;
    ended.unwrap();
    let blocks: Vec<(u32, u64, u64)> = progress
        .iter()
        .map(|p| (p.n_blocks, p.n_created, p.n_updated))
        .collect();
    assert_eq!(blocks, [(1, 0, 200_000), (2, 3_000, 200_000)]);
    assert_eq!(query(&mut beta, &[imported(200_000), imported(202_999)]).await.len(), 2);
}

#[tokio::test]
async fn imports_beyond_the_servers_slots_are_refused_until_one_ends() {
    let server = TestServer::start().await;
    let mut open = Vec::new();
    let mut senders = Vec::new();
    for i in 0..flagshare::server::IMPORT_SLOTS {
        let mut member = server.member(&format!("importer{i}")).await;
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ImportRequest>(1);
        let answers = member
            .import(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        open.push(answers);
        senders.push(sender);
    }
    let mut late = server.member("late").await;
    let (_, ended) = import(&mut late, import_messages(0, 10)).await;
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("import: 2 imports are running"),
        "{}",
        status.message()
    );
    // One ends (its input closes): a new import runs.
    senders.pop();
    let mut answers = open.pop().unwrap();
    let last = answers.message().await.unwrap().unwrap();
    assert!(last.done && last.n_blocks == 0);
    // The answers end once the import has let go of its slot.
    assert!(answers.message().await.unwrap().is_none());
    let (progress, ended) = import(&mut late, import_messages(0, 10)).await;
    ended.unwrap();
    assert_eq!(progress.last().map(|p| p.n_created), Some(10));
}

#[tokio::test]
async fn an_import_that_sends_nothing_is_ended_and_gives_its_slot_back() {
    let server = TestServer::start_configured(|config| config.request_timeout_secs = 1).await;
    let mut stalled = server.member("stalled").await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ImportRequest>(1);
    let started = std::time::Instant::now();
    let mut answers = stalled
        .import(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), answers.message())
        .await
        .expect("the server ends a silent import")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().starts_with("import: no message for 1 s"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    drop(sender);
    // Its slot is free again: with all other slots held, one more import still runs.
    let mut held = Vec::new();
    for i in 1..flagshare::server::IMPORT_SLOTS {
        let mut member = server.member(&format!("holder{i}")).await;
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ImportRequest>(1);
        let answers = member
            .import(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .unwrap();
        held.push((sender, answers));
    }
    let mut next = server.member("next").await;
    let (progress, ended) = import(&mut next, import_messages(0, 10)).await;
    ended.unwrap();
    assert_eq!(progress.last().map(|p| (p.done, p.n_created)), Some((true, 10)));
}

#[tokio::test]
async fn an_import_meets_the_members_daily_limit_and_commits_nothing_past_it() {
    let server = TestServer::start_configured(|config| {
        let limits = flagshare::config::RoleLimits {
            flags_submitted_per_day: 15_000,
            ..Default::default()
        };
        config.limits.insert("member".to_owned(), limits);
    })
    .await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let (progress, ended) = import(&mut alpha, import_messages(0, 30_000)).await;
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("flags_submitted_per_day"),
        "{}",
        status.message()
    );
    assert!(progress.is_empty());
    // The open block (the 10,000 flags taken before the limit) was never committed.
    let first: Vec<[u8; 32]> = (0..10_000).step_by(100).map(imported).collect();
    assert!(query(&mut beta, &first).await.is_empty());
}
