//! A server whose commits go through its Raft log (`replicated_log`): the same answers,
//! every change an applied entry, kept across a restart, and a compaction that takes a
//! removed digest out of the log as out of the data.

use flagshare::pb;
use flagshare::store::{Store, StoreOptions};

use crate::support::process::{flagshare, path, stderr, stdout};
use crate::support::{
    TestServer, copy_dir, email_digest, eventually, flag, import_answers, import_messages_of, imported, query,
    query_request, submit_request, verified_audit,
};

/// Every row of the server's Raft log (index, entry), read from its stopped database.
fn raft_log(data: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let store = Store::open(&data.join("db"), &StoreOptions::default()).unwrap();
    store.raft_log_between(0, u64::MAX, usize::MAX).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test]
async fn a_server_on_its_raft_log_answers_alike_keeps_all_across_a_restart_and_compaction_trims_the_log() {
    let on_the_log = |config: &mut flagshare::config::Config| config.replicated_log = true;
    let server = TestServer::start_configured(on_the_log).await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let kept = email_digest("kept@example.com");
    let gone = email_digest("gone@example.com");
    alpha
        .submit(submit_request(vec![
            flag(kept, pb::Category::Grooming, 80),
            flag(gone, pb::Category::Grooming, 80),
        ]))
        .await
        .unwrap();
    alpha
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: gone.to_vec(),
                kind: 0,
                category: 0,
            }],
            reason: pb::RetractReason::FalsePositive as i32,
        })
        .await
        .unwrap();
    let matches = query(&mut beta, &[kept, gone]).await;
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].digest, kept.to_vec());
    let dir = server.stop().await;

    // Each change was an entry; the submitted digests are in the log's write sets.
    let log = raft_log(dir.path());
    assert!(log.len() >= 4, "{} entries", log.len());
    assert!(log.iter().any(|(_, entry)| contains(entry, &gone)));

    let server = TestServer::start_in_configured(dir, "flagshare-dev", on_the_log).await;
    let mut gamma = server.member("gamma").await;
    assert_eq!(query(&mut gamma, &[kept, gone]).await.len(), 1);
    let mut admin = server.admin_client().await;
    verified_audit(&mut admin).await;
    admin.compact(pb::CompactRequest {}).await.unwrap();
    let dir = server.stop().await;

    // The applied log went behind a snapshot: the retracted digest is in no entry.
    let log = raft_log(dir.path());
    assert!(log.len() <= 3, "{} entries after compaction", log.len());
    assert!(!log.iter().any(|(_, entry)| contains(entry, &gone)));
}

