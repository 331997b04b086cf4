//! The operator's tools, driven through the `flagshare` binary against a real server
//! process: member lifecycle, the audit log, expiry, disputes, backup and restore.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use flagshare::client::Bundle;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use serde_json::Value;
use tonic::Code;

use crate::support::process::{ServeProcess, admin, flagshare, json_lines, ok, path, stderr, stdout};

/// A data folder made by `flagshare init`, a consortium key, and member bundle folders.
struct Site {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    key: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let data = root.join("data");
        let key = root.join("consortium.key");
        ok(flagshare(&["init", "--data", path(&data)]));
        ok(flagshare(&["keygen", "--out", path(&key)]));
        Site {
            _dir: dir,
            root,
            data,
            key,
        }
    }

    fn set_config(&self, from: &str, to: &str) {
        let file = self.data.join("flagshare.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(from), "{text}");
        std::fs::write(&file, text.replace(from, to)).unwrap();
    }

    fn bundle(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn add(&self, server: &ServeProcess, name: &str) -> PathBuf {
        let out = self.bundle(name);
        ok(admin(&self.data, server, &["member", "add", name, "--out", path(&out)]));
        out
    }

    /// `flagshare COMMAND --bundle B --endpoint E --key K ARGS...`
    fn member(&self, server: &ServeProcess, bundle: &Path, command: &str, args: &[&str]) -> Output {
        let endpoint = server.endpoint();
        let mut all = vec![
            command,
            "--bundle",
            path(bundle),
            "--endpoint",
            &endpoint,
            "--key",
            path(&self.key),
        ];
        all.extend_from_slice(args);
        flagshare(&all)
    }

    fn submit(&self, server: &ServeProcess, bundle: &Path, category: &str, extra: &[&str], email: &str) {
        let mut args = vec!["--kind", "email", "--category", category];
        args.extend_from_slice(extra);
        args.push(email);
        ok(self.member(server, bundle, "submit", &args));
    }

    /// Matches of `emails`, as the query command's JSON lines.
    fn query(&self, server: &ServeProcess, bundle: &Path, emails: &[&str]) -> Vec<Value> {
        let mut args = vec!["--kind", "email", "--json"];
        args.extend_from_slice(emails);
        json_lines(&ok(self.member(server, bundle, "query", &args)))
    }

    fn digest_hex(&self, email: &str) -> String {
        let out = ok(flagshare(&["hash", "--kind", "email", "--key", path(&self.key), email]));
        out.trim().split('\t').nth(1).unwrap().to_owned()
    }

    /// `flagshare query --mirror M --key K --kind email --json EMAILS...`
    fn query_mirror(&self, mirror: &Path, emails: &[&str]) -> Output {
        let mut args = vec![
            "query",
            "--mirror",
            path(mirror),
            "--key",
            path(&self.key),
            "--kind",
            "email",
            "--json",
        ];
        args.extend_from_slice(emails);
        flagshare(&args)
    }

    fn admin_json(&self, server: &ServeProcess, args: &[&str]) -> Vec<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        json_lines(&ok(admin(&self.data, server, &all)))
    }
}

