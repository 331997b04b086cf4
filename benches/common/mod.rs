//! What the benchmarks share beside the test harness (`tests/it/support`, which starts the
//! servers): the digests they load and ask for, bulk loading through `Submit`, unary
//! `Query` lanes, and single-digest latency. Each benchmark uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flagshare::client::{Bundle, enroll};
use flagshare::digest::Digest;
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

/// Flags per `Submit` when loading.
pub const LOAD_BATCH: u64 = 10_000;

/// N from `FLAGSHARE_BENCH_N`, else `default`.
pub fn bench_n(default: u64) -> u64 {
    std::env::var("FLAGSHARE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Digest number `index` of a `space`: space 0 is what gets loaded; others are never loaded.
pub fn digest_of(space: u8, index: u64) -> Digest {
    let mut input = [0u8; 9];
    input[0] = space;
    input[1..].copy_from_slice(&index.to_be_bytes());
    *blake3::hash(&input).as_bytes()
}

/// `n_batches` batches of `batch_len` digests to ask for, and how many of them were loaded:
/// `hit_percent` were, spread over the whole loaded range; the rest never were.
pub fn query_digests(
    n_loaded: u64,
    hit_percent: u64,
    n_batches: usize,
    batch_len: usize,
    seed: u64,
) -> (Vec<Vec<Digest>>, usize) {
    let mut n_hits = 0;
    let batches = (0..n_batches as u64)
        .map(|batch| {
            (0..batch_len as u64)
                .map(|item| {
                    let n = seed * 1_000_000_000 + batch * batch_len as u64 + item;
                    if n % 100 < hit_percent {
                        n_hits += 1;
                        let spread =
                            u64::from_le_bytes(blake3::hash(&n.to_le_bytes()).as_bytes()[..8].try_into().unwrap());
                        digest_of(0, spread % n_loaded)
                    } else {
                        digest_of(1, n)
                    }
                })
                .collect()
        })
        .collect();
    (batches, n_hits)
}

/// Packs each batch as `Query` takes it (N x 32 bytes).
pub fn packed(batches: &[Vec<Digest>]) -> Vec<bytes::Bytes> {
    batches.iter().map(|batch| bytes::Bytes::from(batch.concat())).collect()
}

/// Sends `batches` as unary `Query` calls, `lanes` at a time spread over `clients`; the
/// number of matches that came back.
pub async fn unary_queries(clients: &[FlagsClient<Channel>], batches: Vec<bytes::Bytes>, lanes: usize) -> usize {
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let mut client = clients[lane % clients.len()].clone();
        let mine: Vec<bytes::Bytes> = batches.iter().skip(lane).step_by(lanes).cloned().collect();
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
    let mut matched = 0;
    for task in tasks {
        matched += task.await.unwrap();
    }
    matched
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 * fraction) as usize).min(sorted.len() - 1)]
}

/// The admin client of the data folder `data` (as `init` made it), for `endpoint`.
pub async fn admin_client(data: &std::path::Path, endpoint: &str) -> anyhow::Result<AdminClient<Channel>> {
    let bundle = Bundle::load(&data.join("clients").join("admin"))?;
    Ok(AdminClient::new(bundle.connect(Some(endpoint)).await?))
}

/// A new member principal and a `Flags` client for it (one connection).
pub async fn member(
    admin: &mut AdminClient<Channel>,
    name: &str,
    endpoint: &str,
) -> anyhow::Result<FlagsClient<Channel>> {
    let bundle = enroll(admin, name, Role::Member, endpoint, "localhost").await?;
    connect(&bundle, endpoint).await
}

/// A new member principal `name` and `n` connections for it, for lookups spread over them.
pub async fn member_connections(
    admin: &mut AdminClient<Channel>,
    name: &str,
    endpoint: &str,
    n: usize,
) -> anyhow::Result<Vec<FlagsClient<Channel>>> {
    let bundle = enroll(admin, name, Role::Member, endpoint, "localhost").await?;
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        connections.push(connect(&bundle, endpoint).await?);
    }
    Ok(connections)
}

/// A new connection with `bundle`.
pub async fn connect(bundle: &Bundle, endpoint: &str) -> anyhow::Result<FlagsClient<Channel>> {
    Ok(FlagsClient::new(bundle.connect(Some(endpoint)).await?).max_decoding_message_size(64 << 20))
}

