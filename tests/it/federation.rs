//! Federation between three real servers on loopback, each with its own PKI: the peers'
//! certificates are issued as `peer` principals by the operator they pull from.

use std::time::Duration;

use flagshare::digest::Digest;
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::federation_client::FederationClient;
use flagshare::pb::flags_client::FlagsClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TestServer, audit_count, email_digest, eventually, flag, peer_status, query, submit_request};

/// `puller` pulls from `source`, which issues it a `peer` principal named `name_on_source`;
/// on `puller` the peer is called `peer_name`.
async fn link(puller: &TestServer, source: &TestServer, name_on_source: &str, peer_name: &str) {
    let bundle = source.enroll(name_on_source, Role::Peer).await;
    let dir = puller.data_dir().join("peer-bundles").join(peer_name);
    bundle.write(&dir).unwrap();
    puller
        .admin_client()
        .await
        .configure_peer(pb::ConfigurePeerRequest {
            name: peer_name.to_owned(),
            endpoint: source.endpoint(),
            bundle_dir: dir.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Sets what `server` sends to the peer principal `name` (a policy-only peer).
async fn send_policy(server: &TestServer, name: &str, policy: pb::ConfigurePeerRequest) {
    server
        .admin_client()
        .await
        .configure_peer(pb::ConfigurePeerRequest {
            name: name.to_owned(),
            ..policy
        })
        .await
        .unwrap();
}

/// Makes `server` believe the signed events of `origin`'s operator that its peers pass on,
/// naming that operator `name`: the key an operator reads off `admin stats` of the other.
async fn trust_origin(server: &TestServer, name: &str, origin: &TestServer) {
    let identity = stats(origin).await;
    server
        .admin_client()
        .await
        .configure_peer(pb::ConfigurePeerRequest {
            name: name.to_owned(),
            operator_id: identity.operator_id,
            operator_key: identity.operator_key,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn stats(server: &TestServer) -> pb::GetStatsResponse {
    server
        .admin_client()
        .await
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Until `puller` has applied everything `source` has committed so far.
async fn caught_up(puller: &TestServer, peer_name: &str, source: &TestServer) {
    let head = stats(source).await.change_sequence;
    eventually(&format!("{peer_name} is caught up to {head}"), || async {
        let status = peer_status(puller, peer_name).await;
        status.cursor >= head && status.lag == 0
    })
    .await;
}

async fn matched(client: &mut FlagsClient<Channel>, digest: Digest) -> Option<pb::Match> {
    query(client, &[digest]).await.into_iter().next()
}

#[tokio::test]
async fn flags_travel_by_policy_and_retractions_follow_them() {
    let a = TestServer::start_named("op-a").await;
    let b = TestServer::start_named("op-b").await;
    let c = TestServer::start_named("op-c").await;
    let d = TestServer::start_named("op-d").await;
    // A → B → C and B → D. A reveals names to B and withholds trafficking; B passes A's
    // flags on to C but not to D (the default).
    send_policy(
        &a,
        "b",
        pb::ConfigurePeerRequest {
            categories: vec![pb::Category::Grooming as i32, pb::Category::Sextortion as i32],
            reveal_names: true,
            ..Default::default()
        },
    )
    .await;
    send_policy(
        &b,
        "c",
        pb::ConfigurePeerRequest {
            pass_on: true,
            ..Default::default()
        },
    )
    .await;
    link(&b, &a, "b", "a").await;
    link(&c, &b, "c", "b").await;
    link(&d, &b, "d", "b").await;
    // C accepts A's flags that B passes on, signed by A.
    trust_origin(&c, "op-a", &a).await;

    let mut alpha = a.member("alpha").await;
    let mut beta = b.member("beta").await;
    let mut gamma = c.member("gamma").await;
    let mut delta = d.member("delta").await;
    let shared = email_digest("shared@example.com");
    let local = email_digest("local-only@example.com");
    let excluded = email_digest("trafficking@example.com");
    let mut local_flag = flag(local, pb::Category::Grooming, 70);
    local_flag.distribution = pb::Distribution::Local as i32;
    alpha
        .submit(submit_request(vec![
            flag(shared, pb::Category::Grooming, 90),
            local_flag,
            flag(excluded, pb::Category::Trafficking, 60),
        ]))
        .await
        .unwrap();
    beta.submit(submit_request(vec![flag(shared, pb::Category::Sextortion, 50)]))
        .await
        .unwrap();

    eventually("A's flag reaches C through B", || {
        let mut gamma = gamma.clone();
        async move {
            matched(&mut gamma, shared)
                .await
                .is_some_and(|found| found.n_members == 2)
        }
    })
    .await;
    caught_up(&b, "a", &a).await;
    caught_up(&c, "b", &b).await;
    caught_up(&d, "b", &b).await;
    let on_d = matched(&mut delta, shared).await.unwrap();
    assert_eq!(
        on_d.n_members, 1,
        "B does not pass A's flag on to D: {:?}",
        on_d.members
    );
    assert!(on_d.members[0].starts_with("op-b/"), "{:?}", on_d.members);
    let on_b = matched(&mut beta, shared).await.unwrap();
    assert_eq!(on_b.members, vec!["beta", "op-a/alpha"], "A reveals names to B");
    assert!(on_b.flagged_by_caller);
    let on_c = matched(&mut gamma, shared).await.unwrap();
    assert_eq!(on_c.n_members, 2);
    assert!(
        on_c.members.iter().any(|m| m.starts_with("op-b/m-")),
        "B's own member, pseudonymised: {:?}",
        on_c.members
    );
    assert!(
        on_c.members.iter().any(|m| m.starts_with("op-a/m-")),
        "B sends pseudonyms to C: {:?}",
        on_c.members
    );
    for (what, digest) in [("a LOCAL flag", local), ("an excluded category", excluded)] {
        assert!(matched(&mut beta, digest).await.is_none(), "{what} reached B");
        assert!(matched(&mut gamma, digest).await.is_none(), "{what} reached C");
    }
    assert_eq!(matched(&mut alpha, local).await.unwrap().n_members, 1, "but stays on A");

    // A's policy changes after the flag was sent; its retraction must still reach B.
    send_policy(
        &a,
        "b",
        pb::ConfigurePeerRequest {
            categories: vec![pb::Category::Sextortion as i32],
            ..Default::default()
        },
    )
    .await;
    alpha
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: shared.to_vec(),
                ..Default::default()
            }],
            reason: pb::RetractReason::FalsePositive as i32,
        })
        .await
        .unwrap();
    eventually("the retraction reaches C", || {
        let mut gamma = gamma.clone();
        async move {
            matched(&mut gamma, shared)
                .await
                .is_some_and(|found| found.n_members == 1)
        }
    })
    .await;
    let on_b = matched(&mut beta, shared).await.unwrap();
    assert_eq!(on_b.members, vec!["beta"], "the retraction reached B");
    let on_c = matched(&mut gamma, shared).await.unwrap();
    assert!(on_c.members[0].starts_with("op-b/"), "{:?}", on_c.members);
    assert_eq!(peer_status(&c, "b").await.n_rejected, 0);
}

#[tokio::test]
async fn a_ring_of_three_converges_without_loops_or_double_counting() {
    let servers = [
        TestServer::start_named("op-a").await,
        TestServer::start_named("op-b").await,
        TestServer::start_named("op-c").await,
    ];
    let names = ["a", "b", "c"];
    // Each pulls from the one before it and passes everything on.
    for i in 0..3 {
        let source = (i + 2) % 3;
        send_policy(
            &servers[source],
            names[i],
            pb::ConfigurePeerRequest {
                pass_on: true,
                ..Default::default()
            },
        )
        .await;
        link(&servers[i], &servers[source], names[i], names[source]).await;
    }
    // Each operator knows the key of the one it does not pull from, whose flags come
    // passed on and signed.
    for i in 0..3 {
        let third = (i + 1) % 3;
        trust_origin(&servers[i], &format!("op-{}", names[third]), &servers[third]).await;
    }
    let digest = email_digest("everywhere@example.com");
    let mut members = Vec::new();
    for (server, name) in servers.iter().zip(["alpha", "beta", "gamma"]) {
        let mut member = server.member(name).await;
        member
            .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 80)]))
            .await
            .unwrap();
        members.push(member);
    }
    for member in &mut members {
        eventually("every operator sees all three platforms", || {
            let mut member = member.clone();
            async move {
                matched(&mut member, digest)
                    .await
                    .is_some_and(|found| found.n_members == 3)
            }
        })
        .await;
    }
    // Converged: no event keeps circling, and each operator stores each flag once.
    let before: Vec<u64> = futures_sequences(&servers).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after: Vec<u64> = futures_sequences(&servers).await;
    assert_eq!(before, after, "change logs stay still once converged");
    for server in &servers {
        assert_eq!(stats(server).await.n_active_flags, 3);
    }
    for member in &mut members {
        let found = matched(member, digest).await.unwrap();
        assert_eq!(found.n_members, 3, "{:?}", found.members);
        assert!(found.flagged_by_caller);
    }
}

