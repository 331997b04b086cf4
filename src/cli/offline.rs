//! `flagshare offline-...`: commands that open the database directly, so they refuse while
//! a server holds it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{Config, DEFAULT_DATA_DIR};
use crate::store::{Store, StoreError};

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// A folder written by `flagshare admin backup`.
    backup: PathBuf,
    /// Data folder whose database is replaced (the PKI and client bundles are kept).
    #[arg(long, env = "FLAGSHARE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}

/// Replaces the database of `--data` with a copy of the backup. The backup itself is never
/// opened (opening writes to a RocksDB folder); the copy is opened and checked first, and
/// the old database is kept beside it as `db.before-restore-<time>`.
pub fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.data)?;
    let db = config.db_dir();
    anyhow::ensure!(
        args.backup.join("CURRENT").is_file(),
        "{} is not a flagshare backup (it has no RocksDB CURRENT file)",
        args.backup.display()
    );
    if db.exists() {
        match Store::open(&db, &config.store_options()) {
            Ok(store) => drop(store),
            Err(StoreError::Locked(_)) => {
                anyhow::bail!("{} is in use: stop the flagshare server first", db.display())
            }
            // A damaged database is what a restore is for.
            Err(err) => eprintln!("flagshare: the current database does not open ({err}); replacing it"),
        }
    }
    let staging = config.data_dir.join("db.restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    copy_dir(&args.backup, &staging)?;
    let store = Store::open(&staging, &config.store_options())
        .with_context(|| format!("the backup in {} does not open", args.backup.display()))?;
    let n_principals = store.load_principals()?.len();
    let last_sequence = store.last_sequence()?;
    // A restored database is another database: feed and federation cursors handed out
    // before the restore name the old identity, so readers re-snapshot instead of silently
    // skipping what the restore undid.
    let identity = store.renew_db_identity()?;
    drop(store);
    let kept = if db.exists() {
        let kept = config
            .data_dir
            .join(format!("db.before-restore-{}", crate::util::now_ms() / 1000));
        std::fs::rename(&db, &kept).with_context(|| format!("moving {} aside", db.display()))?;
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&staging, &db).with_context(|| format!("moving the restored copy to {}", db.display()))?;
    println!(
        "restored {} into {} ({n_principals} principals, change sequence {last_sequence}, new database identity {}; mirrors and peers will re-snapshot)",
        args.backup.display(),
        db.display(),
        hex::encode(identity)
    );
    if let Some(kept) = kept {
        println!("the previous database is kept in {}", kept.display());
    }
    Ok(())
}
