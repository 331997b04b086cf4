//! Member-side commands. Identifiers are normalised and hashed here with the consortium
//! key; only digests are sent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;

use crate::digest::{ConsortiumKey, Digest, Hasher, Kind, NormalizeOptions};
use crate::model::{Category, RetractReason};
use crate::pb;
use crate::wire::{
    category_of, category_to_pb, distribution_to_pb, kind_of, kind_to_pb, retract_reason_to_pb, timestamp_from_ms,
};

use super::connect::{ConnectArgs, status_error};

use super::input::{self, InputRecord, Rejected};

#[derive(Args)]
pub struct KeygenArgs {
    /// File to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Key id (epoch); increase it when rotating.
    #[arg(long, default_value_t = 1)]
    key_id: u32,
}

#[derive(Args, Clone)]
pub struct HashingArgs {
    /// Consortium key file.
    #[arg(long, env = "FLAGSHARE_KEY")]
    key: PathBuf,
    /// Identifier kind (email, phone, username, device_id, ip_address, other); a file's
    /// `kind` column overrides it.
    #[arg(long)]
    kind: Option<Kind>,
    /// Region (ISO 3166, e.g. GB) for phone numbers written without +country code.
    #[arg(long)]
    region: Option<String>,
}

#[derive(Args)]
pub struct HashArgs {
    #[command(flatten)]
    hashing: HashingArgs,
    /// Identifiers to hash.
    #[arg(required = true)]
    identifiers: Vec<String>,
}

#[derive(Args, Clone)]
pub struct InputArgs {
    /// A .csv (header row with an `identifier` column) or .jsonl file of identifiers.
    #[arg(long, conflicts_with = "identifiers")]
    file: Option<PathBuf>,
    /// Identifiers given on the command line.
    identifiers: Vec<String>,
    /// Items per call (at most 10,000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    hashing: HashingArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Category (a file's `category` column overrides it).
    #[arg(long)]
    category: Option<Category>,
    /// Confidence 0-100 (a file's `confidence` column overrides it).
    #[arg(long, default_value_t = 80)]
    confidence: u32,
    /// Expire the flags after this long (e.g. 90d); default: the operator's retention.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<Duration>,
    /// Member-side reference (case number) for every flag, at most 128 bytes.
    #[arg(long)]
    reference: Option<String>,
    /// `local` (this operator's members only) or `federated` (also federation peers);
    /// default: the operator's.
    #[arg(long)]
    distribution: Option<crate::model::Distribution>,
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    hashing: HashingArgs,
    #[command(flatten)]
    input: InputArgs,
    /// One JSON object per match instead of a table.
    #[arg(long)]
    json: bool,
    /// Answer from a local copy kept by `flagshare mirror DIR` instead of the server.
    #[arg(long)]
    mirror: Option<PathBuf>,
}

#[derive(Args)]
pub struct RetractArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    hashing: HashingArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Only this category (default: every category the caller flagged).
    #[arg(long)]
    category: Option<Category>,
    #[arg(long)]
    reason: RetractReason,
}

#[derive(Args)]
pub struct DisputeArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    hashing: HashingArgs,
    /// The member whose flags are disputed, as named in a match.
    #[arg(long)]
    member: String,
    /// Why, for the operator's audit log (at most 128 bytes; no personal data).
    #[arg(long, default_value = "")]
    note: String,
    /// The identifier whose flags are disputed.
    identifier: String,
}