/// Polls `check` until it holds; fails after 30 s naming `what`.
fn wait_for(what: &str, check: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        #[allow(clippy::disallowed_methods)] // a plain test thread polling child processes
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ops(entries: &[Value]) -> Vec<&str> {
    entries.iter().map(|entry| entry["op"].as_str().unwrap()).collect()
}

#[test]
fn member_lifecycle_permissions_and_audit_through_the_cli() {
    let site = Site::new();
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    site.submit(
        &server,
        &alpha,
        "grooming",
        &["--confidence", "90"],
        "shared@example.com",
    );
    site.submit(&server, &beta, "sextortion", &[], "shared@example.com");
    site.submit(&server, &beta, "grooming", &[], "beta-only@example.com");
    let shared = site.digest_hex("shared@example.com");
    let miss = site.digest_hex("nobody@example.com");

    let matches = site.query(&server, &beta, &["shared@example.com", "nobody@example.com"]);
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0]["n_members"], 2);
    assert_eq!(matches[0]["digest"], shared.as_str());

    // A connection alpha opened before the operator acts on it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = server.endpoint();
    let channel = runtime.block_on(async { Bundle::load(&alpha).unwrap().connect(Some(&endpoint)).await.unwrap() });
    let mut open = FlagsClient::new(channel.clone());
    let digest: Vec<u8> = hex::decode(&shared).unwrap();
    let request = || pb::QueryRequest {
        digests: digest.clone().into(),
    };
    runtime.block_on(open.query(request())).unwrap();
    let status = runtime
        .block_on(AdminClient::new(channel).list_principals(pb::ListPrincipalsRequest {}))
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "a member calling Admin: {status:?}"
    );

    ok(admin(&site.data, &server, &["member", "suspend", "alpha"]));
    let status = runtime.block_on(open.query(request())).unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("'alpha' is suspended"),
        "{}",
        status.message()
    );
    // By default a suspension keeps the member's flags visible.
    assert_eq!(site.query(&server, &beta, &["shared@example.com"])[0]["n_members"], 2);

    ok(admin(&site.data, &server, &["member", "reinstate", "alpha"]));
    runtime.block_on(open.query(request())).unwrap();

    let alpha2 = site.bundle("alpha-rotated");
    ok(admin(
        &site.data,
        &server,
        &["member", "rotate-cert", "alpha", "--out", path(&alpha2)],
    ));
    let status = runtime.block_on(open.query(request())).unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "the old certificate, on its open connection"
    );
    let refused = site.member(&server, &alpha, "query", &["--kind", "email", "shared@example.com"]);
    assert!(!refused.status.success());
    assert_eq!(
        site.query(&server, &alpha2, &["shared@example.com"])[0]["flagged_by_caller"],
        true
    );

    let out = ok(admin(
        &site.data,
        &server,
        &["member", "remove", "beta", "--withdraw-flags"],
    ));
    assert!(out.contains("beta is now removed; 2 flag(s) withdrawn"), "{out}");
    let after = site.query(&server, &alpha2, &["shared@example.com", "beta-only@example.com"]);
    assert_eq!(after.len(), 1, "beta's own flag is withdrawn: {after:?}");
    assert_eq!(after[0]["members"], serde_json::json!(["alpha"]));
    let refused = site.member(&server, &beta, "query", &["--kind", "email", "shared@example.com"]);
    assert!(stderr(&refused).contains("'beta' is removed"), "{}", stderr(&refused));
    let refused = admin(&site.data, &server, &["member", "reinstate", "beta"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("was removed"), "{}", stderr(&refused));

    let principals = site.admin_json(&server, &["member", "list"]);
    let find = |name: &str| principals.iter().find(|p| p["name"] == name).unwrap().clone();
    let (alpha_row, beta_row) = (find("alpha"), find("beta"));
    assert_eq!(alpha_row["status"], "active");
    assert_eq!(alpha_row["flags_submitted"], 1);
    assert_eq!(
        alpha_row["queries"], 4,
        "three calls on the open connection, one with the new bundle"
    );
    assert_eq!(beta_row["status"], "removed");
    assert_eq!(beta_row["flags_submitted"], 2);
    assert_eq!(beta_row["queries"], 2);
    assert!(beta_row["last_seen"].is_string());

    let entries = site.admin_json(&server, &["audit", "list"]);
    let seen = ops(&entries);
    for op in [
        "add_principal",
        "submit",
        "query",
        "set_principal_status",
        "rotate_certificate",
        "remove_principal",
        "list_principals",
    ] {
        assert!(seen.contains(&op), "no {op} entry in {seen:?}");
    }
    let first_query = entries.iter().find(|entry| entry["op"] == "query").unwrap();
    assert_eq!(first_query["principal"], "beta");
    assert_eq!(first_query["n_items"], 2);
    assert_eq!(
        first_query["digests"],
        serde_json::json!([shared]),
        "matches only, never misses"
    );

    // "Who queried this digest?"
    let who = site.admin_json(&server, &["audit", "list", "--op", "query", "--digest", &shared]);
    assert_eq!(who.len(), 6, "{who:?}");
    assert!(who.iter().all(|entry| {
        entry["digests"]
            .as_array()
            .unwrap()
            .contains(&Value::from(shared.clone()))
    }));
    assert!(
        site.admin_json(&server, &["audit", "list", "--digest", &miss])
            .is_empty()
    );
    let alpha_submits = site.admin_json(&server, &["audit", "list", "--member", "alpha", "--op", "submit"]);
    assert_eq!(alpha_submits.len(), 1);
    assert_eq!(alpha_submits[0]["n_items"], 1);
    assert!(
        site.admin_json(&server, &["audit", "list", "--since", "1h", "--op", "submit"])
            .len()
            == 3
    );
    assert!(site.admin_json(&server, &["audit", "list", "--until", "1h"]).is_empty());

    let out = ok(admin(&site.data, &server, &["audit", "verify"]));
    assert!(out.contains("audit chain intact"), "{out}");
    assert!(server.stop().success());
}