async fn futures_sequences(servers: &[TestServer]) -> Vec<u64> {
    let mut sequences = Vec::new();
    for server in servers {
        sequences.push(stats(server).await.change_sequence);
    }
    sequences
}

#[tokio::test]
async fn a_stopped_peer_catches_up_exactly_after_restart() {
    let a = TestServer::start_named("op-a").await;
    let b = TestServer::start_named("op-b").await;
    link(&b, &a, "b", "a").await;
    let mut alpha = a.member("alpha").await;
    let first: Vec<Digest> = (0..3).map(|i| email_digest(&format!("first{i}@example.com"))).collect();
    alpha
        .submit(submit_request(
            first.iter().map(|d| flag(*d, pb::Category::Grooming, 80)).collect(),
        ))
        .await
        .unwrap();
    caught_up(&b, "a", &a).await;
    let b_dir = b.stop().await;

    // While B is down: 2,000 more flags, one update, one retraction.
    let later: Vec<Digest> = (0..2_000)
        .map(|i| email_digest(&format!("later{i}@example.com")))
        .collect();
    for chunk in later.chunks(500) {
        alpha
            .submit(submit_request(
                chunk.iter().map(|d| flag(*d, pb::Category::Sextortion, 60)).collect(),
            ))
            .await
            .unwrap();
    }
    alpha
        .submit(submit_request(vec![flag(first[1], pb::Category::Grooming, 99)]))
        .await
        .unwrap();
    alpha
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: first[0].to_vec(),
                ..Default::default()
            }],
            reason: pb::RetractReason::AppealUpheld as i32,
        })
        .await
        .unwrap();

    let b = TestServer::start_in_named(b_dir, "op-b").await;
    caught_up(&b, "a", &a).await;
    let b_stats = stats(&b).await;
    assert_eq!(b_stats.n_active_flags, 2 + 2_000, "no loss, no duplicates");
    let mut reader = b.member("reader").await;
    let mut all = later.clone();
    all.extend(&first);
    let found = query(&mut reader, &all).await;
    assert_eq!(found.len(), 2 + 2_000);
    assert!(found.iter().all(|m| m.n_members == 1));
    assert!(
        !found.iter().any(|m| m.digest == first[0].to_vec()),
        "the retraction arrived"
    );
    let updated = found.iter().find(|m| m.digest == first[1].to_vec()).unwrap();
    assert_eq!(updated.max_confidence, 99, "the update arrived");
    let status = peer_status(&b, "a").await;
    assert_eq!(status.n_rejected, 0);
    assert_eq!(status.state, "streaming");
}

