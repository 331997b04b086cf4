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

mod common;

use std::time::Instant;

use flagshare::pb;
use flagshare::pb::flags_client::FlagsClient;
use tonic::transport::Channel;

use common::{InProcess, LOAD_BATCH, digest_of, median, percentile};

const QUERY_BATCH: usize = 1_000;
/// Requests in flight at once on the one connection.
const IN_FLIGHT: usize = 8;
const ROUNDS: usize = 5;
const BATCHES_PER_ROUND: usize = 200;
const LATENCY_CALLS: usize = 3_000;

/// Packed query batches, and how many of their digests were loaded: `hit_percent` of them
/// were, spread over the whole loaded range; the rest never were.
fn query_batches(n_loaded: u64, hit_percent: u64, n_batches: usize, seed: u64) -> (Vec<bytes::Bytes>, usize) {
    let mut n_hits = 0;
    let batches = (0..n_batches)
        .map(|batch| {
            let mut packed = Vec::with_capacity(QUERY_BATCH * 32);
            for item in 0..QUERY_BATCH as u64 {
                let n = seed * 1_000_000_000 + batch as u64 * QUERY_BATCH as u64 + item;
                let digest = if n % 100 < hit_percent {
                    n_hits += 1;
                    let spread = u64::from_le_bytes(blake3::hash(&n.to_le_bytes()).as_bytes()[..8].try_into().unwrap());
                    digest_of(0, spread % n_loaded)
                } else {
                    digest_of(1, n)
                };
                packed.extend_from_slice(&digest);
            }
            packed.into()
        })
        .collect();
    (batches, n_hits)
}

async fn throughput(client: &FlagsClient<Channel>, n_loaded: u64, hit_percent: u64) -> (f64, usize) {
    let mut rates = Vec::new();
    let mut n_matches = 0;
    let mut n_expected = 0;
    for round in 0..ROUNDS {
        let (batches, n_hits) = query_batches(n_loaded, hit_percent, BATCHES_PER_ROUND, round as u64 + 1);
        n_expected += n_hits;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for lane in 0..IN_FLIGHT {
            let mut client = client.clone();
            let mine: Vec<_> = batches.iter().skip(lane).step_by(IN_FLIGHT).cloned().collect();
            tasks.push(tokio::spawn(async move {
                let mut matched = 0;
                for digests in mine {
                    matched += client
                        .query(pb::QueryRequest { digests })
                        .await
                        .unwrap()
                        .into_inner()
                        .matches
                        .len();
                }
                matched
            }));
        }
        for task in tasks {
            n_matches += task.await.unwrap();
        }
        rates.push((BATCHES_PER_ROUND * QUERY_BATCH) as f64 / start.elapsed().as_secs_f64());
    }
    // Every loaded digest must come back as a match, and nothing else.
    assert_eq!(n_matches, n_expected, "matches returned vs digests that were loaded");
    (median(rates), n_matches)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = common::bench_n(1_000_000);
    let server = InProcess::start("flagshare-dev").await?;
    let mut admin = server.admin().await?;
    let loader = common::member(&mut admin, "loader", &server.endpoint).await?;
    let reader_client = common::member(&mut admin, "reader", &server.endpoint).await?;
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
    server.shutdown().await
}
