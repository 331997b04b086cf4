//! Three `flagshare serve` processes on one Raft log, as an operator runs them, while a
//! member writes and reads without pause: the leader killed (SIGKILL), then restarted;
//! the leader paused (SIGSTOP) and resumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flagshare::digest::Digest;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use tonic::transport::Channel;

use crate::support::cluster::{CALL_TIMEOUT, ProcessCluster};
use crate::support::{
    assert_status, audit_count, email_digest, eventually, flag, query_request, submit_request, verified_audit,
};

/// Bounds of each load: submissions and time.
const MAX_SUBMITS: usize = 4_000;
const MAX_LOAD: Duration = Duration::from_secs(60);

/// What a load saw: the digests whose submission a node acknowledged, and the longest
/// time no read was answered.
struct Load {
    acknowledged: Vec<Digest>,
    /// Every digest submitted, acknowledged or not.
    attempted: Vec<Digest>,
    longest_read_gap: Duration,
    n_reads: usize,
}

/// One writer submitting a new flag at a time and one reader querying `known`, each
/// call to the next node in turn and on to another when one fails or says nothing
/// within `CALL_TIMEOUT`, until `stop` is set (or the load's bounds are reached).
fn run_load(clients: Vec<FlagsClient<Channel>>, known: Digest, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Load> {
    let writers = clients.clone();
    let stop_writing = stop.clone();
    let writer = tokio::spawn(async move {
        let started = Instant::now();
        let (mut acknowledged, mut attempted) = (Vec::new(), Vec::new());
        let mut n = 0usize;
        while !stop_writing.load(Ordering::Relaxed) && n < MAX_SUBMITS && started.elapsed() < MAX_LOAD {
            let digest = email_digest(&format!("load-{n}@example.com"));
            attempted.push(digest);
            for attempt in 0..writers.len() {
                let mut client = writers[(n + attempt) % writers.len()].clone();
                let call = client.submit(submit_request(vec![flag(digest, pb::Category::Grooming, 80)]));
                if let Ok(Ok(_)) = tokio::time::timeout(CALL_TIMEOUT, call).await {
                    acknowledged.push(digest);
                    break;
                }
            }
            n += 1;
        }
        (acknowledged, attempted)
    });
    let reader = tokio::spawn(async move {
        let started = Instant::now();
        let mut last_answer = Instant::now();
        let (mut longest_read_gap, mut n_reads, mut n) = (Duration::ZERO, 0, 0usize);
        while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
            let mut client = clients[n % clients.len()].clone();
            n += 1;
            let call = client.query(query_request(&[known]));
            if let Ok(Ok(answer)) = tokio::time::timeout(CALL_TIMEOUT, call).await {
                assert_eq!(answer.get_ref().matches.len(), 1, "the known flag is found");
                longest_read_gap = longest_read_gap.max(last_answer.elapsed());
                last_answer = Instant::now();
                n_reads += 1;
            }
        }
        (longest_read_gap.max(last_answer.elapsed()), n_reads)
    });
    tokio::spawn(async move {
        let (acknowledged, attempted) = writer.await.unwrap();
        let (longest_read_gap, n_reads) = reader.await.unwrap();
        Load {
            acknowledged,
            attempted,
            longest_read_gap,
            n_reads,
        }
    })
}

