//! What a replicated operator costs, and how long its failover takes: `Submit` throughput
//! and latency on a single server and a one-node cluster (loads alternating between the
//! two, their ratio taken round by round), and on three nodes (each node a
//! `flagshare serve` process on loopback with its own folder, as `tests/it/failover.rs`
//! runs them), an `Import` of 1,000,000 flags on each, and the time from the leader's
//! SIGKILL until another node leads.
//!
//!     CARGO_PROFILE_DEV_OPT_LEVEL=3 scripts/cargo bench --profile dev --bench cluster
//!
//! `FLAGSHARE_BENCH_N` sets the import's size; `FLAGSHARE_BENCH_IMPORT_ONLY=1` runs only
//! the paired imports, `FLAGSHARE_BENCH_SUBMIT_ONLY=1` only the paired `Submit` loads.
//! All processes share this machine's cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic fails the test or benchmark

mod common;
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)] // the benchmarks use the harness's servers, not every test helper
mod support;

use std::time::{Duration, Instant};

use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::flags_client::FlagsClient;
use tonic::transport::Channel;

use common::{median, percentile};
use support::cluster::ProcessCluster;
use support::process::ServeProcess;
use support::{TestServer, flag, import_answers, submit_request, write_config};

/// Submissions per measured load, split over `WRITERS` callers, each one call at a time.
const SUBMIT_CALLS: usize = 2_000;
const FLAGS_PER_CALL: usize = 100;
const WRITERS: usize = 4;
const FAILOVERS: usize = 3;
/// Alternating loads on the single server and the one-node cluster.
const PAIRED_ROUNDS: usize = 6;
/// Alternating imports on the two, likewise.
const IMPORT_ROUNDS: usize = 5;

fn digest(seed: u64, n: u64) -> [u8; 32] {
    *blake3::hash(&[seed.to_le_bytes(), n.to_le_bytes()].concat()).as_bytes()
}