#[test]
fn audit_verify_reports_an_entry_altered_offline() {
    let site = Site::new();
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    site.submit(&server, &alpha, "grooming", &[], "one@example.com");
    site.submit(&server, &alpha, "grooming", &[], "two@example.com");
    let verified = site.admin_json(&server, &["audit", "verify"]);
    assert_eq!(verified[0]["ok"], true);
    assert!(server.stop().success());

    // Entry 3 is alpha's first submit; make it say someone else did it.
    {
        let db_path = site.data.join("db");
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &db_path, flagshare::store::cf::all()).unwrap();
        let audit = db.cf_handle(flagshare::store::cf::AUDIT).unwrap();
        let key = 3u64.to_be_bytes();
        let stored = db.get_cf(audit, key).unwrap().unwrap();
        let mut entry: Value = serde_json::from_slice(&stored[1..]).unwrap();
        assert_eq!(entry["op"], "submit");
        entry["principal"] = Value::from("beta");
        let mut altered = vec![stored[0]];
        altered.extend(serde_json::to_vec(&entry).unwrap());
        db.put_cf(audit, key, altered).unwrap();
    }

    let server = ServeProcess::start(&site.data);
    let output = admin(&site.data, &server, &["audit", "verify"]);
    assert!(!output.status.success(), "verify must fail on a tampered log");
    let out = crate::support::process::stdout(&output);
    assert!(out.contains("BROKEN at entry 3"), "{out}");
    let report = &json_lines(&crate::support::process::stdout(&admin(
        &site.data,
        &server,
        &["audit", "verify", "--json"],
    )))[0];
    assert_eq!(report["ok"], false);
    assert_eq!(report["broken_sequence"], 3);
    assert!(server.stop().success());
}

#[test]
fn expired_flags_stop_matching_and_are_purged() {
    let site = Site::new();
    site.set_config("maintenance_interval_secs = 600", "maintenance_interval_secs = 1");
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    site.submit(
        &server,
        &alpha,
        "grooming",
        &["--expires-in", "3s"],
        "brief@example.com",
    );
    site.submit(&server, &alpha, "grooming", &[], "lasting@example.com");
    assert_eq!(site.query(&server, &beta, &["brief@example.com"]).len(), 1);

    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = site.admin_json(&server, &["stats"]).remove(0);
        // The counter and the scan of stored flags are read apart: a pass may end between.
        if stats["flags_expired_purged_since_start"] == 1 && stats["expired_flags_awaiting_purge"] == 0 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "the expired flag is purged within a minute: {stats}"
        );
        #[allow(clippy::disallowed_methods)] // a plain test thread polling a child process
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(stats["active_flags"], 1);
    assert_eq!(stats["expired_flags_awaiting_purge"], 0);
    assert_eq!(stats["digests"], 1);
    assert_eq!(stats["active_flags_by_kind"]["email"], 1);
    assert_eq!(stats["active_flags_by_category"]["grooming"], 1);
    assert_eq!(stats["active_principals_by_role"]["member"], 2);
    assert!(stats["disk_bytes"].as_u64().unwrap() > 0);
    assert!(site.query(&server, &beta, &["brief@example.com"]).is_empty());
    assert_eq!(site.query(&server, &beta, &["lasting@example.com"]).len(), 1);
    let purges = site.admin_json(&server, &["audit", "list", "--op", "purge_expired"]);
    assert_eq!(purges.len(), 1);
    assert_eq!(purges[0]["principal"], "system");
    assert_eq!(purges[0]["n_changed"], 1);
    assert!(server.stop().success());
}

#[test]
fn disputes_are_counted_and_retraction_reasons_recorded() {
    let site = Site::new();
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    let gamma = site.add(&server, "gamma");
    site.submit(&server, &alpha, "grooming", &[], "contested@example.com");
    site.submit(&server, &gamma, "other", &[], "contested@example.com");

    let out = ok(site.member(
        &server,
        &beta,
        "dispute",
        &[
            "--kind",
            "email",
            "--member",
            "alpha",
            "--note",
            "case 881",
            "contested@example.com",
        ],
    ));
    assert!(out.contains("disputed 1 flag(s) of alpha"), "{out}");
    assert_eq!(
        site.query(&server, &gamma, &["contested@example.com"])[0]["n_disputes"],
        1
    );
    let own = site.member(
        &server,
        &alpha,
        "dispute",
        &["--kind", "email", "--member", "alpha", "contested@example.com"],
    );
    assert!(
        stderr(&own).contains("cannot dispute its own flags"),
        "{}",
        stderr(&own)
    );
    let none = site.member(
        &server,
        &beta,
        "dispute",
        &["--kind", "email", "--member", "alpha", "clean@example.com"],
    );
    assert!(stderr(&none).contains("has no live flag"), "{}", stderr(&none));

    ok(site.member(
        &server,
        &alpha,
        "retract",
        &["--kind", "email", "--reason", "false_positive", "contested@example.com"],
    ));
    let after = site.query(&server, &beta, &["contested@example.com"]);
    assert_eq!(after[0]["members"], serde_json::json!(["gamma"]));
    assert_eq!(after[0]["n_disputes"], 0, "the disputed flag is gone");

    let retractions = site.admin_json(&server, &["audit", "list", "--op", "retract"]);
    assert_eq!(retractions.len(), 1);
    assert_eq!(retractions[0]["detail"], "reason false_positive");
    assert_eq!(
        retractions[0]["digests"],
        serde_json::json!([site.digest_hex("contested@example.com")])
    );
    let disputes = site.admin_json(&server, &["audit", "list", "--op", "dispute"]);
    assert_eq!(disputes[0]["detail"], "disputes flags of alpha: case 881");
    assert!(server.stop().success());
}