/// A flag every node holds, then `run_load` reading it, running for 2 s: the member's
/// clients (one a node), the flag, the load's stop switch and the load.
async fn start_load(
    cluster: &ProcessCluster,
) -> (
    Vec<FlagsClient<Channel>>,
    Digest,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Load>,
) {
    let known = email_digest("known@example.com");
    let clients = cluster.member_clients().await;
    clients[0]
        .clone()
        .submit(submit_request(vec![flag(known, pb::Category::Grooming, 90)]))
        .await
        .unwrap();
    // Followers answer from what they applied: the reads start once every node has it.
    let known_only = [known];
    for id in 1..=3 {
        eventually("every node holds the known flag", || cluster.holds_all(id, &known_only)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(clients.clone(), known, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    (clients, known, stop, load)
}

/// Each node's audit chain verifies, and each is a prefix of the leader's: the entry
/// after a node's head names that head as its predecessor on the leader.
async fn assert_one_audit_chain(cluster: &ProcessCluster, leader: u64, nodes: &[u64]) {
    let mut heads = Vec::new();
    for &id in nodes {
        let verified = verified_audit(&mut cluster.admin_client(id).await).await;
        heads.push((id, verified.last_sequence, verified.head_hash));
    }
    let mut admin = cluster.admin_client(leader).await;
    eventually("every node's head followed by an entry on the leader", || {
        let mut admin = admin.clone();
        let heads = heads.clone();
        async move {
            let entries = admin
                .list_audit(pb::ListAuditRequest {
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries;
            heads.iter().all(|(id, sequence, head)| {
                entries.iter().any(|entry| {
                    if entry.sequence != sequence + 1 {
                        return false;
                    }
                    assert_eq!(&entry.prev_hash, head, "node {id}'s chain is the leader's");
                    true
                })
            })
        }
    })
    .await;
    verified_audit(&mut admin).await;
}

/// The leader killed mid-load: another is elected with no operator action, no
/// acknowledged flag is missing on it, reads go on, and the old leader restarted at its
/// address rejoins as a follower, converges, and shares the one audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_loses_no_acknowledged_flag() {
    let mut cluster = ProcessCluster::start(3).await;
    assert_eq!(
        cluster.leader_by(1).await,
        Some(1),
        "node 1 leads after adding the others"
    );
    let (_, _, stop, load) = start_load(&cluster).await;
    let killed_at = Instant::now();
    cluster.kill(1);
    let new_leader = cluster.wait_for_leader(&[2, 3], Duration::from_secs(30)).await;
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();
    eprintln!(
        "failover: node {new_leader} led {:.2} s after node 1 was killed; {} submissions acknowledged, {} reads, longest without a read {:.2} s",
        failover.as_secs_f64(),
        load.acknowledged.len(),
        load.n_reads,
        load.longest_read_gap.as_secs_f64()
    );
    assert!(load.acknowledged.len() > 10, "the load wrote through the failover");
    // Followers answer from what they applied while no leader is known, up to the
    // staleness bound (10 s by default).
    assert!(
        load.longest_read_gap < Duration::from_secs(10),
        "reads stopped for {:?}",
        load.longest_read_gap
    );
    assert!(
        cluster.holds_all(new_leader, &load.acknowledged).await,
        "every acknowledged flag is on the new leader"
    );

    // The old leader comes back at its address, follows, and catches up.
    cluster.restart(1);
    let acknowledged = load.acknowledged.clone();
    eventually(
        "node 1 follows the new leader and holds every acknowledged flag",
        || {
            let cluster = &cluster;
            let acknowledged = acknowledged.clone();
            async move {
                let Some(status) = cluster.status(1).await else {
                    return false;
                };
                status.leader_id == new_leader && cluster.holds_all(1, &acknowledged).await
            }
        },
    )
    .await;
    let other = if new_leader == 2 { 3 } else { 2 };
    eventually("the other follower holds every acknowledged flag", || {
        cluster.holds_all(other, &load.acknowledged)
    })
    .await;
    assert_one_audit_chain(&cluster, new_leader, &[1, 2, 3]).await;
}

/// The leader paused (SIGSTOP) for 10 s mid-load: the other two elect a leader and go on;
/// a write sent to the paused one is not acknowledged unless it was committed; after
/// SIGCONT the old leader follows, and every node holds every acknowledged flag, the
/// same flags, and one audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_steps_down_and_nothing_it_held_is_lost_or_doubled() {
    let cluster = ProcessCluster::start(3).await;
    assert_eq!(cluster.leader_by(1).await, Some(1));
    let (clients, known, stop, load) = start_load(&cluster).await;
    let paused = cluster.node(1).process.as_ref().unwrap();
    paused.signal("STOP");
    let paused_at = Instant::now();
    // A write straight to the paused leader, waiting as long as it takes.
    let alone = email_digest("sent-to-the-paused-leader@example.com");
    let mut to_paused = clients[0].clone();
    let sent_alone = tokio::spawn(async move {
        let call = to_paused.submit(submit_request(vec![flag(alone, pb::Category::Grooming, 70)]));
        tokio::time::timeout(Duration::from_secs(30), call).await
    });
    let new_leader = cluster.wait_for_leader(&[2, 3], Duration::from_secs(10)).await;
    let elected = paused_at.elapsed();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(paused_at.elapsed())).await;
    paused.signal("CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();
    let alone_acknowledged = matches!(sent_alone.await.unwrap(), Ok(Ok(_)));
    eprintln!(
        "partition: node {new_leader} led {:.2} s after node 1 was paused; {} of {} submissions acknowledged; the write sent to the paused leader {}",
        elected.as_secs_f64(),
        load.acknowledged.len(),
        load.attempted.len(),
        if alone_acknowledged { "acknowledged" } else { "refused" }
    );
    assert!(load.acknowledged.len() > 10, "the load wrote through the pause");

    // The old leader follows the new one; every node holds every acknowledged flag.
    eventually("node 1 follows the new leader", || async {
        cluster
            .status(1)
            .await
            .is_some_and(|status| status.leader_id == new_leader)
    })
    .await;
    let mut acknowledged = load.acknowledged.clone();
    if alone_acknowledged {
        acknowledged.push(alone);
    }
    for id in 1..=3 {
        eventually("every node holds every acknowledged flag", || {
            cluster.holds_all(id, &acknowledged)
        })
        .await;
    }
    // The same flags on every node, once each: what the new leader holds of every digest
    // tried (acknowledged or not), and its count of active flags, everywhere.
    let mut tried = load.attempted.clone();
    tried.extend([known, alone]);
    let found_on = |id: u64| {
        let cluster = &cluster;
        let tried = tried.clone();
        async move {
            let channel = cluster
                .member
                .connect(Some(&cluster.node(id).endpoint()))
                .await
                .unwrap();
            let mut client = FlagsClient::new(channel);
            let mut found = Vec::new();
            for chunk in tried.chunks(1_000) {
                let answer = client.query(query_request(chunk)).await.unwrap().into_inner();
                found.extend(answer.matches.into_iter().map(|found| found.digest));
            }
            let stats = AdminClient::new(cluster.admin.connect(Some(&cluster.node(id).endpoint())).await.unwrap())
                .get_stats(pb::GetStatsRequest {})
                .await
                .unwrap()
                .into_inner();
            (found, stats.n_active_flags)
        }
    };
    let (on_leader, n_on_leader) = found_on(new_leader).await;
    assert_eq!(n_on_leader as usize, on_leader.len(), "one active flag a digest found");
    for id in 1..=3 {
        eventually("every node holds what the leader holds", || {
            let on_leader = on_leader.clone();
            let found_on = &found_on;
            async move { found_on(id).await == (on_leader, n_on_leader) }
        })
        .await;
    }
    assert_one_audit_chain(&cluster, new_leader, &[1, 2, 3]).await;
}

/// A fourth node made by `init --join` on a folder with no database (an invitation
/// only) joins a cluster under load and catches up from a snapshot; a node taken out
/// stops receiving the log while the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_catches_up_from_a_snapshot_and_a_removed_one_stops_receiving() {
    let mut cluster = ProcessCluster::start(3).await;
    let (_, _, stop, load) = start_load(&cluster).await;
    let started = Instant::now();
    cluster.join(4, 1).await;
    let joined = started.elapsed();
    // Node 4 serves members once it holds its cluster's state; until then it refuses.
    let status = loop {
        if let Some(status) = cluster.status(4).await {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "node 4 never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.leader_id, 1, "node 4 follows node 1");
    assert!(status.snapshot_index > 0, "node 4 started from a snapshot: {status:?}");
    let on_leader = cluster.status(1).await.unwrap();
    let as_voter = on_leader.nodes.iter().find(|node| node.id == 4).unwrap();
    assert_eq!(as_voter.role, "follower", "node 4 votes once caught up");

    let mut admin = cluster.admin_client(1).await;
    admin
        .remove_cluster_node(pb::RemoveClusterNodeRequest { id: 2 })
        .await
        .unwrap();
    // What was on its way to node 2 when it was removed may still land: read after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frozen = cluster.status(2).await.unwrap().applied_index;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();
    let leader_applied = cluster.status(1).await.unwrap().applied_index;
    let removed_applied = cluster.status(2).await.unwrap().applied_index;
    eprintln!(
        "join: node 4 caught up and voted {:.2} s after its invitation; {} submissions acknowledged; node 2 removed at index {frozen}, the leader at {leader_applied}",
        joined.as_secs_f64(),
        load.acknowledged.len(),
    );
    assert_eq!(removed_applied, frozen, "node 2 receives no entry once removed");
    assert!(leader_applied > frozen + 10, "the cluster went on committing");
    let on_leader = cluster.status(1).await.unwrap();
    assert!(
        on_leader.nodes.iter().all(|node| node.id != 2),
        "node 2 is not in the membership: {on_leader:?}"
    );
    for id in [1, 3, 4] {
        eventually("every remaining node holds every acknowledged flag", || {
            cluster.holds_all(id, &load.acknowledged)
        })
        .await;
    }
    assert_one_audit_chain(&cluster, 1, &[1, 3, 4]).await;
}

/// Reads on the leader are linearizable: with both followers paused, the leader cannot
/// confirm that it still leads (another could have been elected and taken writes), so it
/// refuses reads once its lease has lapsed, long before its staleness bound (10 s); once
/// a majority answers again it serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_confirm_its_lead_refuses_reads() {
    let cluster = ProcessCluster::start(3).await;
    assert_eq!(cluster.leader_by(1).await, Some(1));
    let known = email_digest("known@example.com");
    let mut on_leader = FlagsClient::new(cluster.member.connect(Some(&cluster.node(1).endpoint())).await.unwrap());
    on_leader
        .submit(submit_request(vec![flag(known, pb::Category::Grooming, 90)]))
        .await
        .unwrap();
    assert_eq!(
        on_leader
            .query(query_request(&[known]))
            .await
            .unwrap()
            .get_ref()
            .matches
            .len(),
        1
    );

    for id in [2, 3] {
        cluster.node(id).process.as_ref().unwrap().signal("STOP");
    }
    let paused_at = Instant::now();
    let refused = loop {
        let call = on_leader.query(query_request(&[known]));
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => {
                assert!(paused_at.elapsed() < Duration::from_secs(2), "answered past its lease");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(status)) => break status,
            Err(_) => panic!("a read on the leader neither answered nor failed within 5 s"),
        }
    };
    let refused_after = paused_at.elapsed();
    // Reads arriving together while the lease is lapsed share read-index rounds: the
    // followers (here: nobody) are asked once or twice, not once a read.
    let leader_process = cluster.node(1).process.as_ref().unwrap();
    let rounds = |scraped: &crate::support::Metrics| {
        scraped
            .value("flagshare_cluster_read_index_rounds_total", "")
            .expect("the leader counts its read-index rounds")
    };
    let rounds_before = rounds(&leader_process.scrape().await);
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let mut client = on_leader.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), client.query(query_request(&[known]))).await
            })
        })
        .collect();
    for read in burst {
        let refused = read.await.unwrap().expect("refused within 10 s").unwrap_err();
        assert!(
            refused.message().contains("cannot confirm that it still leads"),
            "{refused:?}"
        );
    }
    let burst_rounds = rounds(&leader_process.scrape().await) - rounds_before;
    // A write proposed now would wait for a majority that may never come back, holding
    // a thread: past the election timeout it is refused before it is proposed.
    tokio::time::sleep(Duration::from_millis(2_500).saturating_sub(paused_at.elapsed())).await;
    let write = on_leader.submit(submit_request(vec![flag(
        email_digest("unheard@example.com"),
        pb::Category::Grooming,
        90,
    )]));
    let write_refused = tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("a write on a leader cut off is refused, not left waiting")
        .unwrap_err();
    assert_status(
        &write_refused,
        tonic::Code::Unavailable,
        "has not heard from a majority",
    );
    for id in [2, 3] {
        cluster.node(id).process.as_ref().unwrap().signal("CONT");
    }
    eprintln!("leader reads: 16 reads at once refused after {burst_rounds} read-index rounds");
    assert!(
        (1.0..=4.0).contains(&burst_rounds),
        "{burst_rounds} rounds for 16 reads"
    );
    eprintln!(
        "leader reads: refused {:.2} s after both followers were paused",
        refused_after.as_secs_f64()
    );
    assert_status(&refused, tonic::Code::Unavailable, "cannot confirm that it still leads");
    assert!(
        refused_after < Duration::from_secs(8),
        "refused within the lease and one read index, not the staleness bound"
    );
    eventually("the leader (or its successor) serves reads again", || async {
        for id in [1, 2, 3] {
            if cluster.leader_by(id).await.is_some() {
                let Ok(channel) = cluster.member.connect(Some(&cluster.node(id).endpoint())).await else {
                    return false;
                };
                return FlagsClient::new(channel)
                    .query(query_request(&[known]))
                    .await
                    .is_ok_and(|answer| answer.get_ref().matches.len() == 1);
            }
        }
        false
    })
    .await;
}

