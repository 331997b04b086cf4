//! Two builds of flagshare side by side, for a change that must not cost throughput:
//! `FLAGSHARE_AB_BASE` names the baseline `flagshare` binary (with `FLAGSHARE_AB_BASE_ARGS`
//! as its extra `serve` arguments, empty for a build from before the metrics endpoint);
//! the candidate is this build's (or `FLAGSHARE_BENCH_BIN`). Both servers run at once, each
//! loaded with the same N flags (default 2,000,000; `FLAGSHARE_BENCH_N`); then every lookup
//! row alternates rounds between them (base, candidate, base, ...), so a drift of the
//! machine's speed falls on both alike. Prints each row's medians and candidate / base.
//! `FLAGSHARE_AB_HITS=0` or `10` runs only the rows with that share of hits.
//!
//!   FLAGSHARE_AB_BASE=/path/to/old/flagshare CARGO_PROFILE_DEV_OPT_LEVEL=3 \
//!     scripts/cargo bench --profile dev --bench ab
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic fails the benchmark

mod common;

use common::{load, median, start_flagshare};

/// Rounds per row and server; each round is `BATCHES` batches of 1,000 digests.
const ROUNDS: usize = 11;
const BATCHES: usize = 400;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = common::bench_n(2_000_000);
    let base_bin = std::env::var("FLAGSHARE_AB_BASE")
        .map_err(|_| anyhow::anyhow!("FLAGSHARE_AB_BASE names the baseline flagshare binary"))?;
    let builds = [
        ("base", base_bin, common::serve_args("FLAGSHARE_AB_BASE_ARGS")),
        (
            "candidate",
            common::flagshare_bin(),
            common::serve_args("FLAGSHARE_BENCH_SERVE_ARGS"),
        ),
    ];
    let dir = tempfile::tempdir()?;
    let mut servers = Vec::new();
    let mut load_seconds = Vec::new();
    let mut connections = Vec::new();
    for (name, bin, args) in &builds {
        let data = dir.path().join(name);
        let (server, endpoint) = start_flagshare(bin, &data, args)?;
        let mut admin = common::admin_client(&data, &endpoint).await?;
        let loader = common::member(&mut admin, "loader", &endpoint).await?;
        let seconds = load(&loader, n, 2).await?;
        eprintln!("ab: {name} loaded {n} flags in {seconds:.1} s");
        load_seconds.push(seconds);
        connections.push(common::member_connections(&mut admin, "reader", &endpoint, 4).await?);
        servers.push(server);
    }

    println!("flagshare A/B: N = {n}; base {}", builds[0].1);
    println!();
    println!("| row | base | candidate | candidate / base |");
    println!("|---|---|---|---|");
    println!(
        "| bulk load (Submit, 10,000 per call, 2 in flight), s, one run each | {:.1} | {:.1} | {:.2} |",
        load_seconds[0],
        load_seconds[1],
        load_seconds[0] / load_seconds[1]
    );
    // `FLAGSHARE_AB_HITS=10` runs only the rows with that share of hits (for a profile).
    let only_hits: Option<u64> = std::env::var("FLAGSHARE_AB_HITS").ok().and_then(|v| v.parse().ok());
    for hit_percent in [0u64, 10]
        .into_iter()
        .filter(|h| only_hits.is_none_or(|only| only == *h))
    {
        for n_connections in [1usize, 4] {
            for streamed in [false, true] {
                let mut rates = [Vec::new(), Vec::new()];
                let mut matched = [0, 0];
                for round in 0..ROUNDS {
                    let (work, _) =
                        common::query_digests(n, hit_percent, BATCHES, common::QUERY_BATCH, (round + 1) as u64);
                    // Who goes first alternates too.
                    for which in [round % 2, 1 - round % 2] {
                        let clients = &connections[which][..n_connections];
                        let (rate, found) = if streamed {
                            common::stream_rate(clients, &work).await
                        } else {
                            common::unary_rate(clients, &work).await
                        };
                        rates[which].push(rate);
                        matched[which] += found;
                    }
                }
                assert_eq!(matched[0], matched[1], "both builds find the same flags");
                let [base, candidate] = rates.map(median);
                println!(
                    "| {hit_percent}% hits, {n_connections} connection(s), {}, digests/s | {base:.0} | {candidate:.0} | {:.3} |",
                    if streamed {
                        "QueryStream"
                    } else {
                        "Query, 8 in flight per connection"
                    },
                    candidate / base
                );
            }
        }
    }
    println!();
    println!(
        "median of {ROUNDS} alternating rounds of {} lookups each",
        BATCHES * common::QUERY_BATCH
    );
    drop(servers);
    Ok(())
}
