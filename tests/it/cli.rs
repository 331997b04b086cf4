//! The `flagshare` binary, driven as a user would: keygen, hash, and the README walkthrough
//! (init, serve, add two members, submit, query) against a real server process.

use crate::support::process::{ServeProcess, flagshare, path, stderr, stdout};
use flagshare::digest::{ConsortiumKey, Hasher, Kind, NormalizeOptions};

#[test]
fn keygen_writes_a_private_key_and_hash_prints_the_spec_digest() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("consortium.key");
    let output = flagshare(&["keygen", "--out", path(&key_path)]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !flagshare(&["keygen", "--out", path(&key_path)]).status.success(),
        "never overwrite a key"
    );

    let output = flagshare(&[
        "hash",
        "--kind",
        "email",
        "--key",
        path(&key_path),
        "Foo.Bar+x@Example.com",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let key = ConsortiumKey::load(&key_path).unwrap();
    let expected = Hasher::new(&key).digest_normalized(Kind::Email, "foo.bar@example.com");
    assert_eq!(
        stdout(&output),
        format!("foo.bar@example.com\t{}\n", hex::encode(expected))
    );

    let output = flagshare(&["hash", "--kind", "email", "--key", path(&key_path), "not-an-email"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("invalid email identifier: it has no '@'"),
        "{}",
        stderr(&output)
    );
    let _ = NormalizeOptions::default();
}

#[test]
fn the_readme_walkthrough_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("consortium.key");
    let alpha = dir.path().join("alpha");
    let beta = dir.path().join("beta");

    let output = flagshare(&["init", "--data", path(&data)]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !flagshare(&["init", "--data", path(&data)]).status.success(),
        "init refuses to run twice"
    );
    let server = ServeProcess::start(&data);
    let endpoint = server.endpoint();
    let admin = data.join("clients").join("admin");

    for (name, out) in [("alpha", &alpha), ("beta", &beta)] {
        let output = flagshare(&[
            "admin",
            "--bundle",
            path(&admin),
            "--endpoint",
            &endpoint,
            "member",
            "add",
            name,
            "--out",
            path(out),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(
            stdout(&output).contains(&format!("added member '{name}'")),
            "{}",
            stdout(&output)
        );
    }
    let output = flagshare(&[
        "admin",
        "--bundle",
        path(&admin),
        "--endpoint",
        &endpoint,
        "member",
        "list",
    ]);
    assert!(
        stdout(&output).contains("alpha") && stdout(&output).contains("beta"),
        "{}",
        stdout(&output)
    );

    assert!(flagshare(&["keygen", "--out", path(&key)]).status.success());
    let output = flagshare(&[
        "submit",
        "--bundle",
        path(&alpha),
        "--endpoint",
        &endpoint,
        "--key",
        path(&key),
        "--kind",
        "email",
        "--category",
        "grooming",
        "--confidence",
        "90",
        "Offender+alt@Example.com",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("submitted 1 flag(s): 1 new, 0 updated"),
        "{}",
        stdout(&output)
    );

    let output = flagshare(&[
        "query",
        "--bundle",
        path(&beta),
        "--endpoint",
        &endpoint,
        "--key",
        path(&key),
        "--kind",
        "email",
        "--json",
        "offender@example.com",
        "innocent@example.com",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "only the flagged identifier is printed: {}",
        stdout(&output)
    );
    assert_eq!(lines[0]["identifier"], "offender@example.com");
    assert_eq!(lines[0]["members"], serde_json::json!(["alpha"]));
    assert_eq!(lines[0]["categories"], serde_json::json!(["grooming"]));
    assert_eq!(lines[0]["max_confidence"], 90);
    assert_eq!(lines[0]["flagged_by_caller"], false);

    // A file with one bad line: the good lines are submitted, the bad one is reported by
    // line number, and the exit code says something was rejected.
    let csv = dir.path().join("ids.csv");
    std::fs::write(&csv, "identifier,kind,category\nsecond@example.com,email,sextortion\nno-at-sign,email,grooming\n+447911123456,phone,grooming\n").unwrap();
    let output = flagshare(&[
        "submit",
        "--bundle",
        path(&alpha),
        "--endpoint",
        &endpoint,
        "--key",
        path(&key),
        "--file",
        path(&csv),
    ]);
    assert!(!output.status.success());
    assert!(
        stdout(&output).contains("imported 2 flag(s) in 1 block(s): 2 new, 0 updated"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("line 3: invalid email identifier: it has no '@'"),
        "{}",
        stderr(&output)
    );

    let output = flagshare(&[
        "retract",
        "--bundle",
        path(&alpha),
        "--endpoint",
        &endpoint,
        "--key",
        path(&key),
        "--kind",
        "email",
        "--reason",
        "appeal_upheld",
        "offender@example.com",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("retracted 1 flag(s)"), "{}", stdout(&output));
    let output = flagshare(&[
        "query",
        "--bundle",
        path(&beta),
        "--endpoint",
        &endpoint,
        "--key",
        path(&key),
        "--kind",
        "email",
        "--json",
        "offender@example.com",
    ]);
    assert_eq!(stdout(&output), "", "a retracted flag no longer matches");

    assert!(server.stop().success(), "SIGTERM stops the server cleanly");
}
