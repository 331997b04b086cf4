//! Three `flagshare serve` processes on one Raft log, as an operator runs them, while a
//! member writes and reads without pause: the leader killed (SIGKILL), then restarted;
//! the leader paused (SIGSTOP) and resumed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flagshare::client::Bundle;
use flagshare::config::Config;
use flagshare::digest::Digest;
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use tonic::transport::Channel;

use crate::support::process::ServeProcess;
use crate::support::{TestServer, copy_dir, email_digest, eventually, flag, query_request, submit_request};

/// Longest one call of the load waits on a node before trying the next: a paused node
/// answers nothing, and a call it never answers was not acknowledged.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds of each load: submissions and time.
const MAX_SUBMITS: usize = 4_000;
const MAX_LOAD: Duration = Duration::from_secs(60);

struct Node {
    dir: PathBuf,
    port: u16,
    process: Option<ServeProcess>,
}

impl Node {
    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

/// Nodes 1, 2 and 3 (`nodes[0]` is node 1), each a process with a data folder of its own.
struct ThreeNodes {
    _dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Node>,
    admin: Bundle,
    member: Bundle,
}

impl Drop for ThreeNodes {
    /// A failing scenario shows the end of each node's log (and keeps each whole in
    /// `$FLAGSHARE_TEST_LOGS`, when set).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(node.dir.join("serve.log")).unwrap_or_default();
            if let Ok(keep) = std::env::var("FLAGSHARE_TEST_LOGS") {
                let _ = std::fs::create_dir_all(&keep);
                let _ = std::fs::write(
                    std::path::Path::new(&keep).join(format!("node-{}.log", index + 1)),
                    &log,
                );
            }
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- node {} (last 40 lines of its log)", index + 1);
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

impl ThreeNodes {
    /// Node 1 initialised with a replicated log, nodes 2 and 3 seeded from its backup (as
    /// the README's steps say) and added with `admin cluster add-node`.
    async fn start() -> ThreeNodes {
        let first = TestServer::start_configured(|config| config.replicated_log = true).await;
        let member = first.enroll("alpha", Role::Member).await;
        let mut node_bundles = Vec::new();
        for id in 1..=3 {
            node_bundles.push(first.enroll(&format!("node-{id}"), Role::Node).await);
        }
        let seeds = tempfile::tempdir().unwrap();
        let mut admin = first.admin_client().await;
        for id in 2..=3 {
            let dir = seeds.path().join(format!("db-{id}"));
            let dir = dir.to_str().unwrap().to_owned();
            admin.backup(pb::BackupRequest { dir }).await.unwrap();
        }
        drop(admin);
        let admin = first.admin.clone();
        let first_dir = first.stop().await;

        let mut dirs = vec![first_dir];
        for id in 2..=3 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::rename(seeds.path().join(format!("db-{id}")), dir.path().join("db")).unwrap();
            std::fs::create_dir_all(dir.path().join("pki")).unwrap();
            for file in ["ca.pem", "server.pem", "server.key"] {
                std::fs::copy(dirs[0].path().join("pki").join(file), dir.path().join("pki").join(file)).unwrap();
            }
            copy_dir(&dirs[0].path().join("clients"), &dir.path().join("clients"));
            dirs.push(dir);
        }
        let settings = Config::load(dirs[0].path()).unwrap();
        let mut nodes = Vec::new();
        for (index, dir) in dirs.iter().enumerate() {
            let id = index as u64 + 1;
            node_bundles[index]
                .write(&dir.path().join(format!("node-{id}")))
                .unwrap();
            let config = Config {
                replicated_log: true,
                node_id: id,
                cluster_credentials: format!("node-{id}"),
                ..settings.clone()
            };
            std::fs::write(dir.path().join("flagshare.toml"), toml::to_string(&config).unwrap()).unwrap();
            let process = ServeProcess::start(dir.path());
            nodes.push(Node {
                dir: dir.path().to_owned(),
                port: process.port(),
                process: Some(process),
            });
        }
        let cluster = ThreeNodes {
            _dirs: dirs,
            nodes,
            admin,
            member,
        };
        let mut admin = cluster.admin_client(1).await;
        for id in 2..=3u64 {
            admin
                .add_cluster_node(pb::AddClusterNodeRequest {
                    id,
                    address: cluster.node(id).endpoint(),
                    principal: format!("node-{id}"),
                })
                .await
                .unwrap();
        }
        cluster
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    async fn admin_client(&self, id: u64) -> AdminClient<Channel> {
        AdminClient::new(self.admin.connect(Some(&self.node(id).endpoint())).await.unwrap())
    }