#[test]
fn a_backup_taken_while_serving_restores_the_same_answers() {
    let site = Site::new();
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    site.submit(&server, &alpha, "grooming", &[], "before@example.com");
    let backup = site.root.join("backup-1");
    let out = ok(admin(&site.data, &server, &["backup", path(&backup)]));
    assert!(out.contains("backup written"), "{out}");
    let again = admin(&site.data, &server, &["backup", path(&backup)]);
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    site.submit(&server, &alpha, "grooming", &[], "after@example.com");
    assert_eq!(
        site.query(&server, &beta, &["before@example.com", "after@example.com"])
            .len(),
        2
    );

    let busy = flagshare(&["offline-restore", path(&backup), "--data", path(&site.data)]);
    assert!(!busy.status.success());
    assert!(
        stderr(&busy).contains("stop the flagshare server first"),
        "{}",
        stderr(&busy)
    );
    assert!(server.stop().success());

    let out = ok(flagshare(&[
        "offline-restore",
        path(&backup),
        "--data",
        path(&site.data),
    ]));
    assert!(out.contains("restored"), "{out}");
    let server = ServeProcess::start(&site.data);
    let found = site.query(&server, &beta, &["before@example.com", "after@example.com"]);
    assert_eq!(
        found.len(),
        1,
        "the restored server answers as at backup time: {found:?}"
    );
    assert_eq!(found[0]["identifier"], "before@example.com");
    assert_eq!(site.admin_json(&server, &["audit", "verify"])[0]["ok"], true);
    assert_eq!(site.admin_json(&server, &["audit", "list", "--op", "backup"]).len(), 1);
    assert!(server.stop().success());
}

#[test]
fn a_large_file_is_streamed_in_batches_and_bad_lines_are_reported_by_number() {
    let site = Site::new();
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    let file = site.root.join("bulk.csv");
    let mut text = String::from("identifier,kind,category\n");
    let bad_lines = [3_001usize, 12_345, 24_999];
    let n_rows = 25_000;
    for row in 0..n_rows {
        // Line 1 is the header; row r is on line r + 2.
        if bad_lines.contains(&(row + 2)) {
            text.push_str(&format!("no-at-sign-{row},email,grooming\n"));
        } else {
            text.push_str(&format!("user{row}@example.com,email,sextortion\n"));
        }
    }
    std::fs::write(&file, text).unwrap();

    let output = site.member(
        &server,
        &alpha,
        "submit",
        &["--file", path(&file), "--batch-size", "5000"],
    );
    assert!(!output.status.success(), "a rejected line makes the exit code non-zero");
    let out = crate::support::process::stdout(&output);
    assert!(
        out.contains(&format!(
            "imported {} flag(s) in 1 block(s): {} new, 0 updated",
            n_rows - bad_lines.len(),
            n_rows - bad_lines.len()
        )),
        "{out}"
    );
    let err = stderr(&output);
    assert!(err.contains("3 line(s) rejected"), "{err}");
    for line in bad_lines {
        assert!(err.contains(&format!("line {line}: invalid email identifier")), "{err}");
    }
    assert!(
        !err.contains('\r'),
        "no progress display when standard error is not a terminal"
    );

    let found = site.query(
        &server,
        &beta,
        &["user0@example.com", "user24999@example.com", "user25000@example.com"],
    );
    let identifiers: Vec<&str> = found.iter().map(|m| m["identifier"].as_str().unwrap()).collect();
    assert_eq!(identifiers, ["user0@example.com", "user24999@example.com"]);
    // One import of messages of 5,000 flags: one block, one audited commit.
    let imports = site.admin_json(&server, &["audit", "list", "--op", "import"]);
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert_eq!(imports[0]["n_items"], n_rows - bad_lines.len());
    assert!(
        site.admin_json(&server, &["audit", "list", "--op", "submit"])
            .is_empty()
    );
    assert!(server.stop().success());
}

