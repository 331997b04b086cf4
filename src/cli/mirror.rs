//! `flagshare mirror DIR`: a member's local copy of every digest with live flags, kept
//! current with the `Subscribe` feed, so checks can be answered without leaving the
//! member's network (`flagshare query --mirror DIR`).
//!
//! Layout: a RocksDB folder; each digest (32 bytes) → its `Match` (protobuf), and the key
//! `cursor` → the feed cursor. Each feed batch and its cursor are one atomic write, so an
//! interrupted mirror resumes exactly where it stopped.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prost::Message as _;
use rocksdb::{DB, Options, WriteBatch};

use crate::digest::Digest;
use crate::pb;

use super::connect::{ConnectArgs, status_error};

const CURSOR_KEY: &[u8] = b"cursor";

#[derive(clap::Args)]
pub struct MirrorArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Folder of the local copy (created if missing).
    dir: PathBuf,
    /// Stop once the copy has caught up, instead of following changes.
    #[arg(long)]
    once: bool,
}

pub async fn run(args: &MirrorArgs) -> anyhow::Result<()> {
    let mut options = Options::default();
    options.create_if_missing(true);
    let db = DB::open(&options, &args.dir).with_context(|| format!("opening the mirror in {}", args.dir.display()))?;
    let mut client = args.connect.flags_client().await?;
    loop {
        match follow(&db, &mut client, args.once).await? {
            Followed::Done => return Ok(()),
            Followed::Resnapshot(reason) => {
                // The server cannot continue our cursor (it was restored from a backup,
                // say): what we hold may be wrong, so start again from a snapshot.
                eprintln!("mirror: {reason}; starting again with a snapshot");
                clear(&db)?;
            }
            Followed::Lost(reason) => {
                // The node went away (restarted, failed): the same one back, or another
                // of the bundle's endpoints, continues from the stored cursor.
                eprintln!("mirror: lost the server ({reason}); reconnecting");
                client = reconnect(&args.connect, args.once).await?;
            }
        }
    }
}

/// Reconnect attempts a `--once` mirror makes before it gives up; a following mirror keeps
/// trying, RECONNECT_MAX apart at most.
const ONCE_ATTEMPTS: u32 = 5;
const RECONNECT_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

async fn reconnect(
    connect: &ConnectArgs,
    once: bool,
) -> anyhow::Result<crate::pb::flags_client::FlagsClient<tonic::transport::Channel>> {
    let mut wait = RECONNECT_FIRST;
    let mut attempts = 0u32;
    loop {
        tokio::time::sleep(wait).await;
        attempts += 1;
        match connect.flags_client().await {
            Ok(client) => return Ok(client),
            Err(err) if once && attempts >= ONCE_ATTEMPTS => {
                return Err(err.context(format!("mirror: no server after {attempts} attempts")));
            }
            Err(err) => eprintln!("mirror: {err:#}; trying again in {} s", wait.as_secs_f32()),
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

enum Followed {
    Done,
    Resnapshot(String),
    /// The connection or the server went away; the cursor stays for whoever continues.
    Lost(String),
}

/// Whether a failed feed call means the node is gone (try again, perhaps elsewhere) rather
/// than a refusal that another attempt would meet again.
fn node_lost(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Deletes every row, the cursor included.
fn clear(db: &DB) -> anyhow::Result<()> {
    let mut batch = WriteBatch::default();
    for item in db.iterator(rocksdb::IteratorMode::Start) {
        batch.delete(item?.0);
    }
    db.write(batch)?;
    Ok(())
}

/// Follows the feed from the stored cursor until caught up (`once`) or the server ends it.
async fn follow(
    db: &DB,
    client: &mut crate::pb::flags_client::FlagsClient<tonic::transport::Channel>,
    once: bool,
) -> anyhow::Result<Followed> {
    let cursor = db
        .get(CURSOR_KEY)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    if cursor.is_empty() {
        // No cursor: a fresh copy, or a snapshot that was interrupted. Start clean.
        clear(db)?;
    }
    let resnapshot = |status: &tonic::Status| status.code() == tonic::Code::OutOfRange;
    let mut stream = match client.subscribe(pb::SubscribeRequest { cursor }).await {
        Ok(response) => response.into_inner(),
        Err(status) if resnapshot(&status) => return Ok(Followed::Resnapshot(status.message().to_owned())),
        Err(status) if node_lost(&status) => return Ok(Followed::Lost(status.message().to_owned())),
        Err(status) => return Err(status_error(status)),
    };
    let mut n_events = 0u64;
    loop {
        let batch = match stream.message().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Ok(Followed::Lost("the server closed the feed".to_owned())),
            Err(status) if resnapshot(&status) => return Ok(Followed::Resnapshot(status.message().to_owned())),
            Err(status) if node_lost(&status) => return Ok(Followed::Lost(status.message().to_owned())),
            Err(status) => return Err(status_error(status)),
        };
        let mut write = WriteBatch::default();
        for event in &batch.events {
            n_events += 1;
            match &event.state {
                Some(state) => write.put(&event.digest, state.encode_to_vec()),
                None => write.delete(&event.digest),
            }
        }
        if !batch.cursor.is_empty() {
            write.put(CURSOR_KEY, batch.cursor.as_bytes());
        }
        db.write(write)?;
        if batch.caught_up {
            eprintln!(
                "mirror: caught up ({n_events} event(s) applied, cursor {})",
                batch.cursor
            );
            if once {
                return Ok(Followed::Done);
            }
        }
    }
}

/// Answers `digests` from a mirror folder, as `Query` would: one match per digest found,
/// with its index. Opens read-only, so a running `mirror` can keep writing.
pub fn query(dir: &Path, digests: &[Digest]) -> anyhow::Result<Vec<pb::Match>> {
    let db = DB::open_for_read_only(&Options::default(), dir, false)
        .with_context(|| format!("opening the mirror in {}", dir.display()))?;
    anyhow::ensure!(
        db.get(CURSOR_KEY)?.is_some(),
        "the mirror in {} has not finished its first sync",
        dir.display()
    );
    let mut matches = Vec::new();
    for (index, value) in digests.iter().zip(db.multi_get(digests.iter())).enumerate() {
        let (_, value) = value;
        if let Some(bytes) = value? {
            let mut found = pb::Match::decode(bytes.as_slice()).context("a mirror entry is not a match")?;
            found.index = index as u32;
            matches.push(found);
        }
    }
    Ok(matches)
}
