//! Federation catch-up: operator A holds N flags (default 1,000,000; `FLAGSHARE_BENCH_N`);
//! a new peer B is configured and pulls A's whole change log over mutual TLS. Reports the
//! time from configuring the peer until B has applied everything, in events per second.
//! All servers run in this process on the same cores.
//!
//! With `FLAGSHARE_BENCH_SIGNED=1`, B passes flags on (it has a `pass_on` peer), so it asks
//! A to sign each of its events and keeps the signatures; then a third operator C, which
//! knows A's key, catches up from B, verifying A's signature on every event B passes on.
//!
//!     scripts/cargo bench --profile dev --bench federation
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic fails the test or benchmark

mod common;
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)] // the benchmarks use the harness's servers, not every test helper
mod support;

use std::time::{Duration, Instant};

use flagshare::client::enroll;
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use tonic::transport::Channel;

use common::LOAD_BATCH;
use support::TestServer;

/// Makes `puller` pull from `source` as peer `name`; returns when its cursor reaches
/// `head`, with the seconds that took.
async fn catch_up(
    puller: &TestServer,
    source: &TestServer,
    source_admin: &mut AdminClient<Channel>,
    name_on_source: &str,
    name: &str,
    head: u64,
) -> anyhow::Result<f64> {
    let peer_bundle = enroll(
        source_admin,
        name_on_source,
        Role::Peer,
        &source.endpoint(),
        "localhost",
    )
    .await?;
    let bundle_dir = puller.data_dir().join(format!("peer-{name}"));
    peer_bundle.write(&bundle_dir)?;
    let mut admin = puller.admin_client().await;
    let started = Instant::now();
    admin
        .configure_peer(pb::ConfigurePeerRequest {
            name: name.to_owned(),
            endpoint: source.endpoint(),
            bundle_dir: bundle_dir.display().to_string(),
            ..Default::default()
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let peers = admin.list_peers(pb::ListPeersRequest {}).await?.into_inner().peers;
        let status = peers
            .iter()
            .find(|peer| peer.config.as_ref().is_some_and(|config| config.name == name));
        if status.is_some_and(|peer| peer.cursor >= head) {
            anyhow::ensure!(
                status.is_some_and(|peer| peer.n_rejected == 0),
                "{name} refused events: {status:?}"
            );
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(Instant::now() < deadline, "catch-up did not finish in 30 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stats(admin: &mut AdminClient<Channel>) -> anyhow::Result<pb::GetStatsResponse> {
    Ok(admin.get_stats(pb::GetStatsRequest {}).await?.into_inner())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = common::bench_n(1_000_000);
    let signed = std::env::var("FLAGSHARE_BENCH_SIGNED").is_ok_and(|value| value == "1");
    let a = TestServer::start_named("op-a").await;
    let b = TestServer::start_named("op-b").await;
    let mut a_admin = a.admin_client().await;
    let loader = common::member(&mut a_admin, "loader", &a.endpoint()).await?;
    let load_secs = common::load(&loader, n, 1).await?;
    let head = stats(&mut a_admin).await?.change_sequence;

    let mut b_admin = b.admin_client().await;
    if signed {
        // B passes flags on to C: it asks A for signed events and keeps the signatures.
        b_admin
            .configure_peer(pb::ConfigurePeerRequest {
                name: "c".to_owned(),
                pass_on: true,
                ..Default::default()
            })
            .await?;
    }
    let catch_up_secs = catch_up(&b, &a, &mut a_admin, "b", "a", head).await?;
    let b_stats = stats(&mut b_admin).await?;
    anyhow::ensure!(
        b_stats.n_active_flags == n,
        "B holds {} flags, expected {n}",
        b_stats.n_active_flags
    );

    println!("flagshare federation catch-up benchmark: servers in-process on 127.0.0.1, mutual TLS");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| load of A via Submit (N = {n}, batches of {LOAD_BATCH}) | {load_secs:.1} s, {:.0} flags/s |",
        n as f64 / load_secs
    );
    let how = if signed {
        "A signs every event, B keeps the signatures"
    } else {
        "unsigned: B passes nothing on"
    };
    println!(
        "| catch-up of a new peer B from sequence 0 ({head} events, {how}) | {catch_up_secs:.1} s, {:.0} events/s |",
        head as f64 / catch_up_secs
    );

    if signed {
        // C knows A's key, pulls from B, and verifies A's signature on every event.
        let c = TestServer::start_named("op-c").await;
        let mut c_admin = c.admin_client().await;
        let a_identity = stats(&mut a_admin).await?;
        c_admin
            .configure_peer(pb::ConfigurePeerRequest {
                name: "op-a".to_owned(),
                operator_id: a_identity.operator_id,
                operator_key: a_identity.operator_key,
                ..Default::default()
            })
            .await?;
        let b_head = b_stats.change_sequence;
        let relay_secs = catch_up(&c, &b, &mut b_admin, "c", "b", b_head).await?;
        let c_stats = stats(&mut c_admin).await?;
        anyhow::ensure!(
            c_stats.n_active_flags == n,
            "C holds {} flags, expected {n}",
            c_stats.n_active_flags
        );
        println!(
            "| catch-up of C from B ({b_head} events passed on, A's signature verified on each) | {relay_secs:.1} s, {:.0} events/s |",
            b_head as f64 / relay_secs
        );
        c.stop().await;
    }
    b.stop().await;
    a.stop().await;
    Ok(())
}