/// `flagshare admin cluster list --json` against `server`, parsed.
fn cluster_list(server: &TestServer) -> serde_json::Value {
    let output = flagshare(&[
        "admin",
        "--bundle",
        path(&server.admin.dir),
        "--endpoint",
        &server.endpoint(),
        "cluster",
        "list",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

// The CLI runs as a child process and the call waits for it: a second worker serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cluster_list_shows_the_node_leading_its_one_node_cluster_with_its_log_applied() {
    let on_the_log = |config: &mut flagshare::config::Config| config.replicated_log = true;
    let server = TestServer::start_configured(on_the_log).await;
    let mut alpha = server.member("alpha").await;
    alpha
        .submit(submit_request(vec![flag(
            email_digest("listed@example.com"),
            pb::Category::Grooming,
            80,
        )]))
        .await
        .unwrap();
    let status = cluster_list(&server);
    assert_eq!(status["replicated"], true);
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["leader_id"], 1);
    let last = status["last_log_index"].as_u64().unwrap();
    assert!(
        last >= 2,
        "the membership and at least the member's and the flag's commits: {last}"
    );
    assert_eq!(status["applied_index"].as_u64(), Some(last));
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["role"], "leader");
    assert_eq!(nodes[0]["matched_index"].as_u64(), Some(last));
    assert_eq!(nodes[0]["lag"], 0);
    let port = server.addr.port();
    assert!(
        nodes[0]["address"].as_str().unwrap().ends_with(&format!(":{port}")),
        "{}",
        nodes[0]["address"]
    );

    // Its metrics say the same.
    let scraped = server.scrape().await;
    assert_eq!(scraped.value("flagshare_cluster_leader", ""), Some(1.0));
    assert_eq!(scraped.value("flagshare_cluster_leader_known", ""), Some(1.0));
    assert_eq!(scraped.value("flagshare_cluster_serving_reads", ""), Some(1.0));
    assert!(
        scraped
            .value("flagshare_cluster_term", "")
            .is_some_and(|term| term >= 1.0)
    );
    assert!(
        scraped
            .value("flagshare_cluster_applied_index", "")
            .is_some_and(|applied| applied >= last as f64),
        "applied at least what cluster list said"
    );
    assert_eq!(
        scraped.value("flagshare_cluster_node_lag_entries", "node=\"1\""),
        Some(0.0)
    );

    // A server without a replicated log says so, and has no cluster metrics.
    let single = TestServer::start_single().await;
    assert_eq!(single.scrape().await.value("flagshare_cluster_leader", ""), None);
    let output = flagshare(&[
        "admin",
        "--bundle",
        path(&single.admin.dir),
        "--endpoint",
        &single.endpoint(),
        "cluster",
        "list",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("not replicated"), "{}", stdout(&output));
    assert_eq!(cluster_list(&single)["replicated"], false);
}

/// The `Cluster` service on a server's own port: a member's certificate is refused before
/// its message is read, a principal with the node role gets the Raft's answer (a vote
/// for a stale term, not granted) and a malformed call is refused by field; a server
/// without a replicated log has no such service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_service_answers_node_principals_only() {
    use flagshare::model::Role;
    use flagshare::pb::cluster_client::ClusterClient;

    let on_the_log = |config: &mut flagshare::config::Config| config.replicated_log = true;
    let server = TestServer::start_configured(on_the_log).await;
    let stale_vote = pb::RaftRequest {
        header: br#"{"vote":{"leader_id":{"term":0,"node_id":9},"committed":false},"last_log_id":null}"#.to_vec(),
        ..Default::default()
    };

    let member = server.enroll("platform-a", Role::Member).await;
    let mut as_member = ClusterClient::new(server.channel(&member).await);
    let refused = as_member.vote(stale_vote.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("not a node of this cluster"),
        "{}",
        refused.message()
    );

    let node = server.enroll("node-2", Role::Node).await;
    let mut as_node = ClusterClient::new(server.channel(&node).await);
    let answer = as_node.vote(stale_vote).await.unwrap().into_inner();
    let outcome: serde_json::Value = serde_json::from_slice(&answer.outcome).unwrap();
    assert_eq!(outcome["Ok"]["vote_granted"], false, "{outcome}");
    let garbage = as_node
        .append_entries(pb::RaftRequest {
            header: b"{".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    assert!(garbage.message().starts_with("header: "), "{}", garbage.message());
    // Past the service's bound (128 MiB): refused unread from a node, and from a member
    // refused by the gate before any of it is decoded.
    let oversized = pb::RaftRequest {
        data: vec![0; (128 << 20) + 1],
        ..Default::default()
    };
    let too_large = as_node.install_snapshot(oversized.clone()).await.unwrap_err();
    assert_eq!(too_large.code(), tonic::Code::ResourceExhausted, "{too_large:?}");
    let gated = as_member.install_snapshot(oversized).await.unwrap_err();
    assert_eq!(gated.code(), tonic::Code::PermissionDenied, "{gated:?}");
    // Read entries forwarded to the leader (this one-node cluster's only node): refused
    // by field and nothing recorded, or taken into its audit chain as the reader's own.
    let read = |op: &str, digests: Vec<u8>, actor: &str| pb::ForwardedReads {
        reads: vec![pb::ForwardedRead {
            actor: actor.to_owned(),
            op: op.to_owned(),
            n_items: 1,
            n_changed: digests.len() as u64 / 32,
            detail: String::new(),
            digests,
            at_ms: 1_700_000_000_000,
        }],
    };
    for (bad, expected) in [
        (
            read("submit", Vec::new(), "platform-a"),
            "reads[0].op: submit, expected query",
        ),
        (
            read("query", vec![7; 33], "platform-a"),
            "reads[0].digests: 33 bytes, expected a multiple of 32",
        ),
        (
            read("query", Vec::new(), "nobody"),
            "reads[0].actor: no principal 'nobody'",
        ),
        (
            read("nothing", Vec::new(), "platform-a"),
            "reads[0].op: 'nothing' is not an audit operation",
        ),
        // An admin's reads (audit, stats) are taken for admins only.
        (
            read("read_audit", Vec::new(), "platform-a"),
            "reads[0].actor: 'platform-a' is a member, and read_audit is an admin's read",
        ),
    ] {
        let refused = as_node.record_reads(bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with(expected), "{}", refused.message());
    }
    let too_many = pb::ForwardedReads {
        reads: vec![read("query", Vec::new(), "platform-a").reads[0].clone(); 1_025],
    };
    let refused = as_node.record_reads(too_many).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().starts_with("reads: 1025 in one call, at most 1024"),
        "{}",
        refused.message()
    );
    // A node may call for a member, naming its certificate in full.
    let mut claimed = tonic::Request::new(pb::QueryRequest::default());
    claimed
        .metadata_mut()
        .insert("x-flagshare-on-behalf-of", "not-hex".parse().unwrap());
    let malformed = flagshare::pb::flags_client::FlagsClient::new(server.channel(&node).await)
        .query(claimed)
        .await
        .unwrap_err();
    crate::support::assert_status(&malformed, tonic::Code::InvalidArgument, "expected 64 hex digits");
    let gated = as_member
        .record_reads(read("query", Vec::new(), "platform-a"))
        .await
        .unwrap_err();
    assert_eq!(gated.code(), tonic::Code::PermissionDenied, "{gated:?}");
    let mut admin = server.admin_client().await;
    let queries = |admin: &mut flagshare::pb::admin_client::AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_audit(pb::ListAuditRequest {
                    op: "query".to_owned(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries
        }
    };
    assert!(queries(&mut admin).await.is_empty(), "no refused entry recorded");
    as_node
        .record_reads(read("query", vec![7; 32], "platform-a"))
        .await
        .unwrap();
    let recorded = {
        let mut admin = admin.clone();
        eventually("the forwarded read is recorded", || {
            let mut admin = admin.clone();
            async move { !queries(&mut admin).await.is_empty() }
        })
        .await;
        queries(&mut admin).await
    };
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].principal, "platform-a");
    assert_eq!(recorded[0].digests, [hex::encode([7u8; 32])]);

    // The node principal's calls changed nothing else: the one-node cluster still leads itself.
    let status = cluster_list(&server);
    assert_eq!(status["leader_id"], 1, "{status}");

    let single = TestServer::start_single().await;
    let node = single.enroll("node-2", Role::Node).await;
    let absent = ClusterClient::new(single.channel(&node).await)
        .vote(pb::RaftRequest::default())
        .await
        .unwrap_err();
    assert_eq!(absent.code(), tonic::Code::Unimplemented, "{absent:?}");
}