#[test]
fn two_operators_federate_through_the_admin_cli() {
    let site_a = Site::new();
    let site_b = Site::new();
    site_a.set_config("operator_name = \"flagshare-dev\"", "operator_name = \"op-a\"");
    let a = ServeProcess::start(&site_a.data);
    let b = ServeProcess::start(&site_b.data);
    // A issues B a peer certificate; B's operator stores it and points a peer at A.
    let bundle = site_b.root.join("from-a");
    ok(admin(
        &site_a.data,
        &a,
        &["member", "add", "op-b", "--role", "peer", "--out", path(&bundle)],
    ));
    ok(admin(
        &site_b.data,
        &b,
        &[
            "peer",
            "add",
            "a",
            "--endpoint",
            &a.endpoint(),
            "--bundle",
            path(&bundle),
        ],
    ));
    // Both operators' members hash with the same consortium key.
    std::fs::copy(&site_a.key, &site_b.key).unwrap();
    let alpha = site_a.add(&a, "alpha");
    let beta = site_b.add(&b, "beta");

    site_a.submit(&a, &alpha, "grooming", &[], "first@example.com");
    wait_for("A's flag matches on B", &|| {
        site_b.query(&b, &beta, &["first@example.com"]).len() == 1
    });
    let found = site_b.query(&b, &beta, &["first@example.com"]);
    assert!(
        found[0]["members"][0].as_str().unwrap().starts_with("op-a/m-"),
        "{found:?}"
    );

    let peers = site_b.admin_json(&b, &["peer", "list"]);
    assert_eq!(peers[0]["name"], "a");
    assert_eq!(peers[0]["state"], "streaming");
    assert_eq!(peers[0]["lag"], 0);
    assert!(peers[0]["last_sync"].is_string());
    assert!(peers[0]["applied"].as_u64().unwrap() >= 1);

    ok(admin(&site_b.data, &b, &["peer", "pause", "a"]));
    wait_for("the peer is paused", &|| {
        site_b.admin_json(&b, &["peer", "list"])[0]["state"] == "paused"
    });
    let cursor = site_b.admin_json(&b, &["peer", "list"])[0]["cursor"].clone();
    site_a.submit(&a, &alpha, "grooming", &[], "second@example.com");
    #[allow(clippy::disallowed_methods)] // give a paused peer the chance to misbehave
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(
        site_b.query(&b, &beta, &["second@example.com"]).is_empty(),
        "paused peers do not pull"
    );
    assert_eq!(site_b.admin_json(&b, &["peer", "list"])[0]["cursor"], cursor);

    ok(admin(&site_b.data, &b, &["peer", "resume", "a"]));
    wait_for("the resumed peer catches up", &|| {
        site_b.query(&b, &beta, &["second@example.com"]).len() == 1
    });
    ok(admin(&site_b.data, &b, &["peer", "remove", "a"]));
    assert!(site_b.admin_json(&b, &["peer", "list"]).is_empty());
    let configured = site_b.admin_json(&b, &["audit", "list", "--op", "configure_peer"]);
    assert_eq!(configured.len(), 4, "add, pause, resume, remove: {configured:?}");
    assert!(a.stop().success());
    assert!(b.stop().success());
}

#[test]
fn a_mirror_answers_as_the_server_does_and_follows_retractions() {
    let site = Site::new();
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    for email in ["m1@example.com", "m2@example.com", "m3@example.com"] {
        site.submit(&server, &alpha, "grooming", &[], email);
    }
    site.submit(&server, &beta, "sextortion", &[], "m2@example.com");
    let mirror = site.root.join("mirror");
    let endpoint = server.endpoint();
    let sync = || {
        ok(flagshare(&[
            "mirror",
            "--bundle",
            path(&beta),
            "--endpoint",
            &endpoint,
            "--once",
            path(&mirror),
        ]))
    };
    let from_mirror = || {
        json_lines(&ok(site.query_mirror(
            &mirror,
            &[
                "m1@example.com",
                "m2@example.com",
                "m3@example.com",
                "clean@example.com",
            ],
        )))
    };
    let questions = [
        "m1@example.com",
        "m2@example.com",
        "m3@example.com",
        "clean@example.com",
    ];
    sync();
    assert_eq!(from_mirror(), site.query(&server, &beta, &questions));
    assert_eq!(from_mirror().len(), 3);

    ok(site.member(
        &server,
        &alpha,
        "retract",
        &[
            "--kind",
            "email",
            "--reason",
            "duplicate",
            "m1@example.com",
            "m2@example.com",
        ],
    ));
    sync();
    let mirrored = from_mirror();
    assert_eq!(mirrored, site.query(&server, &beta, &questions));
    let identifiers: Vec<&str> = mirrored.iter().map(|m| m["identifier"].as_str().unwrap()).collect();
    assert_eq!(identifiers, ["m2@example.com", "m3@example.com"]);
    assert_eq!(mirrored[0]["members"], serde_json::json!(["beta"]));
    assert!(server.stop().success());
}

/// Copies the folder `from` to `to` (a stopped server's data folder).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// An endpoint nothing listens on: a port bound and released at once.
fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("https://127.0.0.1:{port}")
}

