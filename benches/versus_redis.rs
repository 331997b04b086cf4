//! flagshare against the baseline a team would build without it: a Redis set of digests
//! queried with SMISMEMBER. One run, one machine, one table. Run it with `bench/run.sh`,
//! which installs Redis if needed and builds flagshare fully optimised first.
//!
//! flagshare runs as its own process (`flagshare serve`, mutual TLS), as does
//! `redis-server`, so each one's resident memory is its own. N digests (default
//! 10,000,000; `FLAGSHARE_BENCH_N`) are loaded into both: into flagshare twice, through
//! `Submit` on a server of its own and through `Import` on the server the lookups then run
//! against (the import is checked: every flag new, counted by the server, the audit chain
//! verified; the lookups check that every loaded digest is found and nothing else).
//!
//! For comparing builds of flagshare itself: `FLAGSHARE_BENCH_BIN` runs another
//! `flagshare` binary (with `FLAGSHARE_BENCH_SERVE_ARGS` as its extra `serve` arguments,
//! empty for a build from before the metrics endpoint), and `FLAGSHARE_BENCH_ONLY=submit`,
//! `during` or `import` runs only that part (the `Submit` load, the lookups during an
//! import, the checked `Import` load), for profiling or comparing one path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic fails the test or benchmark

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flagshare::client::enroll;
use flagshare::model::Role;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

use common::{IN_FLIGHT, Killed, LOAD_BATCH, QUERY_BATCH, anon_mib, digest_of, median, percentile, rss_mib};

/// Batches per measured round, split over the connections.
const BATCHES_PER_ROUND: usize = 400;
const ROUNDS: usize = 3;
const LATENCY_CALLS: usize = 2_000;

/// Batches to ask both servers for: `hit_percent` of the digests were loaded.
fn batches(n_loaded: u64, hit_percent: u64, seed: u64) -> Vec<Vec<[u8; 32]>> {
    common::query_digests(n_loaded, hit_percent, BATCHES_PER_ROUND, QUERY_BATCH, seed).0
}

// ---- Redis, spoken directly (RESP), pipelined ----

fn resp_command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

struct Redis {
    reader: AsyncBufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Redis {
    async fn connect(port: u16) -> anyhow::Result<Redis> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Redis {
            reader: AsyncBufReader::with_capacity(1 << 16, read),
            writer: write,
        })
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        anyhow::ensure!(!line.is_empty(), "redis closed the connection");
        Ok(line.trim_end().to_owned())
    }

    /// Reads one reply; returns how many integer-1 elements it held (SMISMEMBER hits).
    async fn reply(&mut self) -> anyhow::Result<usize> {
        let line = self.line().await?;
        match line.as_bytes().first() {
            Some(b'*') => {
                let n: usize = line[1..].parse()?;
                let mut ones = 0;
                for _ in 0..n {
                    if self.line().await? == ":1" {
                        ones += 1;
                    }
                }
                Ok(ones)
            }
            Some(b'+') | Some(b':') => Ok(0),
            _ => anyhow::bail!("redis: {line}"),
        }
    }
}

fn smismember(batch: &[[u8; 32]]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = vec![b"SMISMEMBER", b"flagged"];
    parts.extend(batch.iter().map(|digest| digest.as_slice()));
    resp_command(&parts)
}