/// A second node seeded from the first's backup joins it through `admin cluster
/// add-node`: it catches up as a learner, then votes; a member enrolled and a flag
/// submitted on the leader afterwards are known and found on the second node (its domain
/// follows the entries applied under it), and the leader sees it with no lag.
/// A leader (node 1, restarted with its node credentials) and a second node seeded from its
/// backup and added to its cluster; `configure` adjusts both nodes' settings. Also the
/// leader's answer to the addition.
async fn seeded_pair(
    configure: impl Fn(&mut flagshare::config::Config) + Copy,
) -> (TestServer, TestServer, pb::ClusterStatus) {
    use flagshare::model::Role;

    let on_the_log = move |config: &mut flagshare::config::Config| {
        config.replicated_log = true;
        configure(config);
    };
    let first = TestServer::start_configured(on_the_log).await;
    let node_1 = first.enroll("node-1", Role::Node).await;
    let node_2 = first.enroll("node-2", Role::Node).await;
    node_1.write(&first.data_dir().join("node-1")).unwrap();
    let dir = first.stop().await;
    let leader = TestServer::start_in_configured(dir, "flagshare-dev", move |config| {
        on_the_log(config);
        config.cluster_credentials = "node-1".to_owned();
    })
    .await;

    // The second node's folder: the first's backup as its database, the operator's CA and
    // server certificate, the admin's bundle, its own node credentials.
    let seed = tempfile::tempdir().unwrap();
    let mut admin = leader.admin_client().await;
    admin
        .backup(pb::BackupRequest {
            dir: seed.path().join("db").to_str().unwrap().to_owned(),
        })
        .await
        .unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::rename(seed.path().join("db"), second_dir.path().join("db")).unwrap();
    std::fs::create_dir_all(second_dir.path().join("pki")).unwrap();
    for file in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(
            leader.data_dir().join("pki").join(file),
            second_dir.path().join("pki").join(file),
        )
        .unwrap();
    }
    copy_dir(&leader.data_dir().join("clients"), &second_dir.path().join("clients"));
    node_2.write(&second_dir.path().join("node-2")).unwrap();
    let second = TestServer::start_in_configured(second_dir, "flagshare-dev", move |config| {
        on_the_log(config);
        config.node_id = 2;
        config.cluster_credentials = "node-2".to_owned();
    })
    .await;

    let added = admin
        .add_cluster_node(pb::AddClusterNodeRequest {
            id: 2,
            address: format!("https://127.0.0.1:{}", second.addr.port()),
            principal: "node-2".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    (leader, second, added)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_seeded_from_a_backup_joins_the_cluster_and_follows_the_leader() {
    use flagshare::model::Role;

    let (leader, second, added) = seeded_pair(|_| {}).await;
    let mut admin = leader.admin_client().await;
    let roles: Vec<(u64, &str)> = added.nodes.iter().map(|node| (node.id, node.role.as_str())).collect();
    assert_eq!(roles, [(1, "leader"), (2, "follower")], "{added:?}");
    let again = admin
        .add_cluster_node(pb::AddClusterNodeRequest {
            id: 2,
            address: format!("https://127.0.0.1:{}", second.addr.port()),
            principal: "node-2".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");

    // Written on the leader after the join: known and found on the second node.
    let member = leader.enroll("platform-a", Role::Member).await;
    let mut on_leader = flagshare::pb::flags_client::FlagsClient::new(leader.channel(&member).await);
    let digest = email_digest("joined@example.com");
    on_leader
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 80)]))
        .await
        .unwrap();
    let mut on_second = flagshare::pb::flags_client::FlagsClient::new(second.channel(&member).await);
    eventually("the flag is on the second node", || {
        let mut on_second = on_second.clone();
        async move { !query(&mut on_second, &[digest]).await.is_empty() }
    })
    .await;
    let status = admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let second_view = status.nodes.iter().find(|node| node.id == 2).unwrap();
    assert_eq!(second_view.role, "follower");
    assert_eq!(second_view.lag, Some(0), "{status:?}");

    // A member's write sent to the follower goes on to the leader, committed there as
    // that member's own, and comes back to the follower through the log.
    let forwarded = email_digest("follower@example.com");
    let outcome = on_second
        .submit(submit_request(vec![flag(forwarded, pb::Category::Grooming, 80)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome.n_created, 1, "{outcome:?}");
    let found = on_leader.query(query_request(&[forwarded])).await.unwrap().into_inner();
    assert_eq!(found.matches.len(), 1, "committed on the leader: {found:?}");
    eventually("the forwarded flag comes back to the follower", || {
        let mut on_second = on_second.clone();
        async move { !query(&mut on_second, &[forwarded]).await.is_empty() }
    })
    .await;
    let submits = admin
        .list_audit(pb::ListAuditRequest {
            op: "submit".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submits.entries.len(), 2, "{submits:?}");
    assert!(submits.entries.iter().all(|entry| entry.principal == "platform-a"));
    // A member's retraction through the follower too; a member cannot claim to speak for
    // another (only a node may).
    let retracted = on_second
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: forwarded.to_vec(),
                ..Default::default()
            }],
            reason: pb::RetractReason::FalsePositive as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retracted.n_retracted, 1, "{retracted:?}");
    let mut claimed = tonic::Request::new(submit_request(vec![flag(forwarded, pb::Category::Grooming, 80)]));
    claimed
        .metadata_mut()
        .insert("x-flagshare-on-behalf-of", hex::encode([0u8; 32]).parse().unwrap());
    let refused = on_leader.submit(claimed).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A feed started on the follower: its snapshot is the follower's applied state, and
    // its start is audited on the leader.
    let mut feed = on_second
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut snapshot = Vec::new();
    while let Some(batch) = feed.message().await.unwrap() {
        snapshot.extend(batch.events.iter().map(|event| event.digest.clone()));
        if batch.caught_up {
            break;
        }
    }
    assert!(snapshot.contains(&digest.to_vec()), "{} events", snapshot.len());
    drop(feed);
    eventually("the feed's start is audited on the leader", || {
        let mut admin = admin.clone();
        async move { crate::support::audit_count(&mut admin, "subscribe").await == 1 }
    })
    .await;

    // An operator's change sent to the follower is refused, naming the leader.
    let refused = second
        .admin_client()
        .await
        .set_principal_status(pb::SetPrincipalStatusRequest {
            name: "platform-a".to_owned(),
            status: pb::PrincipalStatus::Suspended as i32,
            withdraw_flags: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("this node does not lead the cluster; node 1 does, at https://"),
        "{}",
        refused.message()
    );
    // The leader restarted at another port: its entry names where it listens now.
    let here = format!("https://localhost:{}", leader.addr.port());
    assert!(
        refused.message().ends_with(&format!("node 1 does, at {here}")),
        "{}",
        refused.message()
    );
    assert_eq!(status.nodes.iter().find(|node| node.id == 1).unwrap().address, here);

    // Reads on the follower, more than its queue of audit entries holds: all answered,
    // their entries committed by the leader in the one chain (polled: the follower hands
    // its queue over every 10 ms).
    let n_reads = flagshare::domain::MAX_PENDING_READS + 100;
    let unflagged = email_digest("never-flagged@example.com");
    for _ in 0..n_reads {
        let answer = on_second.query(query_request(&[unflagged])).await.unwrap().into_inner();
        assert!(answer.matches.is_empty());
    }
    eventually("the follower's queries are audited on the leader", || {
        let mut admin = admin.clone();
        async move {
            let audited = admin
                .list_audit(pb::ListAuditRequest {
                    op: "query".to_owned(),
                    principal: "platform-a".to_owned(),
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            // The polls for the first flag were queries on the follower too.
            audited.entries.iter().filter(|entry| entry.n_items == 1).count() > n_reads
        }
    })
    .await;
    verified_audit(&mut admin).await;

    // Removal: not of the leader, not of a node never added; then node 2 leaves.
    let own = admin
        .remove_cluster_node(pb::RemoveClusterNodeRequest { id: 1 })
        .await
        .unwrap_err();
    assert_eq!(own.code(), tonic::Code::Unavailable, "{own:?}");
    assert!(own.message().contains("node 1 leads the cluster"), "{}", own.message());
    let unknown = admin
        .remove_cluster_node(pb::RemoveClusterNodeRequest { id: 7 })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let removed = admin
        .remove_cluster_node(pb::RemoveClusterNodeRequest { id: 2 })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<u64> = removed.nodes.iter().map(|node| node.id).collect();
    assert_eq!(ids, [1]);
    // The leader commits alone again; the removed node receives nothing more.
    let later = email_digest("after-removal@example.com");
    on_leader
        .submit(submit_request(vec![flag(later, pb::Category::Grooming, 80)]))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let on_removed = on_second.query(query_request(&[later])).await.unwrap().into_inner();
    assert!(on_removed.matches.is_empty());
    let audited = admin
        .list_audit(pb::ListAuditRequest {
            op: "change_cluster".to_owned(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audited.entries.len(), 2, "{audited:?}");
}

/// A follower cut off from its cluster's majority answers reads until its staleness bound
/// has passed, then refuses them and reports NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_past_its_staleness_bound_stops_serving_reads() {
    use flagshare::model::Role;
    use tonic_health::pb::health_check_response::ServingStatus;

    let (leader, second, _) = seeded_pair(|config| config.max_staleness_secs = 2).await;
    let member = leader.enroll("platform-a", Role::Member).await;
    let digest = email_digest("stale@example.com");
    let on_second = flagshare::pb::flags_client::FlagsClient::new(second.channel(&member).await);
    eventually("the member is known on the second node", || {
        let mut on_second = on_second.clone();
        async move { on_second.query(query_request(&[digest])).await.is_ok() }
    })
    .await;
    let health = tonic_health::pb::health_client::HealthClient::new(second.channel(&second.admin).await);
    let flags_health = || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "flagshare.v1.Flags".to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(flags_health().await, ServingStatus::Serving as i32);

    // The leader gone, the second node is no majority of two.
    leader.stop().await;
    let stopped = std::time::Instant::now();
    eventually("the cut-off node refuses reads", || {
        let mut on_second = on_second.clone();
        async move {
            on_second
                .query(query_request(&[digest]))
                .await
                .is_err_and(|status| status.code() == tonic::Code::Unavailable)
        }
    })
    .await;
    assert!(
        stopped.elapsed() >= std::time::Duration::from_secs(2),
        "refused {:?} after the leader stopped, inside the bound",
        stopped.elapsed()
    );
    let refused = on_second.clone().query(query_request(&[digest])).await.unwrap_err();
    assert!(refused.message().contains("staleness bound"), "{}", refused.message());
    assert_eq!(flags_health().await, ServingStatus::NotServing as i32);
}

/// An import on a replicated log commits blocks of 10,000 flags, each
/// one log entry small enough for a follower to take within a heartbeat; every flag
/// reaches the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_on_a_replicated_log_commits_small_blocks_that_reach_the_follower() {
    use flagshare::model::Role;

    let (leader, second, _) = seeded_pair(|_| {}).await;
    let member = leader.enroll("platform-a", Role::Member).await;
    let mut on_leader = flagshare::pb::flags_client::FlagsClient::new(leader.channel(&member).await);
    let digests: Vec<[u8; 32]> = (0..25_000u32).map(imported).collect();
    let messages = import_messages_of(0, 25_000, 5_000);
    let progress: Vec<_> = import_answers(&on_leader, messages)
        .await
        .iter()
        .map(|answer| (answer.n_blocks, answer.n_created, answer.done))
        .collect();
    assert_eq!(
        progress,
        [(1, 10_000, false), (2, 20_000, false), (3, 25_000, true)],
        "blocks of 10,000"
    );
    let on_second = flagshare::pb::flags_client::FlagsClient::new(second.channel(&member).await);
    eventually("every imported flag is on the follower", || {
        let mut on_second = on_second.clone();
        let digests = digests.clone();
        async move {
            let mut found = 0;
            for chunk in digests.chunks(1_000) {
                found += query(&mut on_second, chunk).await.len();
            }
            found == digests.len()
        }
    })
    .await;

    // An import sent to the follower goes on to the leader as the member's own; the
    // member sees the leader's answers.
    let more: Vec<[u8; 32]> = (100_000..112_000u32).map(imported).collect();
    let messages = import_messages_of(100_000, 112_000, 4_000);
    let last = import_answers(&on_second, messages)
        .await
        .last()
        .map(|answer| (answer.n_created, answer.done));
    assert_eq!(
        last,
        Some((12_000, true)),
        "the leader's last answer, through the follower"
    );
    let mut found = 0;
    for chunk in more.chunks(1_000) {
        found += query(&mut on_leader, chunk).await.len();
    }
    assert_eq!(found, more.len(), "committed on the leader");
}

/// An import on a one-node cluster commits blocks as large as a single server's (no other
/// node must receive them within a heartbeat); each block is one log entry whose rows the
/// log keeps as the files it ingested, not in its row, until a compaction trims the log.
/// Every flag is found, also after a restart, and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_on_a_one_node_cluster_commits_whole_blocks_whose_files_the_log_keeps() {
    use flagshare::model::Role;

    let on_the_log = |config: &mut flagshare::config::Config| config.replicated_log = true;
    let server = TestServer::start_configured(on_the_log).await;
    let member = server.enroll("platform-a", Role::Member).await;
    let client = flagshare::pb::flags_client::FlagsClient::new(server.channel(&member).await);
    let progress: Vec<_> = import_answers(&client, import_messages_of(0, 250_000, 10_000))
        .await
        .iter()
        .map(|answer| (answer.n_blocks, answer.n_created, answer.done))
        .collect();
    assert_eq!(progress, [(1, 200_000, false), (2, 250_000, true)]);
    let sample: Vec<[u8; 32]> = (0..250_000u32).step_by(997).map(imported).collect();
    let mut on_server = server.member("beta").await;
    assert_eq!(query(&mut on_server, &sample).await.len(), sample.len());
    let log_files = || {
        std::fs::read_dir(server.data_dir().join("db.log-files"))
            .map(|listing| listing.count())
            .unwrap_or(0)
    };
    assert_eq!(log_files(), 6, "digests, change and summary files of two blocks");
    let dir = server.stop().await;

    // Each block's entry names its files: the log holds none of their rows.
    let log = raft_log(dir.path());
    let largest = log.iter().map(|(_, entry)| entry.len()).max();
    assert!(largest.is_some_and(|largest| largest < 64 << 10), "{largest:?} bytes");
    let server = TestServer::start_in_configured(dir, "flagshare-dev", on_the_log).await;
    let log_files = || {
        std::fs::read_dir(server.data_dir().join("db.log-files"))
            .map(|listing| listing.count())
            .unwrap_or(0)
    };
    let mut gamma = server.member("gamma").await;
    assert_eq!(query(&mut gamma, &sample).await.len(), sample.len());
    let mut admin = server.admin_client().await;
    verified_audit(&mut admin).await;
    admin.compact(pb::CompactRequest {}).await.unwrap();
    assert_eq!(log_files(), 0, "trimmed with the log behind a snapshot");
    assert_eq!(query(&mut gamma, &sample).await.len(), sample.len());
}

/// `admin cluster invite` refused by field, by role and without a replicated log, each
/// leaving the principals as they were; an invitation naming no node to trust is refused
/// by `init --join`; a node made from an invitation answers members UNAVAILABLE until it
/// joins, and admits to its `Cluster` service only the nodes it was told to trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_are_checked_and_a_joining_node_admits_only_its_trusted_nodes() {
    use flagshare::model::Role;
    use flagshare::pb::cluster_client::ClusterClient;
    use rcgen::PublicKeyData as _;

    let on_the_log = |config: &mut flagshare::config::Config| config.replicated_log = true;
    let server = TestServer::start_configured(on_the_log).await;
    let member = server.enroll("platform-a", Role::Member).await;
    let mut admin = server.admin_client().await;
    let principals = |admin: &mut pb::admin_client::AdminClient<_>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_principals(pb::ListPrincipalsRequest {})
                .await
                .unwrap()
                .into_inner()
                .principals
                .len()
        }
    };
    let before = principals(&mut admin).await;
    let key = || flagshare::pki::generate_client_key().unwrap().subject_public_key_info();
    let request = |name: &str, hosts: &[&str], server_key: Vec<u8>| pb::InviteClusterNodeRequest {
        name: name.to_owned(),
        host_names: hosts.iter().map(|host| (*host).to_owned()).collect(),
        public_key_der: key(),
        server_public_key_der: server_key,
    };
    let cases = [
        (
            request("node-2", &[], key()),
            tonic::Code::InvalidArgument,
            "host_names: 0 given",
        ),
        (
            request("node-2", &["node-2.example", "no spaces"], key()),
            tonic::Code::InvalidArgument,
            "host_names[1]: 'no spaces' is neither",
        ),
        (
            request("node-2", &["node-2.example"], b"not a key".to_vec()),
            tonic::Code::InvalidArgument,
            "server_public_key_der: ",
        ),
        (
            request("Node 2", &["node-2.example"], key()),
            tonic::Code::InvalidArgument,
            "name: ",
        ),
        (
            request("platform-a", &["node-2.example"], key()),
            tonic::Code::AlreadyExists,
            "name: ",
        ),
    ];
    for (request, code, message) in cases {
        let refused = admin.invite_cluster_node(request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().starts_with(message), "{}", refused.message());
    }
    let mut as_member = pb::admin_client::AdminClient::new(server.channel(&member).await);
    let refused = as_member
        .invite_cluster_node(request("node-2", &["node-2.example"], key()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(principals(&mut admin).await, before, "no refusal made a principal");
    let single = TestServer::start_single().await;
    let refused = single
        .admin_client()
        .await
        .invite_cluster_node(request("node-2", &["node-2.example"], key()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");

    // This one-node cluster calls no other node (no cluster_credentials): its invitation
    // names none to trust, and a node made from it could never be reached.
    let untrusting = flagshare::client::invite(
        &mut admin,
        "node-2",
        &["127.0.0.1".to_owned()],
        &server.endpoint(),
        "localhost",
    )
    .await
    .unwrap();
    assert!(untrusting.details.trusted_nodes.is_empty());
    let invitation_dir = tempfile::tempdir().unwrap();
    untrusting.write(invitation_dir.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let refused = flagshare(&[
        "init",
        "--join",
        path(invitation_dir.path()),
        "--node-id",
        "2",
        "--data",
        path(&data.path().join("node")),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("names no node to trust"),
        "{}",
        stderr(&refused)
    );

    // The same invitation told to trust one node's certificate.
    let trusted_node = server.enroll("node-1", Role::Node).await;
    let other_node = server.enroll("node-9", Role::Node).await;
    let mut trusting = flagshare::client::Invitation::load(invitation_dir.path()).unwrap();
    trusting.details.trusted_nodes = vec![hex::encode(
        flagshare::pki::pem_certificate_sha256(&trusted_node.cert_pem).unwrap(),
    )];
    let trusting_dir = tempfile::tempdir().unwrap();
    trusting.write(trusting_dir.path()).unwrap();
    let node_dir = data.path().join("node-2");
    let made = flagshare(&[
        "init",
        "--join",
        path(trusting_dir.path()),
        "--node-id",
        "2",
        "--data",
        path(&node_dir),
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(
        !node_dir.join("pki/ca.key").exists(),
        "a joining node never holds the CA key"
    );
    assert!(!node_dir.join("db").exists(), "nor a database");
    let joining = crate::support::process::ServeProcess::start(&node_dir);
    let endpoint = joining.endpoint();
    let mut as_member = pb::flags_client::FlagsClient::new(member.connect(Some(&endpoint)).await.unwrap());
    let waiting = as_member
        .query(query_request(&[email_digest("a@example.com")]))
        .await
        .unwrap_err();
    assert_eq!(waiting.code(), tonic::Code::Unavailable, "{waiting:?}");
    assert!(
        waiting.message().contains("joining its cluster"),
        "{}",
        waiting.message()
    );
    let stale_vote = pb::RaftRequest {
        header: br#"{"vote":{"leader_id":{"term":0,"node_id":9},"committed":false},"last_log_id":null}"#.to_vec(),
        ..Default::default()
    };
    for untrusted in [&other_node, &member, &server.admin] {
        let mut client = ClusterClient::new(untrusted.connect(Some(&endpoint)).await.unwrap());
        let refused = client.vote(stale_vote.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    let mut as_trusted = ClusterClient::new(trusted_node.connect(Some(&endpoint)).await.unwrap());
    let answer = as_trusted.vote(stale_vote).await.unwrap().into_inner();
    let outcome: serde_json::Value = serde_json::from_slice(&answer.outcome).unwrap();
    assert!(
        outcome["Ok"]["vote_granted"].is_boolean(),
        "answered by the node's Raft: {outcome}"
    );
}

/// A server made a one-node cluster serves only once it leads: its first answers already
/// come from the leader (its start once waited for nothing: the membership reads empty
/// until the initialisation is processed, and a scrape right after start found term 0 and
/// no leader in 3 runs of 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_one_node_cluster_leads_before_it_serves() {
    use flagshare::model::Role;

    for _ in 0..3 {
        let server = TestServer::start_configured(|config| config.replicated_log = true).await;
        let scraped = server.scrape().await;
        assert_eq!(scraped.value("flagshare_cluster_leader", ""), Some(1.0));
        assert!(
            scraped
                .value("flagshare_cluster_applied_index", "")
                .is_some_and(|applied| applied >= 1.0)
        );
        let member = server.enroll("platform-a", Role::Member).await;
        let mut client = flagshare::pb::flags_client::FlagsClient::new(server.channel(&member).await);
        client
            .submit(submit_request(vec![flag(
                email_digest("first@example.com"),
                pb::Category::Grooming,
                80,
            )]))
            .await
            .unwrap();
    }
}

/// A node applies its entries without the WAL (its log holds them). A one-node cluster
/// killed with SIGKILL has the rows it applied since its last flush nowhere but in its
/// log, and applies the log again as it starts: every acknowledged flag is back and the
/// audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_one_node_cluster_applies_its_log_again_and_loses_no_acknowledged_flag() {
    use flagshare::model::Role;
    use flagshare::pb::flags_client::FlagsClient;

    use crate::support::process::ServeProcess;
    use crate::support::write_config;

    let server = TestServer::start().await;
    let bundle = server.enroll("alpha", Role::Member).await;
    let dir = server.stop().await;
    write_config(dir.path(), |config| config.replicated_log = true);
    let process = ServeProcess::start(dir.path());
    let mut client = FlagsClient::new(bundle.connect(Some(&process.endpoint())).await.unwrap());
    let mut digests: Vec<flagshare::digest::Digest> = (0..2_000)
        .map(|n| email_digest(&format!("killed-{n}@example.com")))
        .collect();
    for chunk in digests.chunks(100) {
        let flags = chunk
            .iter()
            .map(|digest| flag(*digest, pb::Category::Grooming, 80))
            .collect();
        client.submit(submit_request(flags)).await.unwrap();
    }
    drop(client);
    process.kill();

    // What was applied is not on disk: only the log's entries are (a store opened
    // offline replays its WAL, which holds the log and not the applied rows).
    digests.sort();
    {
        let store = Store::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
        let on_disk = store.get_summaries(&digests).unwrap().iter().flatten().count();
        assert!(on_disk < digests.len(), "{on_disk} of {} on disk", digests.len());
    }

    let process = ServeProcess::start(dir.path());
    let mut client = FlagsClient::new(bundle.connect(Some(&process.endpoint())).await.unwrap());
    for chunk in digests.chunks(1_000) {
        assert_eq!(query(&mut client, chunk).await.len(), chunk.len());
    }
    let admin = flagshare::client::Bundle::load(&dir.path().join("clients/admin")).unwrap();
    let mut admin =
        flagshare::pb::admin_client::AdminClient::new(admin.connect(Some(&process.endpoint())).await.unwrap());
    verified_audit(&mut admin).await;

    // Past 20,000 entries the log is trimmed behind a snapshot: what the trimmed entries
    // applied is flushed first, so a kill right after loses nothing the log no longer holds.
    // Commits made together may share an entry (group commit), so flags go in rounds of
    // 4,000 from four callers until the log has passed 20,000 entries (at most 80,000).
    let status = |admin: &flagshare::pb::admin_client::AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_cluster_status(pb::GetClusterStatusRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut later: Vec<flagshare::digest::Digest> = Vec::new();
    for round in 0..20 {
        if status(&admin).await.last_log_index > 20_500 {
            break;
        }
        let part: Vec<flagshare::digest::Digest> = (0..4_000)
            .map(|n| email_digest(&format!("trimmed-{round}-{n}@example.com")))
            .collect();
        let callers: Vec<_> = part
            .chunks(1_000)
            .map(|part| {
                let (mut client, part) = (client.clone(), part.to_vec());
                tokio::spawn(async move {
                    for digest in part {
                        client
                            .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 80)]))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        later.extend(part);
    }
    eventually("the log trimmed behind a snapshot", || {
        let status = status(&admin);
        async move { status.await.snapshot_index > 10_000 }
    })
    .await;
    drop((client, admin));
    process.kill();
    let kept = raft_log(dir.path()).len();
    assert!(kept < 5_000, "{kept} entries: the log was trimmed");
    let process = ServeProcess::start(dir.path());
    let mut client = FlagsClient::new(bundle.connect(Some(&process.endpoint())).await.unwrap());
    later.sort();
    for chunk in digests.chunks(1_000).chain(later.chunks(1_000)) {
        assert_eq!(query(&mut client, chunk).await.len(), chunk.len());
    }
    assert!(process.stop().success());
}