/// Two nodes of one operator holding the same state (the second started from a copy of
/// the first's folder): a bundle listing several endpoints reaches the first that answers,
/// a following mirror moves to the other node when its node is killed and continues from
/// its cursor, and with no node up the error names each endpoint tried.
#[test]
fn a_bundle_listing_several_nodes_reaches_one_that_answers_and_a_mirror_moves_over() {
    let site = Site::new();
    let node = ServeProcess::start(&site.data);
    let alpha = site.add(&node, "alpha");
    let beta = site.add(&node, "beta");
    site.submit(&node, &alpha, "grooming", &[], "before@example.com");
    assert!(node.stop().success());
    let copy = site.root.join("data-2");
    copy_folder(&site.data, &copy);
    let settings = copy.join("flagshare.toml");
    let text = std::fs::read_to_string(&settings).unwrap();
    let own = format!("data_dir = \"{}\"", site.data.display());
    assert!(text.contains(&own), "{text}");
    std::fs::write(
        &settings,
        text.replace(&own, &format!("data_dir = \"{}\"", copy.display())),
    )
    .unwrap();
    let first = ServeProcess::start(&site.data);
    let second = ServeProcess::start(&copy);

    // The bundle itself lists a closed port, then both nodes.
    let closed = closed_endpoint();
    let config = beta.join("client.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let listed = text
        .lines()
        .map(|line| match line.starts_with("endpoint = ") {
            true => format!(
                "endpoint = \"{closed}\"\nendpoints = [\"{}\", \"{}\"]",
                first.endpoint(),
                second.endpoint()
            ),
            false => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, listed).unwrap();
    let query = |extra: &[&str], email: &str| {
        let mut args = vec!["query", "--bundle", path(&beta), "--key", path(&site.key)];
        args.extend_from_slice(extra);
        args.extend(["--kind", "email", "--json", email]);
        flagshare(&args)
    };
    let found = json_lines(&ok(query(&[], "before@example.com")));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["members"], serde_json::json!(["alpha"]));

    // With none up, the refusal names every endpoint tried.
    let other_closed = closed_endpoint();
    let out = query(
        &["--endpoint", &format!("{closed}, {other_closed}")],
        "before@example.com",
    );
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("no endpoint answered"), "{said}");
    assert!(said.contains(&closed) && said.contains(&other_closed), "{said}");

    // A following mirror: caught up from the first node, then that node is killed.
    let mirror = site.root.join("mirror");
    let log = std::fs::File::create(site.root.join("mirror.log")).unwrap();
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_flagshare"))
        .args(["mirror", "--bundle", path(&beta), path(&mirror)])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mirrored = |email: &str| {
        let out = site.query_mirror(&mirror, &[email]);
        out.status.success() && json_lines(&stdout(&out)).len() == 1
    };
    wait_for("the mirror holds the first flag", &|| mirrored("before@example.com"));
    drop(first); // SIGKILL
    let on_second = [format!("--endpoint={}", second.endpoint())];
    let mut args = vec![
        "submit",
        "--bundle",
        path(&alpha),
        "--key",
        path(&site.key),
        &on_second[0],
    ];
    args.extend(["--kind", "email", "--category", "grooming", "after@example.com"]);
    ok(flagshare(&args));
    wait_for("the mirror holds the flag submitted on the second node", &|| {
        mirrored("after@example.com")
    });
    let _ = follower.kill();
    let _ = follower.wait();
    let said = std::fs::read_to_string(site.root.join("mirror.log")).unwrap();
    assert!(said.contains("lost the server"), "{said}");
    assert!(
        !said.contains("starting again with a snapshot"),
        "the cursor carries over: {said}"
    );
    assert!(second.stop().success());
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path);
            }
        }
    }
    found
}

/// Syncs `mirror` once and checks that it started again from a snapshot by itself.
fn assert_resnapshots(bundle: &Path, endpoint: &str, mirror: &Path) {
    let out = flagshare(&[
        "mirror",
        "--bundle",
        path(bundle),
        "--endpoint",
        endpoint,
        "--once",
        path(mirror),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("starting again with a snapshot"),
        "{}",
        stderr(&out)
    );
}

/// The events a `peer` principal's `Pull` from 0 carries, until it is caught up.
fn pull_from_zero(peer_bundle: &Path, endpoint: &str) -> Vec<pb::FederatedEvent> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bundle = Bundle::load(peer_bundle).unwrap();
        let channel = bundle.connect(Some(endpoint)).await.unwrap();
        let mut client = pb::federation_client::FederationClient::new(channel);
        let mut stream = client.pull(pb::PullRequest::default()).await.unwrap().into_inner();
        let mut events = Vec::new();
        loop {
            let batch = stream.message().await.unwrap().unwrap();
            events.extend(batch.events);
            if batch.cursor >= batch.head {
                return events;
            }
        }
    })
}