pub async fn dispute(args: &DisputeArgs) -> anyhow::Result<()> {
    let key = ConsortiumKey::load(&args.hashing.key)?;
    let kind = args.hashing.kind.context("--kind is required")?;
    let (_normalized, digest) = Hasher::new(&key)
        .digest(kind, &args.identifier, &normalize_options(&args.hashing)?)
        .map_err(|err| anyhow::anyhow!("'{}': {err}", args.identifier))?;
    let mut client = args.connect.flags_client().await?;
    let response = client
        .dispute(pb::DisputeRequest {
            digest: digest.to_vec(),
            member: args.member.clone(),
            note: args.note.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "disputed {} flag(s) of {} on {}",
        response.n_flags,
        args.member,
        hex::encode(digest)
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct HeldArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists the caller's flags held by the flood quarantine, every page.
pub async fn held(args: &HeldArgs) -> anyhow::Result<()> {
    let mut client = args.connect.flags_client().await?;
    let mut page_after = Vec::new();
    let mut n_held = 0;
    loop {
        let page = client
            .list_held(pb::ListHeldRequest { page_after })
            .await
            .map_err(status_error)?
            .into_inner();
        n_held += page.flags.len();
        print_held_flags(&page.flags, args.json, n_held == page.flags.len());
        if page.next_page_after.is_empty() {
            break;
        }
        page_after = page.next_page_after;
    }
    if !args.json {
        println!("{n_held} flag(s) held: they match for no one until the operator releases them");
    }
    Ok(())
}

/// Prints held flags as a table (with its header when `first_page`) or JSON lines.
pub(super) fn print_held_flags(flags: &[pb::HeldFlag], json: bool, first_page: bool) {
    if first_page && !json {
        println!(
            "{:<64} {:<9} {:<20} {:>4} {:<20} EXPIRES",
            "DIGEST", "KIND", "CATEGORY", "CONF", "HELD SINCE"
        );
    }
    for flag in flags {
        let kind = kind_of(flag.kind).map_or("unknown", Kind::as_str);
        let category = category_of(flag.category).map_or("unknown", Category::as_str);
        let held_since = flag.held_since.as_ref().map(super::timestamp_text).unwrap_or_default();
        let expires = flag.expires_at.as_ref().map(super::timestamp_text).unwrap_or_default();
        if json {
            let line = serde_json::json!({
                "digest": hex::encode(&flag.digest), "kind": kind, "category": category,
                "confidence": flag.confidence, "held_since": held_since, "expires_at": expires,
            });
            println!("{line}");
        } else {
            println!(
                "{:<64} {kind:<9} {category:<20} {:>4} {held_since:<20} {expires}",
                hex::encode(&flag.digest),
                flag.confidence
            );
        }
    }
}

pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let key = ConsortiumKey::generate(args.key_id)?;
    key.save_new(&args.out)?;
    println!(
        "wrote consortium key {} (key id {}), mode 0600",
        args.out.display(),
        args.key_id
    );
    Ok(())
}

/// A record hashed and ready to send, with where it came from.
struct Hashed {
    record: InputRecord,
    kind: Kind,
    digest: Digest,
}

fn normalize_options(hashing: &HashingArgs) -> anyhow::Result<NormalizeOptions> {
    let default_phone_region = match &hashing.region {
        Some(region) => Some(
            region
                .to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
                .map_err(|_| anyhow::anyhow!("--region: '{region}' is not an ISO 3166 region code"))?,
        ),
        None => None,
    };
    Ok(NormalizeOptions { default_phone_region })
}

/// The consortium key and the normalisation settings, for hashing record by record.
struct Hashing {
    hasher: Hasher,
    key_id: u32,
    options: NormalizeOptions,
    default_kind: Option<Kind>,
}

impl Hashing {
    fn new(args: &HashingArgs) -> anyhow::Result<Hashing> {
        let key = ConsortiumKey::load(&args.key)?;
        Ok(Hashing {
            hasher: Hasher::new(&key),
            key_id: key.key_id(),
            options: normalize_options(args)?,
            default_kind: args.kind,
        })
    }

    /// Normalises and hashes one record; a failure is a rejected line.
    fn hash(&self, record: InputRecord) -> Result<Hashed, Rejected> {
        let kind = match (&record.kind, self.default_kind) {
            (Some(text), _) => text.parse::<Kind>(),
            (None, Some(kind)) => Ok(kind),
            (None, None) => Err("no kind: give --kind or a kind column".to_owned()),
        };
        let kind = kind.map_err(|reason| Rejected {
            line: record.line,
            reason,
        })?;
        match self.hasher.digest(kind, &record.identifier, &self.options) {
            Ok((_normalized, digest)) => Ok(Hashed { record, kind, digest }),
            Err(err) => Err(Rejected {
                line: record.line,
                reason: err.to_string(),
            }),
        }
    }
}

/// Normalises and hashes every record; failures become rejected lines.
fn hash_records(
    hashing: &HashingArgs,
    records: Vec<InputRecord>,
    rejected: &mut Vec<Rejected>,
) -> anyhow::Result<(u32, Vec<Hashed>)> {
    let hashing = Hashing::new(hashing)?;
    let mut hashed = Vec::with_capacity(records.len());
    for record in records {
        match hashing.hash(record) {
            Ok(item) => hashed.push(item),
            Err(line) => rejected.push(line),
        }
    }
    Ok((hashing.key_id, hashed))
}

fn read_input(input_args: &InputArgs) -> anyhow::Result<(Vec<InputRecord>, Vec<Rejected>)> {
    match &input_args.file {
        Some(path) => input::from_file(path),
        None if input_args.identifiers.is_empty() => anyhow::bail!("give identifiers or --file"),
        None => Ok((input::from_args(&input_args.identifiers), Vec::new())),
    }
}

fn report_rejected(rejected: &mut [Rejected]) -> ExitCode {
    if rejected.is_empty() {
        return ExitCode::SUCCESS;
    }
    rejected.sort_by_key(|rejected| rejected.line);
    eprintln!("{} line(s) rejected:", rejected.len());
    for item in rejected.iter() {
        eprintln!("  line {}: {}", item.line, item.reason);
    }
    ExitCode::FAILURE
}

fn parse_time(field: &str, text: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|err| format!("{field}: '{text}' is not an RFC 3339 time ({err})"))?;
    Ok(time
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0))
}