async fn redis_lookups(port: u16, connections: usize, batches: &[Vec<[u8; 32]>]) -> anyhow::Result<(f64, usize)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..connections {
        let mine: Vec<Vec<u8>> = batches
            .iter()
            .skip(lane)
            .step_by(connections)
            .map(|batch| smismember(batch))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut redis = Redis::connect(port).await?;
            let mut hits = 0;
            // Keep IN_FLIGHT commands outstanding.
            let mut sent = 0;
            let mut received = 0;
            while received < mine.len() {
                while sent < mine.len() && sent - received < IN_FLIGHT {
                    redis.writer.write_all(&mine[sent]).await?;
                    sent += 1;
                }
                hits += redis.reply().await?;
                received += 1;
            }
            anyhow::Ok(hits)
        }));
    }
    let mut hits = 0;
    for task in tasks {
        hits += task.await??;
    }
    Ok((
        (batches.len() * QUERY_BATCH) as f64 / started.elapsed().as_secs_f64(),
        hits,
    ))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = common::bench_n(10_000_000);
    let mut rows: Vec<(String, String, String, String)> = Vec::new();

    let serve_args = common::serve_args("FLAGSHARE_BENCH_SERVE_ARGS");
    let bin = common::flagshare_bin();
    let dir = tempfile::tempdir()?;

    let only = std::env::var("FLAGSHARE_BENCH_ONLY").ok();
    let runs = |part: &str| only.as_deref().is_none_or(|only| only == part);
    // flagshare, loaded through Submit (10,000 flags per call), on a server of its own.
    let submit_load = if !runs("submit") {
        0.0
    } else {
        let data = dir.path().join("submit");
        let (server, endpoint) = common::start_flagshare(&bin, &data, &serve_args)?;
        let mut admin = common::admin_client(&data, &endpoint).await?;
        let loader = common::member(&mut admin, "loader", &endpoint).await?;
        let seconds = common::load(&loader, n, 2).await?;
        eprintln!(
            "bench: flagshare Submit-loaded {n} flags in {seconds:.1} s ({:.0}/s)",
            n as f64 / seconds
        );
        // Its files go before the next part: the kernel would otherwise still be writing
        // back their pages while the next load runs.
        drop(server);
        std::fs::remove_dir_all(&data)?;
        seconds
    };
    let during = if !runs("during") {
        None
    } else {
        let data = dir.path().join("during");
        let during = lookups_during_import(&bin, &data, &serve_args, n).await?;
        std::fs::remove_dir_all(&data)?;
        eprintln!(
            "bench: during an import of {n} ({:.1} s): single-digest p50 / p99 {:.0} / {:.0} µs; QueryStream during / idle {:.0} / {:.0} ({:.2}); write stalls {:?} µs",
            during.import_seconds,
            percentile(&during.latencies, 0.50).as_secs_f64() * 1e6,
            percentile(&during.latencies, 0.99).as_secs_f64() * 1e6,
            during.stream_during,
            during.stream_idle,
            during.stream_during / during.stream_idle,
            during.stall_micros
        );
        Some(during)
    };
    if !runs("import") {
        return Ok(());
    }

    // flagshare, loaded through Import; the lookups run against this one.
    let data = dir.path().join("data");
    let (server, endpoint, metrics) = common::start_flagshare_with(&bin, &data, &serve_args, &[])?;
    let mut admin = common::admin_client(&data, &endpoint).await?;
    let loader = common::member(&mut admin, "loader", &endpoint).await?;
    let (flagshare_load, imported) = common::import(&loader, n).await?;
    let flagshare_rss = rss_mib(server.0.id());
    eprintln!(
        "bench: flagshare imported {n} flags in {flagshare_load:.1} s ({:.0}/s) in {} blocks, {flagshare_rss:.0} MiB resident",
        n as f64 / flagshare_load,
        imported.n_blocks
    );
    // The import's own checks: every flag counted once, the server agrees, the audit
    // chain verifies (the lookups below check that every loaded digest is found).
    assert_eq!(
        (imported.n_created, imported.n_updated),
        (n, 0),
        "every imported flag is new"
    );
    assert_eq!(imported.sequence, n, "one change-log upsert per flag");
    let stats = admin
        .get_stats(flagshare::pb::GetStatsRequest::default())
        .await?
        .into_inner();
    assert_eq!(stats.n_active_flags, n, "the server holds every imported flag");
    let verified = admin
        .verify_audit(flagshare::pb::VerifyAuditRequest::default())
        .await?
        .into_inner();
    assert!(verified.ok, "the audit chain verifies after the import");
    // The lookups below measure a settled server, as Redis's do: RocksDB first finishes
    // compacting what the import left (an import defers most of it), timed as a row of
    // its own.
    let settle_seconds = match &metrics {
        Some(address) => common::wait_for_compactions(address, Duration::from_secs(120)).await?,
        None => 0.0,
    };
    eprintln!("bench: RocksDB finished compacting what the import left {settle_seconds:.1} s after it");
    let Some(during) = during else { return Ok(()) };

    let connections = common::member_connections(&mut admin, "reader", &endpoint, 4).await?;
    let mut flagshare_rates = std::collections::HashMap::new();
    for hit_percent in [0u64, 10] {
        for n_connections in [1usize, 4] {
            let clients = &connections[..n_connections];
            let (mut unary, mut stream) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                let work = batches(n, hit_percent, (round + 1) as u64);
                let (rate, matched) = common::unary_rate(clients, &work).await;
                assert!(hit_percent > 0 || matched == 0);
                unary.push(rate);
                let (rate, matched_stream) = common::stream_rate(clients, &work).await;
                assert_eq!(matched, matched_stream, "unary and streamed queries agree");
                stream.push(rate);
            }
            flagshare_rates.insert((hit_percent, n_connections, "unary"), median(unary));
            flagshare_rates.insert((hit_percent, n_connections, "stream"), median(stream));
        }
    }
    let latencies = common::single_digest_latencies(&connections[0], n, LATENCY_CALLS).await?;
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    let flagshare_rss_after = rss_mib(server.0.id());
    let flagshare_anon_after = anon_mib(server.0.id());
    let disk_bytes = admin
        .get_stats(flagshare::pb::GetStatsRequest::default())
        .await?
        .into_inner()
        .disk_bytes;
    drop(connections);
    drop(server);
    // As between flagshare's parts: Redis loads with no writeback of another's files.
    std::fs::remove_dir_all(&data)?;

    // Redis
    let port = free_port()?;
    let redis_server = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|err| {
                anyhow::anyhow!("starting redis-server (is it installed? bench/run.sh installs it): {err}")
            })?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut redis = loop {
        if let Ok(mut redis) = Redis::connect(port).await {
            redis.writer.write_all(&resp_command(&[b"PING"])).await?;
            if redis.reply().await.is_ok() {
                break redis;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let started = Instant::now();
    let mut pending = 0;
    let mut start = 0;
    while start < n {
        let end = (start + LOAD_BATCH).min(n);
        let digests: Vec<[u8; 32]> = (start..end).map(|i| digest_of(0, i)).collect();
        let mut parts: Vec<&[u8]> = vec![b"SADD", b"flagged"];
        parts.extend(digests.iter().map(|d| d.as_slice()));
        redis.writer.write_all(&resp_command(&parts)).await?;
        pending += 1;
        if pending == IN_FLIGHT {
            redis.reply().await?;
            pending -= 1;
        }
        start = end;
    }
    for _ in 0..pending {
        redis.reply().await?;
    }
    let redis_load = started.elapsed().as_secs_f64();
    let redis_rss = rss_mib(redis_server.0.id());
    let mut redis_rates = std::collections::HashMap::new();
    for hit_percent in [0u64, 10] {
        for n_connections in [1usize, 4] {
            let mut rates = Vec::new();
            for round in 0..ROUNDS {
                let work = batches(n, hit_percent, (round + 1) as u64);
                let (rate, _) = redis_lookups(port, n_connections, &work).await?;
                rates.push(rate);
            }
            redis_rates.insert((hit_percent, n_connections), median(rates));
        }
    }
    drop(redis_server);

    println!(
        "flagshare vs Redis: N = {n} digests; both servers on 127.0.0.1 of this machine, sharing its cores with the client"
    );
    println!();
    println!("| measure | flagshare | Redis | flagshare / Redis |");
    println!("|---|---|---|---|");
    println!(
        "| bulk load of N (flagshare: Submit, 10,000 per call, 2 in flight, fsync per call; Redis: SADD, 10,000 per command, pipelined) | {submit_load:.1} s ({:.0}/s) | {redis_load:.1} s ({:.0}/s) | {:.2} |",
        n as f64 / submit_load,
        n as f64 / redis_load,
        redis_load / submit_load
    );
    println!(
        "| bulk import of N (flagshare: one Import stream, messages of 10,000, blocks of 200,000; Redis as above) | {flagshare_load:.1} s ({:.0}/s) | {redis_load:.1} s ({:.0}/s) | {:.2} |",
        n as f64 / flagshare_load,
        n as f64 / redis_load,
        redis_load / flagshare_load
    );
    println!(
        "| after that import: RocksDB compacting what it left (lookups below start once it is done) | {settle_seconds:.1} s | | |"
    );
    for hit_percent in [0u64, 10] {
        for n_connections in [1usize, 4] {
            let redis_rate = redis_rates[&(hit_percent, n_connections)];
            for mode in ["unary", "stream"] {
                let rate = flagshare_rates[&(hit_percent, n_connections, mode)];
                let what = if mode == "unary" {
                    format!("Query, {IN_FLIGHT} in flight per connection")
                } else {
                    "QueryStream".to_owned()
                };
                rows.push((
                    format!(
                        "lookups/s, batches of {QUERY_BATCH}, {hit_percent}% hits, {n_connections} connection(s): flagshare {what} vs SMISMEMBER ({IN_FLIGHT} pipelined)"
                    ),
                    format!("{rate:.0}"),
                    format!("{redis_rate:.0}"),
                    format!("{:.2}", rate / redis_rate),
                ));
            }
        }
    }
    for (what, ours, theirs, ratio) in &rows {
        println!("| {what} | {ours} | {theirs} | {ratio} |");
    }
    println!(
        "| single-digest Query latency p50 / p99 ({LATENCY_CALLS} sequential calls) | {:.0} / {:.0} µs | | |",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    println!(
        "| while another member imports N (its import took {:.1} s): single-digest Query p50 / p99 ({} sequential calls) | {:.0} / {:.0} µs | | |",
        during.import_seconds,
        during.latencies.len(),
        percentile(&during.latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&during.latencies, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| while another member imports N: QueryStream lookups/s (0% hits, 1 connection), during / idle after it (compactions done) | {:.0} / {:.0} ({:.2}) | | |",
        during.stream_during,
        during.stream_idle,
        during.stream_during / during.stream_idle
    );
    println!(
        "| while another member imports N: RocksDB write stalls (rocksdb_statistics on for this server) | {} | | |",
        during
            .stall_micros
            .map_or("not reported".to_owned(), |micros| format!("{:.0} ms", micros / 1000.0))
    );
    println!(
        "| server resident memory after load (flagshare also after the lookups; of that, its own heap without mapped data files) | {flagshare_rss:.0} MiB ({flagshare_rss_after:.0} MiB; {flagshare_anon_after:.0} MiB) | {redis_rss:.0} MiB | {:.2} |",
        flagshare_rss / redis_rss
    );
    println!(
        "| flagshare's data on disk after the lookups (RocksDB's files) | {:.0} MiB, {:.0} bytes per flag | | |",
        disk_bytes as f64 / (1 << 20) as f64,
        disk_bytes as f64 / n as f64
    );
    println!();
    println!(
        "median of {ROUNDS} rounds of {} lookups each",
        BATCHES_PER_ROUND * QUERY_BATCH
    );
    Ok(())
}

/// What lookups meet while a member bulk-imports.
struct DuringImport {
    import_seconds: f64,
    /// Sorted.
    latencies: Vec<Duration>,
    stream_during: f64,
    stream_idle: f64,
    stall_micros: Option<f64>,
}

/// A server of its own (RocksDB statistics on, for the stall count): one member imports N
/// flags while another runs single-digest `Query` calls one after another and, beside
/// them, `QueryStream` rounds of misses; then the same rounds once the import is done.
async fn lookups_during_import(
    bin: &str,
    data: &std::path::Path,
    serve_args: &[String],
    n: u64,
) -> anyhow::Result<DuringImport> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_server, endpoint, metrics) = common::start_flagshare_with(
        bin,
        data,
        serve_args,
        &[("rocksdb_statistics = false", "rocksdb_statistics = true")],
    )?;
    let mut admin = common::admin_client(data, &endpoint).await?;
    let loader = common::member(&mut admin, "loader", &endpoint).await?;
    // The reader is another member: its own thread and runtime (and connections made
    // there), as another platform's process would be, so its calls do not queue behind this
    // client's import tasks; it still shares the machine's two cores with everything.
    let reader_bundle = enroll(&mut admin, "reader", Role::Member, &endpoint, "localhost").await?;
    let streamer_bundle = enroll(&mut admin, "streamer", Role::Member, &endpoint, "localhost").await?;
    let importing = Arc::new(AtomicBool::new(true));
    // Set once RocksDB has compacted what the import left: the reader then measures idle.
    let settled = Arc::new(AtomicBool::new(false));
    // Bounded by the import, and by count and time besides.
    let deadline = Instant::now() + Duration::from_secs(1_800);
    // One reader alternates: 200 single-digest calls one after another, then a QueryStream
    // round, so neither measurement competes with the other in this client.
    let round = move |seed: u64| common::query_digests(n, 0, 100, QUERY_BATCH, seed).0;
    let probing = {
        let (importing, settled) = (importing.clone(), settled.clone());
        let endpoint = endpoint.clone();
        std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, Vec<f64>, Vec<f64>)> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let mut reader = common::connect(&reader_bundle, &endpoint).await?;
                let streamer = [common::connect(&streamer_bundle, &endpoint).await?];
                let (mut latencies, mut rates) = (Vec::new(), Vec::new());
                let mut i = 0u64;
                while importing.load(Ordering::SeqCst) && latencies.len() < 1_000_000 && Instant::now() < deadline {
                    for _ in 0..200 {
                        let digest = common::digest_of(if i.is_multiple_of(10) { 0 } else { 2 }, i);
                        let started = Instant::now();
                        reader
                            .query(flagshare::pb::QueryRequest {
                                digests: digest.to_vec().into(),
                            })
                            .await?;
                        latencies.push(started.elapsed());
                        i += 1;
                    }
                    rates.push(common::stream_rate(&streamer, &round(i)).await.0);
                }
                latencies.sort();
                let waited = Instant::now() + Duration::from_secs(120);
                while !settled.load(Ordering::SeqCst) && Instant::now() < waited {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut idle = Vec::new();
                for seed in 0..5 {
                    idle.push(common::stream_rate(&streamer, &round(1_000 + seed)).await.0);
                }
                Ok((latencies, rates, idle))
            })
        })
    };
    let imported = common::import(&loader, n).await;
    importing.store(false, Ordering::SeqCst);
    let (import_seconds, last) = imported?;
    assert_eq!(last.n_created, n, "every imported flag is new");
    // Idle: once RocksDB has compacted what the import left (bounded to a minute).
    if let Some(address) = &metrics {
        common::wait_for_compactions(address, Duration::from_secs(60)).await?;
    }
    settled.store(true, Ordering::SeqCst);
    let (latencies, during, idle) = tokio::task::spawn_blocking(move || probing.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    anyhow::ensure!(
        !latencies.is_empty() && !during.is_empty(),
        "no lookups ran during the import"
    );
    let stall_micros = match metrics {
        Some(address) => common::scrape_value(&address, "flagshare_rocksdb_stall_microseconds_total")?,
        None => None,
    };
    eprintln!(
        "bench: during an import of {n}: {} single-digest queries, {} QueryStream rounds",
        latencies.len(),
        during.len()
    );
    Ok(DuringImport {
        import_seconds,
        latencies,
        stream_during: median(during),
        stream_idle: median(idle),
        stall_micros,
    })
}
