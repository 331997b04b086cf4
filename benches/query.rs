//! End-to-end Query benchmark over mutual TLS against a real in-process server.
//!
//! Loads N flags (default 1,000,000; `FLAGSHARE_BENCH_N`), then measures Query throughput
//! with batches of 1,000 digests (100% misses and 10% hits) and single-digest latency.
//! Server and client share this machine's cores, so figures are a floor, not a ceiling.
//!
//!     scripts/cargo bench --profile dev --bench query
//!
//! (The dev profile builds dependencies, RocksDB included, at opt-level 3; using it avoids a
//! second 25-minute RocksDB build for the release profile.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic fails the test or benchmark

mod common;
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)] // the benchmarks use the harness's servers, not every test helper
mod support;

use std::time::Instant;

use flagshare::pb::flags_client::FlagsClient;
use tonic::transport::Channel;

use common::{LOAD_BATCH, median, packed, percentile, query_digests, unary_queries};
use support::TestServer;

const QUERY_BATCH: usize = 1_000;
/// Requests in flight at once on the one connection.
const IN_FLIGHT: usize = 8;
const ROUNDS: usize = 5;
const BATCHES_PER_ROUND: usize = 200;
const LATENCY_CALLS: usize = 3_000;

async fn throughput(client: &FlagsClient<Channel>, n_loaded: u64, hit_percent: u64) -> (f64, usize) {
    let mut rates = Vec::new();
    let mut n_matches = 0;
    let mut n_expected = 0;
    for round in 0..ROUNDS {
        let (batches, n_hits) = query_digests(n_loaded, hit_percent, BATCHES_PER_ROUND, QUERY_BATCH, round as u64 + 1);
        let batches = packed(&batches);
        n_expected += n_hits;
        let start = Instant::now();
        n_matches += unary_queries(std::slice::from_ref(client), batches, IN_FLIGHT).await;
        rates.push((BATCHES_PER_ROUND * QUERY_BATCH) as f64 / start.elapsed().as_secs_f64());
    }
    // Every loaded digest must come back as a match, and nothing else.
    assert_eq!(n_matches, n_expected, "matches returned vs digests that were loaded");
    (median(rates), n_matches)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = common::bench_n(1_000_000);
    let server = TestServer::start_named("flagshare-dev").await;
    let mut admin = server.admin_client().await;
    let loader = common::member(&mut admin, "loader", &server.endpoint()).await?;
    let reader_client = common::member(&mut admin, "reader", &server.endpoint()).await?;
    let load_secs = common::load(&loader, n, 1).await?;

    let (miss_rate, _) = throughput(&reader_client, n, 0).await;
    let (hit_rate, hit_matches) = throughput(&reader_client, n, 10).await;
    assert!(hit_matches > 0, "the 10% workload must match");
    let latencies = common::single_digest_latencies(&reader_client, n, LATENCY_CALLS).await?;

    println!("flagshare Query benchmark: N = {n} flags, mutual TLS, server in-process on 127.0.0.1");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| bulk load via Submit (batches of {LOAD_BATCH}, fsync per batch) | {load_secs:.1} s, {:.0} flags/s |",
        n as f64 / load_secs
    );
    println!(
        "| Query, batches of {QUERY_BATCH}, 100% misses, {IN_FLIGHT} in flight on 1 connection (median of {ROUNDS}) | {miss_rate:.0} digests/s |"
    );
    println!(
        "| Query, batches of {QUERY_BATCH}, 10% hits, {IN_FLIGHT} in flight on 1 connection (median of {ROUNDS}) | {hit_rate:.0} digests/s |"
    );
    println!(
        "| single-digest Query latency p50 ({LATENCY_CALLS} sequential calls, 10% hits) | {:.0} µs |",
        percentile(&latencies, 0.50).as_secs_f64() * 1e6
    );
    println!(
        "| single-digest Query latency p99 | {:.0} µs |",
        percentile(&latencies, 0.99).as_secs_f64() * 1e6
    );
    server.stop().await;
    Ok(())
}