/// Loads digests 0..n of space 0 as flags, `in_flight` calls of `LOAD_BATCH` at a time;
/// returns the seconds it took.
pub async fn load(client: &FlagsClient<Channel>, n: u64, in_flight: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut lanes = Vec::new();
    for lane in 0..in_flight {
        let mut client = client.clone();
        lanes.push(tokio::spawn(async move {
            let mut start = lane * LOAD_BATCH;
            while start < n {
                let end = (start + LOAD_BATCH).min(n);
                let flags = (start..end)
                    .map(|i| pb::Flag {
                        digest: digest_of(0, i).to_vec(),
                        kind: pb::IdentifierKind::Email as i32,
                        category: pb::Category::Grooming as i32,
                        confidence: 80,
                        ..Default::default()
                    })
                    .collect();
                client.submit(pb::SubmitRequest { flags, key_id: 1 }).await?;
                start += in_flight * LOAD_BATCH;
            }
            anyhow::Ok(())
        }));
    }
    for lane in lanes {
        lane.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Imports digests 0..n of space 0 as flags over one `Import` stream, messages of
/// `LOAD_BATCH`; returns the seconds it took and the import's last answer.
pub async fn import(client: &FlagsClient<Channel>, n: u64) -> anyhow::Result<(f64, pb::ImportProgress)> {
    let started = Instant::now();
    let messages = (0..n).step_by(LOAD_BATCH as usize).map(move |start| pb::ImportRequest {
        flags: (start..(start + LOAD_BATCH).min(n))
            .map(|i| pb::Flag {
                digest: digest_of(0, i).to_vec(),
                kind: pb::IdentifierKind::Email as i32,
                category: pb::Category::Grooming as i32,
                confidence: 80,
                ..Default::default()
            })
            .collect(),
        key_id: 1,
    });
    let mut answers = client.clone().import(tokio_stream::iter(messages)).await?.into_inner();
    let mut last = pb::ImportProgress::default();
    while let Some(answer) = answers.message().await? {
        last = answer;
    }
    anyhow::ensure!(last.done, "the import ended without its last answer");
    Ok((started.elapsed().as_secs_f64(), last))
}

/// `calls` sequential single-digest queries (every tenth one loaded), sorted durations.
pub async fn single_digest_latencies(
    client: &FlagsClient<Channel>,
    n_loaded: u64,
    calls: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = client.clone();
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..calls as u64 {
        let digest = if i % 10 == 0 {
            digest_of(0, i * 7 % n_loaded)
        } else {
            digest_of(2, i)
        };
        let started = Instant::now();
        client
            .query(pb::QueryRequest {
                digests: digest.to_vec().into(),
            })
            .await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

// ---- a flagshare server process, and lookups against it ----

/// Query batch size of the lookup rows.
pub const QUERY_BATCH: usize = 1_000;
/// Unary calls in flight per connection.
pub const IN_FLIGHT: usize = 8;

/// Resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// Anonymous resident memory of process `pid` (its heap, without mapped files), in MiB.
pub fn anon_mib(pid: u32) -> f64 {
    status_mib(pid, "RssAnon:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A child process, killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This build's `flagshare` binary, or `FLAGSHARE_BENCH_BIN`.
pub fn flagshare_bin() -> String {
    std::env::var("FLAGSHARE_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_flagshare").to_owned())
}

/// Extra `serve` arguments from `variable`: the metrics endpoint on, at a free port, unless
/// the variable says otherwise (empty for a build from before the metrics endpoint).
pub fn serve_args(variable: &str) -> Vec<String> {
    match std::env::var(variable) {
        Ok(args) => args.split_whitespace().map(str::to_owned).collect(),
        Err(_) => vec!["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()],
    }
}

/// `bin init` and `bin serve` on a fresh data folder at a free port, with the flood
/// quarantine off (one member bulk-loads N flags); the process and its endpoint.
pub fn start_flagshare(bin: &str, data: &Path, extra_args: &[String]) -> anyhow::Result<(Killed, String)> {
    start_flagshare_with(bin, data, extra_args, &[]).map(|(server, endpoint, _)| (server, endpoint))
}

/// As `start_flagshare`, with `settings` (text, replacement) applied to flagshare.toml
/// after `init`; also the metrics address when the server printed one.
pub fn start_flagshare_with(
    bin: &str,
    data: &Path,
    extra_args: &[String],
    settings: &[(&str, &str)],
) -> anyhow::Result<(Killed, String, Option<String>)> {
    let init = Command::new(bin).args(["init", "--data"]).arg(data).output()?;
    anyhow::ensure!(init.status.success(), "init: {}", String::from_utf8_lossy(&init.stderr));
    let file = data.join("flagshare.toml");
    let mut text = std::fs::read_to_string(&file)?.replace(
        "quarantine_new_flags_per_hour = 100000",
        "quarantine_new_flags_per_hour = 0",
    );
    for (from, to) in settings {
        anyhow::ensure!(text.contains(from), "flagshare.toml has no '{from}'");
        text = text.replace(from, to);
    }
    std::fs::write(&file, text)?;
    let mut child = Command::new(bin)
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().ok_or_else(|| anyhow::anyhow!("the server exited"))??;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_owned();
        }
    };
    // The metrics address follows, when the endpoint is on.
    let metrics = if extra_args.iter().any(|arg| arg == "--metrics-listen") {
        loop {
            let line = lines.next().ok_or_else(|| anyhow::anyhow!("the server exited"))??;
            if let Some(rest) = line.split("metrics on http://").nth(1) {
                break rest.split('/').next().map(str::to_owned);
            }
        }
    } else {
        None
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((Killed(child), format!("https://{address}"), metrics))
}

/// Waits (at most `limit`) until the server at metrics `address` has no compaction
/// pending or running and has folded its presence filters into one; the seconds it
/// waited.
pub async fn wait_for_compactions(address: &str, limit: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let pending = scrape_value(address, "flagshare_rocksdb_pending_compaction_bytes")?.unwrap_or(0.0);
        let running = scrape_value(address, "flagshare_rocksdb_running_compactions")?.unwrap_or(0.0);
        // A build from before the metric has none to wait for.
        let filters = scrape_value(address, "flagshare_presence_filters")?.unwrap_or(1.0);
        if pending == 0.0 && running == 0.0 && filters <= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The value of the first sample of `metric` in a scrape of `address` (plain HTTP).
pub fn scrape_value(address: &str, metric: &str) -> anyhow::Result<Option<f64>> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.split([' ', '{']).next() == Some(metric))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok()))
}

/// `batches` as unary `Query` calls, `IN_FLIGHT` per connection: (digests/s, matches).
pub async fn unary_rate(clients: &[FlagsClient<Channel>], batches: &[Vec<Digest>]) -> (f64, usize) {
    let started = Instant::now();
    let matched = unary_queries(clients, packed(batches), clients.len() * IN_FLIGHT).await;
    (
        (batches.len() * QUERY_BATCH) as f64 / started.elapsed().as_secs_f64(),
        matched,
    )
}

/// `batches` over one `QueryStream` per connection: (digests/s, matches).
pub async fn stream_rate(clients: &[FlagsClient<Channel>], batches: &[Vec<Digest>]) -> (f64, usize) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (lane, client) in clients.iter().enumerate() {
        let mut client = client.clone();
        let mine: Vec<pb::QueryBatch> = batches
            .iter()
            .enumerate()
            .skip(lane)
            .step_by(clients.len())
            .map(|(id, batch)| pb::QueryBatch {
                batch_id: id as u64,
                digests: batch.concat().into(),
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut answers = client
                .query_stream(tokio_stream::iter(mine))
                .await
                .unwrap()
                .into_inner();
            let mut matched = 0;
            while let Some(answer) = answers.next().await {
                let answer = answer.unwrap();
                assert_eq!(answer.error_code, 0, "{}", answer.error_message);
                matched += answer.matches.len();
            }
            matched
        }));
    }
    let mut matched = 0;
    for task in tasks {
        matched += task.await.unwrap();
    }
    (
        (batches.len() * QUERY_BATCH) as f64 / started.elapsed().as_secs_f64(),
        matched,
    )
}

/// The server's allocator (see `src/main.rs`), so in-process numbers match the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