#[tokio::test]
async fn peers_members_and_admins_reach_only_their_own_services() {
    let a = TestServer::start_named("op-a").await;
    let peer = a.enroll("b", Role::Peer).await;
    let peer_channel = a.channel(&peer).await;
    let status = FlagsClient::new(peer_channel.clone())
        .query(pb::QueryRequest {
            digests: email_digest("x@example.com").to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    let status = AdminClient::new(peer_channel.clone())
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());

    let member = a.enroll("alpha", Role::Member).await;
    let status = FederationClient::new(a.channel(&member).await)
        .pull(pb::PullRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    let status = FederationClient::new(peer_channel)
        .pull(pb::PullRequest {
            after: 0,
            max_batch: 10_001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("max_batch:"), "{}", status.message());
}

#[tokio::test]
async fn a_flag_made_local_and_then_retracted_is_withdrawn_at_every_peer_of_a_mesh() {
    let servers = [
        TestServer::start_named("op-a").await,
        TestServer::start_named("op-b").await,
        TestServer::start_named("op-c").await,
    ];
    let names = ["a", "b", "c"];
    // Every operator pulls from every other.
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                link(&servers[i], &servers[j], names[i], names[j]).await;
            }
        }
    }
    let mut alpha = servers[0].member("alpha").await;
    let mut readers = vec![servers[1].member("beta").await, servers[2].member("gamma").await];
    let digest = email_digest("downgraded@example.com");
    alpha
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 80)]))
        .await
        .unwrap();
    for reader in &mut readers {
        eventually("the federated flag reaches the peer", || {
            let mut reader = reader.clone();
            async move { matched(&mut reader, digest).await.is_some() }
        })
        .await;
    }
    // Resubmitted as local: it stays on A, and leaves every peer.
    let mut local = flag(digest, pb::Category::Grooming, 80);
    local.distribution = pb::Distribution::Local as i32;
    alpha.submit(submit_request(vec![local])).await.unwrap();
    for reader in &mut readers {
        eventually("the withdrawal reaches the peer", || {
            let mut reader = reader.clone();
            async move { matched(&mut reader, digest).await.is_none() }
        })
        .await;
    }
    assert!(matched(&mut alpha, digest).await.is_some(), "still local to A");
    // A resubmission without a distribution keeps it local; then it is retracted.
    alpha
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 90)]))
        .await
        .unwrap();
    alpha
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: digest.to_vec(),
                ..Default::default()
            }],
            reason: pb::RetractReason::AppealUpheld as i32,
        })
        .await
        .unwrap();
    for (i, server) in servers.iter().enumerate().skip(1) {
        caught_up(server, "a", &servers[0]).await;
        assert!(
            matched(&mut readers[i - 1], digest).await.is_none(),
            "{} has it",
            names[i]
        );
    }
    assert!(matched(&mut alpha, digest).await.is_none());
    for (i, server) in servers.iter().enumerate() {
        for (j, name) in names.iter().enumerate() {
            if i != j {
                assert_eq!(
                    peer_status(server, name).await.n_rejected,
                    0,
                    "{} from {name}",
                    names[i]
                );
            }
        }
    }
}

