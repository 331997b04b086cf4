//! Federation catch-up: operator A holds N flags (default 1,000,000; `FLAGSHARE_BENCH_N`);
//! a new peer B is configured and pulls A's whole change log over mutual TLS. Reports the
//! time from configuring the peer until B has applied everything, in events per second.
//! Both servers run in this process on the same cores.
//!
//!     scripts/cargo bench --profile dev --bench federation

use std::time::{Duration, Instant};

use flagshare::client::{Bundle, enroll};
use flagshare::config::Config;
use flagshare::digest::Digest;
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use tonic::transport::Channel;

const LOAD_BATCH: usize = 10_000;

fn digest_of(index: u64) -> Digest {
    *blake3::hash(&index.to_be_bytes()).as_bytes()
}

struct Server {
    dir: tempfile::TempDir,
    endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(operator: &str) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse()?,
        operator_name: operator.to_owned(),
        ..Config::default()
    };
    flagshare::cli::setup::initialize(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(flagshare::server::run(config, listener, async {
        let _ = stopped.await;
    }));
    Ok(Server {
        dir,
        endpoint,
        stop,
        task,
    })
}

impl Server {
    async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let bundle = Bundle::load(&self.dir.path().join("clients").join("admin"))?;
        Ok(AdminClient::new(bundle.connect(Some(&self.endpoint)).await?))
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::var("FLAGSHARE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let a = start("op-a").await?;
    let b = start("op-b").await?;
    let mut a_admin = a.admin().await?;
    let loader = enroll(&mut a_admin, "loader", Role::Member, &a.endpoint, "localhost").await?;
    let mut loader = FlagsClient::new(loader.connect(None).await?);
    let load_started = Instant::now();
    let mut next = 0;
    while next < n {
        let end = (next + LOAD_BATCH as u64).min(n);
        let flags = (next..end)
            .map(|i| pb::Flag {
                digest: digest_of(i).to_vec(),
                kind: pb::IdentifierKind::Email as i32,
                category: pb::Category::Grooming as i32,
                confidence: 80,
                ..Default::default()
            })
            .collect();
        loader.submit(pb::SubmitRequest { flags, key_id: 1 }).await?;
        next = end;
    }
    let load_secs = load_started.elapsed().as_secs_f64();
    let head = a_admin
        .get_stats(pb::GetStatsRequest {})
        .await?
        .into_inner()
        .change_sequence;

    let peer_bundle = enroll(&mut a_admin, "b", Role::Peer, &a.endpoint, "localhost").await?;
    let bundle_dir = b.dir.path().join("peer-a");
    peer_bundle.write(&bundle_dir)?;
    let mut b_admin = b.admin().await?;
    let started = Instant::now();
    b_admin
        .configure_peer(pb::ConfigurePeerRequest {
            name: "a".to_owned(),
            endpoint: a.endpoint.clone(),
            bundle_dir: bundle_dir.display().to_string(),
            ..Default::default()
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let peers = b_admin.list_peers(pb::ListPeersRequest {}).await?.into_inner().peers;
        if peers.first().is_some_and(|peer| peer.cursor >= head) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "catch-up did not finish in 30 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up_secs = started.elapsed().as_secs_f64();
    let b_stats = b_admin.get_stats(pb::GetStatsRequest {}).await?.into_inner();
    anyhow::ensure!(
        b_stats.n_active_flags == n,
        "B holds {} flags, expected {n}",
        b_stats.n_active_flags
    );

    println!("flagshare federation catch-up benchmark: two servers in-process on 127.0.0.1, mutual TLS");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| load of A via Submit (N = {n}, batches of {LOAD_BATCH}) | {load_secs:.1} s, {:.0} flags/s |",
        n as f64 / load_secs
    );
    println!(
        "| catch-up of a new peer B from sequence 0 ({head} events, batches of 5,000, fsync per batch) | {catch_up_secs:.1} s, {:.0} events/s |",
        head as f64 / catch_up_secs
    );
    b.shutdown().await?;
    a.shutdown().await?;
    Ok(())
}