#[test]
fn removals_leave_feeds_and_disk_and_stale_or_restored_cursors_re_snapshot() {
    let site = Site::new();
    site.set_config("maintenance_interval_secs = 600", "maintenance_interval_secs = 1");
    site.set_config("tombstone_retention_secs = 2592000", "tombstone_retention_secs = 4");
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    let peer = site.bundle("peer-p");
    ok(admin(
        &site.data,
        &server,
        &["member", "add", "p", "--role", "peer", "--out", path(&peer)],
    ));
    let kept: Vec<String> = (0..5).map(|i| format!("kept{i}@example.com")).collect();
    let retracted: Vec<String> = (0..10).map(|i| format!("retracted{i}@example.com")).collect();
    let expiring: Vec<String> = (0..10).map(|i| format!("expiring{i}@example.com")).collect();
    for email in kept.iter().chain(&retracted) {
        site.submit(&server, &alpha, "grooming", &[], email);
    }
    for email in &expiring {
        site.submit(&server, &alpha, "grooming", &["--expires-in", "2s"], email);
    }
    let everyone: Vec<&str> = kept
        .iter()
        .chain(&retracted)
        .chain(&expiring)
        .map(String::as_str)
        .collect();
    let mirror = site.root.join("mirror");
    let endpoint = server.endpoint();
    let sync = |mirror: &Path, endpoint: &str| {
        ok(flagshare(&[
            "mirror",
            "--bundle",
            path(&beta),
            "--endpoint",
            endpoint,
            "--once",
            path(mirror),
        ]))
    };
    let from_mirror = |mirror: &Path| json_lines(&ok(site.query_mirror(mirror, &everyone)));
    sync(&mirror, &endpoint);
    assert_eq!(from_mirror(&mirror).len(), 25);
    let backup = site.root.join("backup-1");
    ok(admin(&site.data, &server, &["backup", path(&backup)]));

    let mut retract = vec!["--kind", "email", "--reason", "appeal_upheld"];
    retract.extend(retracted.iter().map(String::as_str));
    ok(site.member(&server, &alpha, "retract", &retract));
    let removed: Vec<String> = retracted
        .iter()
        .chain(&expiring)
        .map(|email| site.digest_hex(email))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while site.admin_json(&server, &["stats"])[0]["flags_expired_purged_since_start"] != 10 {
        assert!(
            Instant::now() < deadline,
            "the expiring flags are purged within a minute"
        );
        #[allow(clippy::disallowed_methods)] // a plain test thread polling a child process
        std::thread::sleep(Duration::from_millis(250));
    }

    // Within the retention window: a feed from the start and a pull from 0 carry no
    // upsert of a removed flag (its record went with it), only thin tombstones.
    let fresh = site.root.join("mirror-fresh");
    sync(&fresh, &endpoint);
    assert_eq!(from_mirror(&fresh), site.query(&server, &beta, &everyone));
    assert_eq!(from_mirror(&fresh).len(), 5);
    let events = pull_from_zero(&peer, &endpoint);
    let upserted: Vec<String> = events
        .iter()
        .filter(|event| event.op == pb::federated_event::Op::Upsert as i32)
        .map(|event| hex::encode(&event.digest))
        .collect();
    assert_eq!(upserted.len(), 5, "only the kept flags' records travel");
    assert!(removed.iter().all(|digest| !upserted.contains(digest)));
    let tombstones = events
        .iter()
        .filter(|event| event.op != pb::federated_event::Op::Upsert as i32)
        .count();
    assert_eq!(tombstones, 20);

    // Past the window: not even the tombstones, and after compaction not their bytes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pull_from_zero(&peer, &endpoint).len() != 5 {
        assert!(
            Instant::now() < deadline,
            "tombstones are deleted within a minute of the window"
        );
        #[allow(clippy::disallowed_methods)] // a plain test thread polling a child process
        std::thread::sleep(Duration::from_millis(250));
    }
    // `admin compact` rewrites the files: the data files and logs then hold no byte of a
    // removed digest, and once the server has started again (RocksDB writes its MANIFEST
    // anew as it opens the database), no file of the data folder does.
    ok(admin(&site.data, &server, &["compact"]));
    let is_manifest = |path: &PathBuf| path.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-");
    for digest in &removed {
        let holding = files_holding(&site.data.join("db"), &hex::decode(digest).unwrap());
        assert!(holding.iter().all(is_manifest), "{digest} is still in {holding:?}");
    }
    assert!(server.stop().success());
    let server = ServeProcess::start(&site.data);
    let endpoint = server.endpoint();
    // It prints its address before it opens the database: a served call shows it is open.
    assert_eq!(site.admin_json(&server, &["stats"])[0]["active_flags"], 5);
    for digest in &removed {
        let holding = files_holding(&site.data.join("db"), &hex::decode(digest).unwrap());
        assert!(holding.is_empty(), "{digest} is still in {holding:?} after a restart");
    }
    let live = hex::decode(site.digest_hex(&kept[0])).unwrap();
    assert!(
        !files_holding(&site.data.join("db"), &live).is_empty(),
        "the check can find a digest"
    );

    // A cursor from before the window: the mirror re-snapshots by itself.
    assert_resnapshots(&beta, &endpoint, &mirror);
    assert_eq!(from_mirror(&mirror), site.query(&server, &beta, &everyone));

    // A restore from before the removals: the mirror's cursor names the old database.
    assert!(server.stop().success());
    ok(flagshare(&[
        "offline-restore",
        path(&backup),
        "--data",
        path(&site.data),
    ]));
    let server = ServeProcess::start(&site.data);
    let endpoint = server.endpoint();
    site.submit(&server, &alpha, "sextortion", &[], &kept[1]);
    assert_resnapshots(&beta, &endpoint, &mirror);
    let restored = site.query(&server, &beta, &everyone);
    assert_eq!(
        restored.len(),
        15,
        "the backup's kept and retracted flags; the expired ones stay expired"
    );
    assert_eq!(from_mirror(&mirror), restored);
    assert!(server.stop().success());
}