pub fn hash(args: &HashArgs) -> anyhow::Result<ExitCode> {
    let key = ConsortiumKey::load(&args.hashing.key)?;
    let hasher = Hasher::new(&key);
    let options = normalize_options(&args.hashing)?;
    let kind = args.hashing.kind.context("--kind is required")?;
    let mut code = ExitCode::SUCCESS;
    for identifier in &args.identifiers {
        match hasher.digest(kind, identifier, &options) {
            Ok((normalized, digest)) => println!("{normalized}\t{}", hex::encode(digest)),
            Err(err) => {
                eprintln!("'{identifier}': {err}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// Streams the input: reads, hashes and sends one batch at a time, so memory stays flat
/// for files of millions of lines. Rejected lines are reported at the end.
pub async fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let hashing = Hashing::new(&args.hashing)?;
    let (records, total): (Box<dyn Iterator<Item = input::Item>>, Option<u64>) = match &args.input.file {
        Some(path) => {
            let total = if Progress::wanted() {
                Some(input::count_records(path)?)
            } else {
                None
            };
            (input::stream_file(path)?, total)
        }
        None if args.input.identifiers.is_empty() => anyhow::bail!("give identifiers or --file"),
        None => (
            Box::new(input::from_args(&args.input.identifiers).into_iter().map(Ok)),
            None,
        ),
    };
    let mut client = args.connect.flags_client().await?;
    let mut input = Batches {
        records,
        hashing,
        args,
        now_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64,
        batch_size: args.input.batch_size as usize,
        progress: Progress::new(total),
        rejected: Vec::new(),
        n_lines: 0,
    };
    let key_id = input.hashing.key_id;
    if args.input.file.is_some() {
        // A file goes over one Import stream: committed in large blocks, each whole or not
        // at all, its rows reaching the store as sorted files.
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ImportRequest>(4);
        let mut answers = client
            .import(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .map_err(status_error)?
            .into_inner();
        let reader = tokio::spawn(async move {
            let mut last = pb::ImportProgress::default();
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => last = answer,
                    Ok(None) => return (last, None),
                    Err(status) => return (last, Some(status)),
                }
            }
        });
        while let Some(flags) = input.next_batch() {
            // Refused: the server ended the import; its status says why.
            if sender.send(pb::ImportRequest { flags, key_id }).await.is_err() {
                break;
            }
        }
        drop(sender);
        let (last, failed) = reader.await?;
        input.progress.finish();
        if let Some(status) = failed {
            anyhow::bail!(
                "{} ({} block(s) of the import were committed: {} new, {} updated; re-running the same file is safe: imported flags are updated, not duplicated)",
                status_error(status),
                last.n_blocks,
                last.n_created,
                last.n_updated
            );
        }
        anyhow::ensure!(
            last.done,
            "the server ended the import without confirming it; re-run the same file"
        );
        let n_imported = last.n_created + last.n_updated + last.n_quarantined;
        println!(
            "imported {n_imported} flag(s) in {} block(s): {} new, {} updated",
            last.n_blocks, last.n_created, last.n_updated
        );
        print_quarantined(last.n_quarantined);
        return Ok(report_rejected(&mut input.rejected));
    }
    let (mut n_sent, mut n_created, mut n_updated, mut n_quarantined) = (0u64, 0u64, 0u64, 0u64);
    while let Some(flags) = input.next_batch() {
        let n = flags.len() as u64;
        let response = client
            .submit(pb::SubmitRequest { flags, key_id })
            .await
            .map_err(|status| {
                input.progress.finish();
                anyhow::anyhow!(
                    "{} (after {n_sent} flag(s) were accepted; re-running the same file is safe: resubmitted flags are updated, not duplicated)",
                    status_error(status)
                )
            })?
            .into_inner();
        n_sent += n;
        n_created += u64::from(response.n_created);
        n_updated += u64::from(response.n_updated);
        n_quarantined += u64::from(response.n_quarantined);
    }
    input.progress.finish();
    println!("submitted {n_sent} flag(s): {n_created} new, {n_updated} updated");
    print_quarantined(n_quarantined);
    Ok(report_rejected(&mut input.rejected))
}

/// The input of `submit`, read, hashed and checked a batch at a time; lines that fail are
/// kept aside with their line numbers.
struct Batches<'a> {
    records: Box<dyn Iterator<Item = input::Item>>,
    hashing: Hashing,
    args: &'a SubmitArgs,
    now_ms: i64,
    batch_size: usize,
    progress: Progress,
    rejected: Vec<Rejected>,
    n_lines: u64,
}

impl Batches<'_> {
    /// The next batch of up to `batch_size` flags; `None` once the input is done.
    fn next_batch(&mut self) -> Option<Vec<pb::Flag>> {
        let mut batch = Vec::with_capacity(self.batch_size);
        while batch.len() < self.batch_size {
            let Some(item) = self.records.next() else { break };
            self.n_lines += 1;
            let flag = item.and_then(|record| self.hashing.hash(record)).and_then(|hashed| {
                flag_from_record(self.args, &hashed, self.now_ms).map_err(|reason| Rejected {
                    line: hashed.record.line,
                    reason,
                })
            });
            match flag {
                Ok(flag) => batch.push(flag),
                Err(line) => self.rejected.push(line),
            }
            self.progress.update(self.n_lines);
        }
        (!batch.is_empty()).then_some(batch)
    }
}

fn print_quarantined(n_quarantined: u64) {
    if n_quarantined > 0 {
        println!(
            "{n_quarantined} new flag(s) held in quarantine: more new flags than the operator's hourly threshold; they match for no one else until the operator releases them"
        );
    }
}

/// A one-line progress display on standard error, only when it is a terminal.
struct Progress {
    enabled: bool,
    total: Option<u64>,
    started: std::time::Instant,
    last_drawn: Option<std::time::Instant>,
}

impl Progress {
    fn wanted() -> bool {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal()
    }

    fn new(total: Option<u64>) -> Progress {
        Progress {
            enabled: Progress::wanted(),
            total,
            started: std::time::Instant::now(),
            last_drawn: None,
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled
            || self
                .last_drawn
                .is_some_and(|at| at.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last_drawn = Some(std::time::Instant::now());
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / seconds;
        let line = match self.total {
            Some(total) if total > 0 => {
                let eta = total.saturating_sub(done) as f64 / rate.max(1e-9);
                format!(
                    "{done}/{total} lines ({:.0}%), {rate:.0} lines/s, ETA {}",
                    done as f64 * 100.0 / total as f64,
                    humantime::format_duration(Duration::from_secs(eta as u64))
                )
            }
            _ => format!("{done} lines, {rate:.0} lines/s"),
        };
        eprint!("\r\x1b[2K{line}");
    }

    fn finish(&mut self) {
        if self.enabled && self.last_drawn.is_some() {
            eprintln!();
        }
        self.enabled = false;
    }
}

fn flag_from_record(args: &SubmitArgs, item: &Hashed, now_ms: i64) -> Result<pb::Flag, String> {
    let record = &item.record;
    let category = match (&record.category, args.category) {
        (Some(text), _) => text.parse::<Category>()?,
        (None, Some(category)) => category,
        (None, None) => return Err("no category: give --category or a category column".to_owned()),
    };
    let expires_at_ms = match (&record.expires_at, args.expires_in) {
        (Some(text), _) => Some(parse_time("expires_at", text)?),
        (None, Some(duration)) => Some(now_ms + duration.as_millis() as i64),
        (None, None) => None,
    };
    let observed_at_ms = record
        .observed_at
        .as_deref()
        .map(|text| parse_time("observed_at", text))
        .transpose()?;
    let reference = record
        .reference
        .clone()
        .or_else(|| args.reference.clone())
        .unwrap_or_default();
    Ok(pb::Flag {
        digest: item.digest.to_vec(),
        kind: kind_to_pb(item.kind) as i32,
        category: category_to_pb(category) as i32,
        confidence: record.confidence.unwrap_or(args.confidence),
        observed_at: observed_at_ms.map(timestamp_from_ms),
        expires_at: expires_at_ms.map(timestamp_from_ms),
        reference: reference.into_bytes(),
        distribution: args
            .distribution
            .map_or(0, |distribution| distribution_to_pb(distribution) as i32),
    })
}

pub async fn query(args: &QueryArgs) -> anyhow::Result<ExitCode> {
    let (records, mut rejected) = read_input(&args.input)?;
    let (_key_id, hashed) = hash_records(&args.hashing, records, &mut rejected)?;
    let mut client = match &args.mirror {
        Some(_) => None,
        None => Some(args.connect.flags_client().await?),
    };
    let mut n_matched = 0usize;
    if !args.json {
        println!(
            "{:<32} {:>7} {:<28} {:<28} {:>4} {:<4} {:>8}",
            "IDENTIFIER", "MEMBERS", "FLAGGED BY", "CATEGORIES", "CONF", "YOU", "DISPUTES"
        );
    }
    for batch in hashed.chunks(args.input.batch_size as usize) {
        let mut packed = Vec::with_capacity(batch.len() * 32);
        for item in batch {
            packed.extend_from_slice(&item.digest);
        }
        let matches = match (&mut client, &args.mirror) {
            (Some(client), _) => {
                client
                    .query(pb::QueryRequest { digests: packed.into() })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .matches
            }
            (None, Some(dir)) => {
                let digests: Vec<Digest> = batch.iter().map(|item| item.digest).collect();
                super::mirror::query(dir, &digests)?
            }
            (None, None) => anyhow::bail!("neither a server nor a mirror to ask"),
        };
        for found in matches {
            let item = &batch[found.index as usize];
            n_matched += 1;
            print_match(&item.record.identifier, &found, args.json);
        }
    }
    eprintln!("queried {} identifier(s): {n_matched} flagged", hashed.len());
    Ok(report_rejected(&mut rejected))
}

fn category_names(values: &[i32]) -> Vec<&'static str> {
    values
        .iter()
        .map(|value| category_of(*value).map_or("unknown", Category::as_str))
        .collect()
}

fn print_match(identifier: &str, found: &pb::Match, json: bool) {
    let categories = category_names(&found.categories);
    if json {
        let line = serde_json::json!({
            "identifier": identifier,
            "digest": hex::encode(&found.digest),
            "n_members": found.n_members,
            "members": found.members,
            "categories": categories,
            "first_seen": found.first_seen.as_ref().map(super::timestamp_text),
            "last_seen": found.last_seen.as_ref().map(super::timestamp_text),
            "max_confidence": found.max_confidence,
            "flagged_by_caller": found.flagged_by_caller,
            "n_disputes": found.n_disputes,
        });
        println!("{line}");
    } else {
        println!(
            "{:<32} {:>7} {:<28} {:<28} {:>4} {:<4} {:>8}",
            identifier,
            found.n_members,
            found.members.join(","),
            categories.join(","),
            found.max_confidence,
            if found.flagged_by_caller { "yes" } else { "no" },
            found.n_disputes
        );
    }
}

pub async fn retract(args: &RetractArgs) -> anyhow::Result<ExitCode> {
    let (records, mut rejected) = read_input(&args.input)?;
    let (_key_id, hashed) = hash_records(&args.hashing, records, &mut rejected)?;
    let mut client = args.connect.flags_client().await?;
    let mut n_retracted = 0u64;
    for batch in hashed.chunks(args.input.batch_size as usize) {
        let selectors = batch
            .iter()
            .map(|item| pb::FlagSelector {
                digest: item.digest.to_vec(),
                kind: kind_to_pb(item.kind) as i32,
                category: args.category.map_or(0, |category| category_to_pb(category) as i32),
            })
            .collect();
        let response = client
            .retract(pb::RetractRequest {
                flags: selectors,
                reason: retract_reason_to_pb(args.reason) as i32,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        n_retracted += u64::from(response.n_retracted);
        for index in response.unmatched_indexes {
            let item = &batch[index as usize];
            eprintln!(
                "line {}: you have no flag on '{}'",
                item.record.line, item.record.identifier
            );
        }
    }
    println!("retracted {n_retracted} flag(s)");
    Ok(report_rejected(&mut rejected))
}
