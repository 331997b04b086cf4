//! Federation catch-up: operator A holds N flags (default 1,000,000; `FLAGSHARE_BENCH_N`);
//! a new peer B is configured and pulls A's whole change log over mutual TLS. Reports the
//! time from configuring the peer until B has applied everything, in events per second.
//! Both servers run in this process on the same cores.
//!
//!     scripts/cargo bench --profile dev --bench federation
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic fails the test or benchmark

mod common;

use std::time::{Duration, Instant};

use flagshare::client::enroll;
use flagshare::model::Role;
use flagshare::pb;

use common::{InProcess, LOAD_BATCH};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = common::bench_n(1_000_000);
    let a = InProcess::start("op-a").await?;
    let b = InProcess::start("op-b").await?;
    let mut a_admin = a.admin().await?;
    let loader = common::member(&mut a_admin, "loader", &a.endpoint).await?;
    let load_secs = common::load(&loader, n, 1).await?;
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