    async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        let channel = self.admin.connect(Some(&self.node(id).endpoint())).await.ok()?;
        let mut admin = AdminClient::new(channel);
        let status = admin.get_cluster_status(pb::GetClusterStatusRequest {});
        let status = tokio::time::timeout(CALL_TIMEOUT, status).await.ok()?.ok()?;
        Some(status.into_inner())
    }

    /// The leader, as node `asked` names itself leading.
    async fn leader_by(&self, asked: u64) -> Option<u64> {
        let status = self.status(asked).await?;
        (status.leader_id == asked).then_some(asked)
    }

    /// A `Flags` client on every node (all up); a channel reconnects when its node is back.
    async fn member_clients(&self) -> Vec<FlagsClient<Channel>> {
        let mut clients = Vec::new();
        for node in &self.nodes {
            clients.push(FlagsClient::new(
                self.member.connect(Some(&node.endpoint())).await.unwrap(),
            ));
        }
        clients
    }

    /// Every one of `digests` found on node `id`.
    async fn holds_all(&self, id: u64, digests: &[Digest]) -> bool {
        let Ok(channel) = self.member.connect(Some(&self.node(id).endpoint())).await else {
            return false;
        };
        let mut client = FlagsClient::new(channel);
        for chunk in digests.chunks(1_000) {
            match client.query(query_request(chunk)).await {
                Ok(answer) if answer.get_ref().matches.len() == chunk.len() => {}
                _ => return false,
            }
        }
        true
    }
}

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

/// Each node's audit chain verifies, and each is a prefix of the leader's: the entry
/// after a node's head names that head as its predecessor on the leader.
async fn assert_one_audit_chain(cluster: &ThreeNodes, leader: u64) {
    let mut heads = Vec::new();
    for id in 1..=3 {
        let mut admin = cluster.admin_client(id).await;
        let verified = admin
            .verify_audit(pb::VerifyAuditRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(verified.ok, "node {id}: {verified:?}");
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
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "leader: {verified:?}");
}

/// The leader killed mid-load: another is elected with no operator action, no
/// acknowledged flag is missing on it, reads go on, and the old leader restarted at its
/// address rejoins as a follower, converges, and shares the one audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_loses_no_acknowledged_flag() {
    let mut cluster = ThreeNodes::start().await;
    assert_eq!(
        cluster.leader_by(1).await,
        Some(1),
        "node 1 leads after adding the others"
    );
    let known = email_digest("known@example.com");
    let mut clients = cluster.member_clients().await;
    clients[0]
        .submit(submit_request(vec![flag(known, pb::Category::Grooming, 90)]))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(clients, known, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.nodes[0].process.take().unwrap().kill();
    let mut new_leader = None;
    while new_leader.is_none() {
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no leader within 30 s");
        for id in 2..=3 {
            if let Some(id) = cluster.leader_by(id).await {
                new_leader = Some(id);
            }
        }
    }
    let failover = killed_at.elapsed();
    let new_leader = new_leader.unwrap();
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
    let node_1 = &mut cluster.nodes[0];
    node_1.process = Some(ServeProcess::start_on(&node_1.dir, node_1.port));
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
    assert_one_audit_chain(&cluster, new_leader).await;
}

/// The leader paused (SIGSTOP) for 10 s mid-load: the other two elect a leader and go on;
/// a write sent to the paused one is not acknowledged unless it was committed; after
/// SIGCONT the old leader follows, and every node holds every acknowledged flag, the
/// same flags, and one audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_steps_down_and_nothing_it_held_is_lost_or_doubled() {
    let cluster = ThreeNodes::start().await;
    assert_eq!(cluster.leader_by(1).await, Some(1));
    let known = email_digest("known@example.com");
    let clients = cluster.member_clients().await;
    clients[0]
        .clone()
        .submit(submit_request(vec![flag(known, pb::Category::Grooming, 90)]))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(clients.clone(), known, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    let mut new_leader = None;
    while new_leader.is_none() {
        assert!(
            paused_at.elapsed() < Duration::from_secs(10),
            "no leader while node 1 was paused"
        );
        for id in 2..=3 {
            if let Some(id) = cluster.leader_by(id).await {
                new_leader = Some(id);
            }
        }
    }
    let elected = paused_at.elapsed();
    let new_leader = new_leader.unwrap();
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
    assert_one_audit_chain(&cluster, new_leader).await;
}