/// `SUBMIT_CALLS` submissions of `FLAGS_PER_CALL` new flags through `client`: flags/s and
/// each call's latency.
async fn submit_load(client: &FlagsClient<Channel>, seed: u64) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for call in (writer..SUBMIT_CALLS).step_by(WRITERS) {
                let flags = (0..FLAGS_PER_CALL)
                    .map(|i| {
                        let n = (call * FLAGS_PER_CALL + i) as u64;
                        flag(digest(seed, n), pb::Category::Grooming, 80)
                    })
                    .collect();
                let sent = Instant::now();
                client.submit(submit_request(flags)).await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for writer in writers {
        latencies.extend(writer.await.unwrap());
    }
    let rate = (SUBMIT_CALLS * FLAGS_PER_CALL) as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// An `Import` of `n` new flags (messages of 10,000) through `client`: the time until
/// its last answer, which must count every flag created.
async fn import_load(client: &FlagsClient<Channel>, seed: u64, n: u64) -> Duration {
    let messages: Vec<pb::ImportRequest> = (0..n)
        .collect::<Vec<_>>()
        .chunks(10_000)
        .map(|chunk| pb::ImportRequest {
            flags: chunk
                .iter()
                .map(|n| flag(digest(seed, *n), pb::Category::Grooming, 60))
                .collect(),
            key_id: 1,
        })
        .collect();
    let started = Instant::now();
    let answers = import_answers(client, messages).await;
    let imported = started.elapsed();
    let last = answers.last().expect("the import answers");
    assert!(last.done && last.n_created == n, "{last:?}");
    imported
}

/// Waits (at most a minute) until none of `processes` is compacting or folding its
/// presence filters after an import: on this shared machine one server's compaction or
/// fold (a scan of every stored digest) ran during the other's measured import and
/// halved it.
async fn quiet(processes: &[&ServeProcess]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for process in processes {
        loop {
            let metrics = process.scrape().await;
            let busy = metrics
                .value("flagshare_presence_filters", "")
                .is_some_and(|filters| filters > 1.0)
                || metrics
                    .value("flagshare_rocksdb_running_compactions", "")
                    .is_some_and(|running| running > 0.0)
                || metrics
                    .value("flagshare_rocksdb_pending_compaction_bytes", "")
                    .is_some_and(|pending| pending > 0.0);
            if !busy || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn row(what: &str, (rate, latencies): &(f64, Vec<Duration>)) -> String {
    format!(
        "| {what} | {rate:.0} | {:.1} / {:.1} ms |",
        percentile(latencies, 0.50).as_secs_f64() * 1e3,
        percentile(latencies, 0.99).as_secs_f64() * 1e3
    )
}

/// The one-node / single server ratios of the paired Submit loads: throughput and p99
/// round by round (`ratios`, `p99_ratios`), and p99 of every call (`one` and `single`
/// sorted), which one slow stretch of the machine can move by half.
fn paired_line(ratios: &[f64], p99_ratios: &[f64], one: &[Duration], single: &[Duration]) -> String {
    let (low, high) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(f64::MIN, f64::max),
    );
    format!(
        "one-node cluster / single server, loads run next to each other: median {:.2} of {} rounds ({low:.2}-{high:.2}); p99 median {:.2} round by round, {:.2} of every call",
        median(ratios.to_vec()),
        ratios.len(),
        median(p99_ratios.to_vec()),
        percentile(one, 0.99).as_secs_f64() / percentile(single, 0.99).as_secs_f64(),
    )
}

/// The node of `among` that says it leads, polled until `limit` passes.
async fn leader_within(cluster: &ProcessCluster, among: &[u64], limit: Duration) -> Option<u64> {
    let started = Instant::now();
    while started.elapsed() < limit {
        for id in among {
            if let Some(id) = cluster.leader_by(*id).await {
                return Some(id);
            }
        }
    }
    None
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n_import = common::bench_n(1_000_000);

    // A single server, no replicated log: the README's default, as a process.
    let single = TestServer::start_single().await;
    let bundle = single.enroll("alpha", Role::Member).await;
    let dir = single.stop().await;
    write_config(dir.path(), |config| config.replicated_log = false);
    let process = ServeProcess::start(dir.path());
    let single_client = FlagsClient::new(bundle.connect(Some(&process.endpoint())).await?);
    let one = ProcessCluster::start(1).await;
    let one_client = FlagsClient::new(one.member.connect(Some(&one.node(1).endpoint())).await?);

    // Single server and one-node cluster side by side, their loads alternating (the order
    // swapped each round): this machine's speed drifts by a third within minutes, so only
    // ratios of loads run next to each other mean anything.
    let (mut single_rates, mut one_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut p99_ratios = Vec::new();
    let (mut single_latencies, mut one_latencies) = (Vec::new(), Vec::new());
    let import_only = std::env::var_os("FLAGSHARE_BENCH_IMPORT_ONLY").is_some();
    for round in 0..if import_only { 0 } else { PAIRED_ROUNDS } {
        let seed = 100 + 2 * round as u64;
        let (single_load, one_load) = if round % 2 == 0 {
            let single_load = submit_load(&single_client, seed).await;
            (single_load, submit_load(&one_client, seed + 1).await)
        } else {
            let one_load = submit_load(&one_client, seed + 1).await;
            (submit_load(&single_client, seed).await, one_load)
        };
        let p99 = |load: &(f64, Vec<Duration>)| percentile(&load.1, 0.99).as_secs_f64() * 1e3;
        eprintln!(
            "bench: round {round}: single server {:.0}, one-node cluster {:.0} flags/s ({:.2}); p99 {:.1} / {:.1} ms",
            single_load.0,
            one_load.0,
            one_load.0 / single_load.0,
            p99(&single_load),
            p99(&one_load)
        );
        ratios.push(one_load.0 / single_load.0);
        p99_ratios.push(p99(&one_load) / p99(&single_load));
        single_rates.push(single_load.0);
        one_rates.push(one_load.0);
        single_latencies.extend(single_load.1);
        one_latencies.extend(one_load.1);
    }
    if std::env::var_os("FLAGSHARE_BENCH_SUBMIT_ONLY").is_some() {
        single_latencies.sort();
        one_latencies.sort();
        println!(
            "{}",
            row(
                "single server (no replicated log)",
                &(median(single_rates), single_latencies.clone())
            )
        );
        println!(
            "{}",
            row("one-node cluster", &(median(one_rates), one_latencies.clone()))
        );
        println!(
            "{}",
            paired_line(&ratios, &p99_ratios, &one_latencies, &single_latencies)
        );
        return Ok(());
    }
    // Imports of new flags, alternating likewise (each round adds to both stores alike).
    let (mut single_imports, mut one_imports, mut import_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..IMPORT_ROUNDS {
        let seed = 200 + 2 * round as u64;
        // Each import is measured while neither server is folding (`quiet`).
        let servers = [&process, one.node(1).process.as_ref().unwrap()];
        let (single_import, one_import) = if round % 2 == 0 {
            quiet(&servers).await;
            let single_import = import_load(&single_client, seed, n_import).await;
            quiet(&servers).await;
            (single_import, import_load(&one_client, seed + 1, n_import).await)
        } else {
            quiet(&servers).await;
            let one_import = import_load(&one_client, seed + 1, n_import).await;
            quiet(&servers).await;
            (import_load(&single_client, seed, n_import).await, one_import)
        };
        let ratio = single_import.as_secs_f64() / one_import.as_secs_f64();
        eprintln!(
            "bench: import round {round}: {n_import} on a single server in {:.2} s, on a one-node cluster in {:.2} s ({ratio:.2} of the rate)",
            single_import.as_secs_f64(),
            one_import.as_secs_f64()
        );
        single_imports.push(single_import.as_secs_f64());
        one_imports.push(one_import.as_secs_f64());
        import_ratios.push(ratio);
    }
    let import_line = format!(
        "`Import` of {n_import} new flags, {IMPORT_ROUNDS} rounds alternating: single server median {:.2} s ({:.0} flags/s); one-node cluster median {:.2} s ({:.0} flags/s); one-node / single rate per round: median {:.2} ({})",
        median(single_imports.clone()),
        n_import as f64 / median(single_imports),
        median(one_imports.clone()),
        n_import as f64 / median(one_imports),
        median(import_ratios.clone()),
        import_ratios
            .iter()
            .map(|ratio| format!("{ratio:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if import_only {
        println!("{import_line}");
        return Ok(());
    }
    single_latencies.sort();
    one_latencies.sort();
    let single_row = (median(single_rates), single_latencies);
    let one_row = (median(one_rates), one_latencies);
    drop(single_client);
    process.stop();
    drop(dir);
    drop(one_client);
    drop(one);

    let mut three = ProcessCluster::start(3).await;
    let leader = three.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let to_leader = FlagsClient::new(three.member.connect(Some(&three.node(leader).endpoint())).await?);
    let three_row = submit_load(&to_leader, 3).await;
    eprintln!("bench: three nodes, to the leader {:.0} flags/s", three_row.0);
    let to_follower = FlagsClient::new(three.member.connect(Some(&three.node(follower).endpoint())).await?);
    let forwarded_row = submit_load(&to_follower, 4).await;
    eprintln!("bench: three nodes, to a follower {:.0} flags/s", forwarded_row.0);

    println!("flagshare replicated operator: processes on 127.0.0.1 of this machine, sharing its cores");
    println!();
    println!(
        "| `Submit` of {FLAGS_PER_CALL} new flags a call, {WRITERS} callers one call at a time, {SUBMIT_CALLS} calls a load | flags/s (median of loads) | call p50 / p99 |"
    );
    println!("|---|---|---|");
    println!("{}", row("single server (no replicated log)", &single_row));
    println!("{}", row("one-node cluster", &one_row));
    println!("{}", row("three nodes, to the leader", &three_row));
    println!("{}", row("three nodes, to a follower (forwarded)", &forwarded_row));
    println!();
    println!(
        "{}; three nodes / single server: {:.2}",
        paired_line(&ratios, &p99_ratios, &one_row.1, &single_row.1),
        three_row.0 / single_row.0
    );
    // An import on three: until the leader's last answer, then until every node holds it.
    let started = Instant::now();
    let imported = import_load(&to_leader, 5, n_import).await;
    eprintln!("bench: imported {n_import} on three in {:.1} s", imported.as_secs_f64());
    let probe: Vec<[u8; 32]> = (0..n_import).step_by(9_973).map(|n| digest(5, n)).collect();
    for id in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !three.holds_all(id, &probe).await {
            assert!(Instant::now() < deadline, "node {id} did not apply the import");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let everywhere = started.elapsed();

    // Failovers: the leader killed, another elected, the old one restarted to follow. A
    // round that does not settle within its bound ends the series, and is reported.
    let mut failovers = Vec::new();
    let mut unsettled = None;
    let mut leader = leader;
    for round in 1..=FAILOVERS {
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        let killed_at = Instant::now();
        three.kill(leader);
        let Some(next) = leader_within(&three, &others, Duration::from_secs(60)).await else {
            unsettled = Some(format!("round {round}: no leader within 60 s of node {leader}'s kill"));
            break;
        };
        failovers.push(killed_at.elapsed());
        eprintln!(
            "bench: node {next} led {:.2} s after node {leader} was killed",
            killed_at.elapsed().as_secs_f64()
        );
        three.restart(leader);
        let deadline = Instant::now() + Duration::from_secs(60);
        while three.status(leader).await.is_none_or(|status| status.leader_id != next) {
            if Instant::now() > deadline {
                unsettled = Some(format!(
                    "round {round}: node {leader}, restarted, did not follow node {next} within 60 s"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if unsettled.is_some() {
            break;
        }
        leader = next;
    }

    let rate = |took: Duration| n_import as f64 / took.as_secs_f64();
    println!("{import_line}");
    println!(
        "`Import` of {n_import} flags on three nodes: {:.1} s to the leader's last answer ({:.0} flags/s), {:.1} s until every node holds it",
        imported.as_secs_f64(),
        rate(imported),
        everywhere.as_secs_f64()
    );
    let seconds: Vec<f64> = failovers.iter().map(Duration::as_secs_f64).collect();
    if !seconds.is_empty() {
        println!(
            "failover (SIGKILL of the leader until another says it leads), {} of {FAILOVERS} rounds: median {:.2} s, each {:?}",
            seconds.len(),
            median(seconds.clone()),
            seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>()
        );
    }
    if let Some(unsettled) = unsettled {
        println!("failover series ended early: {unsettled}");
    }
    Ok(())
}
