//! `flagshare serve` processes on one Raft log, as an operator runs them: for the
//! failover tests and the cluster benchmark.

use std::path::PathBuf;
use std::time::Duration;

use flagshare::client::Bundle;
use flagshare::digest::Digest;
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use tonic::transport::Channel;

use super::process::{ServeProcess, flagshare, path, stderr};
use super::{TestServer, copy_dir, query_request, write_config};

/// Longest a status call waits on a node: a paused node answers nothing.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Node {
    pub dir: PathBuf,
    pub port: u16,
    pub process: Option<ServeProcess>,
}

impl Node {
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

/// Nodes 1 to n (`nodes[0]` is node 1), each a process with a data folder of its own.
pub struct ProcessCluster {
    _dirs: Vec<tempfile::TempDir>,
    pub nodes: Vec<Node>,
    pub admin: Bundle,
    pub member: Bundle,
}

impl Drop for ProcessCluster {
    /// A failing scenario shows the end of each node's log (and keeps each whole in
    /// `$FLAGSHARE_TEST_LOGS`, when set).
    fn drop(&mut self) {
        let keep = std::env::var("FLAGSHARE_TEST_LOGS").ok();
        if !std::thread::panicking() {
            // Kept on request even when all went well (the benchmark's runs, say).
            if let Some(keep) = keep {
                let _ = std::fs::create_dir_all(&keep);
                for (index, node) in self.nodes.iter().enumerate() {
                    let _ = std::fs::copy(
                        node.dir.join("serve.log"),
                        std::path::Path::new(&keep).join(format!("node-{}.log", index + 1)),
                    );
                }
            }
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

impl ProcessCluster {
    /// Node 1 initialised with a replicated log, nodes 2 to `n` seeded from its backup
    /// (as the README's steps say) and added with `admin cluster add-node`.
    pub async fn start(n: u64) -> ProcessCluster {
        let first = TestServer::start_configured(|config| config.replicated_log = true).await;
        let member = first.enroll("alpha", Role::Member).await;
        let mut node_bundles = Vec::new();
        for id in 1..=n {
            node_bundles.push(first.enroll(&format!("node-{id}"), Role::Node).await);
        }
        let seeds = tempfile::tempdir().unwrap();
        let mut admin = first.admin_client().await;
        for id in 2..=n {
            let dir = seeds.path().join(format!("db-{id}"));
            let dir = dir.to_str().unwrap().to_owned();
            admin.backup(pb::BackupRequest { dir }).await.unwrap();
        }
        drop(admin);
        let admin = first.admin.clone();
        let first_dir = first.stop().await;

        let mut dirs = vec![first_dir];
        for id in 2..=n {
            let dir = tempfile::tempdir().unwrap();
            std::fs::rename(seeds.path().join(format!("db-{id}")), dir.path().join("db")).unwrap();
            std::fs::create_dir_all(dir.path().join("pki")).unwrap();
            for file in ["ca.pem", "server.pem", "server.key"] {
                std::fs::copy(dirs[0].path().join("pki").join(file), dir.path().join("pki").join(file)).unwrap();
            }
            copy_dir(&dirs[0].path().join("clients"), &dir.path().join("clients"));
            dirs.push(dir);
        }
        let mut nodes = Vec::new();
        for (index, dir) in dirs.iter().enumerate() {
            let id = index as u64 + 1;
            node_bundles[index]
                .write(&dir.path().join(format!("node-{id}")))
                .unwrap();
            write_config(dir.path(), |config| {
                config.replicated_log = true;
                config.node_id = id;
                config.cluster_credentials = format!("node-{id}");
            });
            let process = ServeProcess::start(dir.path());
            nodes.push(Node {
                dir: dir.path().to_owned(),
                port: process.port(),
                process: Some(process),
            });
        }
        let cluster = ProcessCluster {
            _dirs: dirs,
            nodes,
            admin,
            member,
        };
        let mut admin = cluster.admin_client(1).await;
        for id in 2..=n {
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

    /// Node `id` made as an operator makes one on a new machine: invited on node
    /// `leader` (`admin cluster invite`), its folder made by `flagshare init --join` (no
    /// database), started, and added with `add-node`, which returns once it caught up.
    pub async fn join(&mut self, id: u64, leader: u64) {
        let name = format!("node-{id}");
        let invitation_dir = tempfile::tempdir().unwrap();
        let mut admin = self.admin_client(leader).await;
        let invitation = flagshare::client::invite(
            &mut admin,
            &name,
            &["127.0.0.1".to_owned()],
            &self.node(leader).endpoint(),
            &self.admin.config.server_name,
        )
        .await
        .unwrap();
        invitation.write(invitation_dir.path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let made = flagshare(&[
            "init",
            "--join",
            path(invitation_dir.path()),
            "--node-id",
            &id.to_string(),
            "--data",
            path(&data),
        ]);
        assert!(made.status.success(), "init --join: {}", stderr(&made));
        let process = ServeProcess::start(&data);
        let node = Node {
            dir: data,
            port: process.port(),
            process: Some(process),
        };
        let address = node.endpoint();
        self.nodes.push(node);
        self._dirs.push(dir);
        admin
            .add_cluster_node(pb::AddClusterNodeRequest {
                id,
                address,
                principal: name,
            })
            .await
            .unwrap();
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    pub async fn admin_client(&self, id: u64) -> AdminClient<Channel> {
        AdminClient::new(self.admin.connect(Some(&self.node(id).endpoint())).await.unwrap())
    }

    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        // Bounded whole (connecting too): a node paused or starved answers nothing.
        let asked = async {
            let channel = self.admin.connect(Some(&self.node(id).endpoint())).await.ok()?;
            let mut admin = AdminClient::new(channel);
            let status = admin.get_cluster_status(pb::GetClusterStatusRequest {}).await.ok()?;
            Some(status.into_inner())
        };
        tokio::time::timeout(CALL_TIMEOUT, asked).await.ok().flatten()
    }

    /// The leader, as node `asked` names itself leading.
    pub async fn leader_by(&self, asked: u64) -> Option<u64> {
        let status = self.status(asked).await?;
        (status.leader_id == asked).then_some(asked)
    }

    /// The node of `among` that first says it leads, polled until `limit` passes.
    pub async fn wait_for_leader(&self, among: &[u64], limit: Duration) -> u64 {
        let started = std::time::Instant::now();
        loop {
            assert!(started.elapsed() < limit, "no leader among {among:?} within {limit:?}");
            for id in among {
                if let Some(id) = self.leader_by(*id).await {
                    return id;
                }
            }
        }
    }

    /// SIGKILL of node `id`; returns once its process is gone.
    pub fn kill(&mut self, id: u64) {
        self.nodes[id as usize - 1].process.take().unwrap().kill();
    }

    /// Starts node `id` again on its folder, at the address its cluster knows.
    pub fn restart(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        node.process = Some(ServeProcess::start_on(&node.dir, node.port));
    }

    /// A `Flags` client on every node (all up); a channel reconnects when its node is back.
    pub async fn member_clients(&self) -> Vec<FlagsClient<Channel>> {
        let mut clients = Vec::new();
        for node in &self.nodes {
            clients.push(FlagsClient::new(
                self.member.connect(Some(&node.endpoint())).await.unwrap(),
            ));
        }
        clients
    }

    /// Every one of `digests` found on node `id`.
    pub async fn holds_all(&self, id: u64, digests: &[Digest]) -> bool {
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