/// A leader whose followers are gone cannot commit the audit entry of the read it
/// answered last: it still stops on SIGTERM (once that commit had waited long enough),
/// and nothing is written behind its log's back. Restarted, it leads its term again
/// (its vote is stored) with that entry in its log: it commits it before anything it
/// stages anew, so no entry is overwritten and the three share one audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_followers_are_gone_still_stops_on_sigterm() {
    let mut cluster = ProcessCluster::start(3).await;
    assert_eq!(cluster.leader_by(1).await, Some(1));
    let known = email_digest("known@example.com");
    let mut on_leader = FlagsClient::new(cluster.member.connect(Some(&cluster.node(1).endpoint())).await.unwrap());
    on_leader.query(query_request(&[known])).await.unwrap();
    eventually("the first read's audit entry reaches a follower", || async {
        audit_count(&mut cluster.admin_client(2).await, "query").await == 1
    })
    .await;
    cluster.kill(2);
    cluster.kill(3);
    // Within the lease: answered, and its audit entry proposed, never to be committed.
    on_leader
        .query(query_request(&[known]))
        .await
        .expect("a read within the leader's lease is answered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = cluster.nodes[0].process.take().unwrap();
    leader.stop_within(Duration::from_secs(60));
    let log = std::fs::read_to_string(cluster.node(1).dir.join("serve.log")).unwrap();
    assert!(
        log.contains("commits still wait for a majority of the cluster; stopping without them"),
        "the stop waited for the read's audit entry, then gave up on it"
    );
    cluster.restart(1);
    // An admin's call on it while it is alone: it waits (and with it, its audit entry)
    // until the entry the last process left in the log is committed and applied.
    let mut admin = cluster.admin_client(1).await;
    let early_call = tokio::spawn(async move { admin.verify_audit(pb::VerifyAuditRequest {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(2);
    cluster.restart(3);
    match early_call.await.unwrap() {
        Ok(verified) => assert!(verified.get_ref().ok, "{verified:?}"),
        Err(status) => assert!(status.message().contains("try again"), "{status:?}"),
    }
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(60)).await;
    eventually("both reads' audit entries are committed", || async {
        audit_count(&mut cluster.admin_client(leader).await, "query").await == 2
    })
    .await;
    assert_one_audit_chain(&cluster, leader, &[1, 2, 3]).await;
}