#[test]
fn an_operator_sets_a_members_limits_and_the_member_meets_them() {
    let site = Site::new();
    site.set_config("[limits]", "[limits.member]\nflags_submitted_per_day = 1000");
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let shown = &site.admin_json(&server, &["member", "limits", "alpha"])[0];
    assert_eq!(shown["flags_submitted_per_day"]["value"], 1000);
    assert_eq!(shown["flags_submitted_per_day"]["overridden"], false);
    assert_eq!(shown["quarantine_new_flags_per_hour"]["value"], 100_000);
    ok(admin(
        &site.data,
        &server,
        &["member", "limits", "alpha", "--quarantine-new-flags-per-hour", "0"],
    ));
    let exempt = &site.admin_json(&server, &["member", "limits", "alpha"])[0];
    assert_eq!(exempt["quarantine_new_flags_per_hour"]["value"], 0);
    assert_eq!(exempt["quarantine_new_flags_per_hour"]["overridden"], true);
    let set = ok(admin(
        &site.data,
        &server,
        &["member", "limits", "alpha", "--flags-submitted-per-day", "1"],
    ));
    assert!(
        set.contains("flags_submitted_per_day") && set.contains("set for it"),
        "{set}"
    );
    site.submit(&server, &alpha, "grooming", &[], "first@example.com");
    let refused = site.member(
        &server,
        &alpha,
        "submit",
        &["--kind", "email", "--category", "grooming", "second@example.com"],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("over its flags_submitted_per_day of 1"),
        "{}",
        stderr(&refused)
    );
    let audit = site.admin_json(&server, &["audit", "list", "--op", "set_limits"]);
    let details: Vec<&str> = audit.iter().map(|entry| entry["detail"].as_str().unwrap()).collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(
        details.contains(&"alpha: quarantine_new_flags_per_hour=0"),
        "{details:?}"
    );
    assert!(
        details.contains(&"alpha: flags_submitted_per_day=1, quarantine_new_flags_per_hour=0"),
        "{details:?}"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_log_line() {
    use std::io::{BufRead as _, BufReader};
    let site = Site::new();
    site.set_config("log_format = \"text\"", "log_format = \"json\"");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flagshare"))
        .args([
            "serve",
            "--data",
            path(&site.data),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let serving = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server logs that it serves within a minute");
        if line.contains("flagshare serving") {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let entry: Value = serde_json::from_str(&serving).unwrap();
    assert_eq!(entry["level"], "INFO", "{serving}");
    assert!(
        entry["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("flagshare serving")
    );
    assert!(
        entry["fields"]["local_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(entry["timestamp"].is_string());
}

#[test]
fn an_operator_lists_and_releases_a_members_quarantined_flags() {
    let site = Site::new();
    site.set_config(
        "quarantine_new_flags_per_hour = 100000",
        "quarantine_new_flags_per_hour = 1",
    );
    let server = ServeProcess::start(&site.data);
    let alpha = site.add(&server, "alpha");
    let beta = site.add(&server, "beta");
    site.submit(&server, &alpha, "grooming", &[], "first@example.com");
    let held = ok(site.member(
        &server,
        &alpha,
        "submit",
        &["--kind", "email", "--category", "grooming", "second@example.com"],
    ));
    assert!(held.contains("1 new flag(s) held in quarantine"), "{held}");
    assert_eq!(site.query(&server, &beta, &["second@example.com"]).len(), 0);
    let listed = site.admin_json(&server, &["quarantine", "list"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["member"].as_str(), listed[0]["flags"].as_u64()),
        (Some("alpha"), Some(1))
    );
    // The member and the operator see which flag is held.
    let endpoint = server.endpoint();
    let held = |bundle: &Path| {
        let args = ["held", "--bundle", path(bundle), "--endpoint", &endpoint, "--json"];
        json_lines(&ok(flagshare(&args)))
    };
    let second = site.digest_hex("second@example.com");
    let mine = held(&alpha);
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["digest"], second.as_str());
    assert_eq!(
        (mine[0]["kind"].as_str(), mine[0]["category"].as_str()),
        (Some("email"), Some("grooming"))
    );
    assert!(held(&beta).is_empty());
    assert_eq!(site.admin_json(&server, &["quarantine", "list", "alpha"]), mine);
    let table = ok(flagshare(&["held", "--bundle", path(&alpha), "--endpoint", &endpoint]));
    assert!(table.contains(&second) && table.contains("1 flag(s) held"), "{table}");
    let released = ok(admin(&site.data, &server, &["quarantine", "release", "alpha"]));
    assert!(
        released.contains("1 quarantined flag(s) of alpha released; 0 still held"),
        "{released}"
    );
    assert_eq!(site.query(&server, &beta, &["second@example.com"]).len(), 1);
    assert!(site.admin_json(&server, &["quarantine", "list"]).is_empty());
    assert!(held(&alpha).is_empty());
}