#[tokio::test]
async fn a_peer_restored_from_a_backup_is_pulled_again_from_a_snapshot() {
    let a = TestServer::start_named("op-a").await;
    let b = TestServer::start_named("op-b").await;
    link(&b, &a, "b", "a").await;
    let mut alpha = a.member("alpha").await;
    let before: Vec<Digest> = (0..3)
        .map(|i| email_digest(&format!("before{i}@example.com")))
        .collect();
    alpha
        .submit(submit_request(
            before.iter().map(|d| flag(*d, pb::Category::Grooming, 80)).collect(),
        ))
        .await
        .unwrap();
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("a-1");
    a.admin_client()
        .await
        .backup(pb::BackupRequest {
            dir: backup.display().to_string(),
        })
        .await
        .unwrap();
    let after = email_digest("after-backup@example.com");
    alpha
        .submit(submit_request(vec![flag(after, pb::Category::Grooming, 80)]))
        .await
        .unwrap();
    caught_up(&b, "a", &a).await;
    let mut beta = b.member("beta").await;
    assert_eq!(query(&mut beta, &[before[0], after]).await.len(), 2);

    // A is restored from the backup: the flag submitted after it is gone there.
    let a_dir = a.stop().await;
    let restored = crate::support::process::flagshare(&[
        "offline-restore",
        backup.to_str().unwrap(),
        "--data",
        a_dir.path().to_str().unwrap(),
    ]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let a = TestServer::start_in_named(a_dir, "op-a").await;
    let bundle_dir = b.data_dir().join("peer-bundles").join("a");
    b.admin_client()
        .await
        .configure_peer(pb::ConfigurePeerRequest {
            name: "a".to_owned(),
            endpoint: a.endpoint(),
            bundle_dir: bundle_dir.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("B drops the flag A no longer has", || {
        let mut beta = beta.clone();
        async move { matched(&mut beta, after).await.is_none() }
    })
    .await;
    caught_up(&b, "a", &a).await;
    let found = query(&mut beta, &[before[0], before[1], before[2], after]).await;
    assert_eq!(found.len(), 3, "B holds exactly what the restored A holds");
    assert_eq!(peer_status(&b, "a").await.n_rejected, 0);
}

#[tokio::test]
async fn the_metrics_endpoint_shows_a_peer_caught_up_with_what_it_applied() {
    let a = TestServer::start_named("op-a").await;
    let b = TestServer::start_named("op-b").await;
    link(&b, &a, "b", "a").await;
    let mut alpha = a.member("alpha").await;
    let digests: Vec<_> = (0..3).map(|i| email_digest(&format!("peer{i}@example.com"))).collect();
    alpha
        .submit(submit_request(
            digests.iter().map(|d| flag(*d, pb::Category::Grooming, 70)).collect(),
        ))
        .await
        .unwrap();
    caught_up(&b, "a", &a).await;
    let status = peer_status(&b, "a").await;
    let scraped = b.scrape().await;
    let peer = r#"peer="a""#;
    assert_eq!(
        scraped.value("flagshare_peer_state", &format!(r#"{peer},state="{}""#, status.state)),
        Some(1.0)
    );
    assert_eq!(status.state, "streaming");
    assert_eq!(scraped.value("flagshare_peer_lag_events", peer), Some(0.0));
    assert_eq!(scraped.value("flagshare_peer_lag_seconds", peer), Some(0.0));
    let applied = scraped.value("flagshare_peer_events_applied_total", peer).unwrap();
    assert_eq!(applied, status.n_applied as f64);
    assert!(applied >= 3.0, "{applied}");
    assert_eq!(scraped.value("flagshare_peer_events_rejected_total", peer), Some(0.0));
    // A is not a peer of anyone: it has no peer series.
    assert!(!a.scrape().await.0.contains("flagshare_peer_state{"));
}

#[tokio::test]
async fn a_flood_is_held_back_from_others_and_peers_until_released_and_a_rejected_one_never_matches() {
    let a = TestServer::start_named_configured("op-a", |config| config.quarantine_new_flags_per_hour = 5).await;
    let b = TestServer::start_named("op-b").await;
    link(&b, &a, "b", "a").await;
    let mut flooder = a.member("flooder").await;
    let mut checker = a.member("checker").await;
    let mut remote = b.member("remote").await;
    let digests: Vec<_> = (0..10)
        .map(|i| email_digest(&format!("flood{i}@example.com")))
        .collect();
    let submit = |range: std::ops::Range<usize>| {
        submit_request(
            digests[range]
                .iter()
                .map(|d| flag(*d, pb::Category::Grooming, 80))
                .collect(),
        )
    };
    let first = flooder.submit(submit(0..3)).await.unwrap().into_inner();
    assert_eq!((first.n_created, first.n_quarantined), (3, 0));
    let second = flooder.submit(submit(3..8)).await.unwrap().into_inner();
    assert_eq!((second.n_created, second.n_quarantined), (2, 3));
    // An update of a live flag is never held back.
    let update = flooder.submit(submit(0..1)).await.unwrap().into_inner();
    assert_eq!((update.n_updated, update.n_quarantined), (1, 0));

    let matched = |matches: Vec<pb::Match>| matches.iter().map(|m| m.index).collect::<Vec<_>>();
    // A batch is committed in key order: which two of the second batch went live is the
    // digests' order. The first batch's three (matched before the flood) stay.
    let live = matched(query(&mut checker, &digests[..8]).await);
    assert_eq!(live.len(), 5, "{live:?}");
    assert!(live.starts_with(&[0, 1, 2]), "{live:?}");
    caught_up(&b, "a", &a).await;
    assert_eq!(matched(query(&mut remote, &digests[..8]).await), live);
    let mut admin = a.admin_client().await;
    let listed = admin
        .list_quarantine(pb::ListQuarantineRequest::default())
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].member.as_str(), listed[0].n_flags), ("flooder", 3));
    // The member sees which of its flags are held, and so does an admin; no one else.
    let held = flooder
        .list_held(pb::ListHeldRequest::default())
        .await
        .unwrap()
        .into_inner();
    let held_indexes: Vec<u32> = held
        .flags
        .iter()
        .map(|flag| digests.iter().position(|d| d[..] == flag.digest[..]).unwrap() as u32)
        .collect();
    assert_eq!(held_indexes.len(), 3);
    assert!(
        held_indexes
            .iter()
            .all(|index| (3..8).contains(index) && !live.contains(index))
    );
    assert!(held.next_page_after.is_empty());
    let by_admin = admin
        .list_quarantine(pb::ListQuarantineRequest {
            member: "flooder".to_owned(),
            page_after: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_admin.flags, held.flags);
    assert!(
        checker
            .list_held(pb::ListHeldRequest::default())
            .await
            .unwrap()
            .into_inner()
            .flags
            .is_empty()
    );
    let bad = flooder
        .list_held(pb::ListHeldRequest { page_after: vec![1; 3] })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("page_after: 3 bytes"), "{}", bad.message());
    assert_eq!(
        a.scrape()
            .await
            .counter("flagshare_flags_quarantined_total", r#"member="flooder""#),
        3.0
    );

    // Released: they match and federate from now, in one audited commit.
    let released = admin
        .release_quarantine(pb::QuarantineActionRequest {
            member: "flooder".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((released.n_done, released.n_remaining), (3, 0));
    assert_eq!(
        matched(query(&mut checker, &digests[..8]).await),
        (0..8).collect::<Vec<_>>()
    );
    caught_up(&b, "a", &a).await;
    assert_eq!(
        matched(query(&mut remote, &digests[..8]).await),
        (0..8).collect::<Vec<_>>()
    );

    // The window is still full: the next new flags are held, and rejected they never match.
    let third = flooder.submit(submit(8..10)).await.unwrap().into_inner();
    assert_eq!((third.n_created, third.n_quarantined), (0, 2));
    // The member's own retraction reaches a held flag: it can never be released.
    let retracted = flooder
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: digests[9].to_vec(),
                kind: 0,
                category: 0,
            }],
            reason: pb::RetractReason::FalsePositive as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retracted.n_retracted, retracted.unmatched_indexes.len()), (1, 0));
    let rejected = admin
        .reject_quarantine(pb::QuarantineActionRequest {
            member: "flooder".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rejected.n_done, rejected.n_remaining), (1, 0));
    assert!(query(&mut checker, &digests[8..]).await.is_empty());
    caught_up(&b, "a", &a).await;
    assert!(query(&mut remote, &digests[8..]).await.is_empty());
    assert!(
        admin
            .list_quarantine(pb::ListQuarantineRequest::default())
            .await
            .unwrap()
            .into_inner()
            .members
            .is_empty()
    );
    for op in ["release_quarantine", "reject_quarantine"] {
        assert_eq!(audit_count(&mut admin, op).await, 1, "{op}");
    }
}

/// A peer's endpoint list is checked whole: too many nodes, or one that is not https, is
/// refused naming the field, and no peer is stored.
#[tokio::test]
async fn a_peer_endpoint_list_too_long_or_not_https_is_refused_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let mut admin = server.admin_client().await;
    let bundle_dir = server.data_dir().join("peer-bundles").join("x").display().to_string();
    let nine = (0..9)
        .map(|i| format!("https://node-{i}.example:50051"))
        .collect::<Vec<_>>()
        .join(",");
    let mixed = "https://node-1.example:50051, http://node-2.example:50051".to_owned();
    for (endpoint, said) in [
        (nine, "endpoint: 9 endpoints, at most 8"),
        (mixed, "'http://node-2.example:50051' must start with https://"),
    ] {
        let refused = admin
            .configure_peer(pb::ConfigurePeerRequest {
                name: "x".to_owned(),
                endpoint,
                bundle_dir: bundle_dir.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains(said), "{}", refused.message());
    }
    let peers = admin.list_peers(pb::ListPeersRequest {}).await.unwrap().into_inner();
    assert!(peers.peers.is_empty(), "{peers:?}");
}
