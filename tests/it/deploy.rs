//! The files under deploy/: the alerting rules and the Grafana dashboard parse, and every
//! metric they name exists in a real scrape.

use std::collections::BTreeSet;

use flagshare::model::Role;
use flagshare::pb;

use crate::support::{TestServer, email_digest, eventually, flag, peer_status, query_request, submit_request};

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus-alerts.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/flagshare.service");

#[test]
fn the_systemd_unit_sandboxes_the_server_and_verifies() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    for (key, value) in [
        ("User", "flagshare"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/flagshare"),
        ("ExecStart", "/usr/local/bin/flagshare serve --data /var/lib/flagshare"),
    ] {
        assert!(settings.contains(&(key, value)), "{key}={value} missing from the unit");
    }
    // Where systemd is installed, it checks the unit too (with this build as the binary).
    let Ok(which) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        return;
    };
    if !which.status.success() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("flagshare.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/flagshare", env!("CARGO_BIN_EXE_flagshare")),
    )
    .unwrap();
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    // Unknown or malformed settings are only warned about, each prefixed by the unit's path.
    let warnings = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && !warnings.contains("flagshare.service"),
        "systemd-analyze verify: {warnings}"
    );
}

/// Every `flagshare_...` metric name in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("flagshare_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        into.insert(name);
    }
}

fn alert_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(ALERTS).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().unwrap() {
        assert!(group["name"].as_str().is_some());
        for rule in group["rules"].as_vec().unwrap() {
            assert!(rule["alert"].as_str().is_some(), "a rule without a name: {rule:?}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{rule:?}");
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

fn dashboard_expressions() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "flagshare");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_name_is_in_a_scrape() {
    let alerts = alert_expressions();
    let panels = dashboard_expressions();
    assert!(alerts.len() >= 6 && panels.len() >= 9);
    // A peer pair with traffic, so that every family has a sample.
    let a = TestServer::start_named("op-a").await;
    // With RocksDB's tickers, which the dashboard reads.
    let b = TestServer::start_named_configured("op-b", |config| config.rocksdb_statistics = true).await;
    let bundle = a.enroll("b", Role::Peer).await;
    let dir = b.data_dir().join("peer-bundles").join("a");
    bundle.write(&dir).unwrap();
    b.admin_client()
        .await
        .configure_peer(pb::ConfigurePeerRequest {
            name: "a".to_owned(),
            endpoint: a.endpoint(),
            bundle_dir: dir.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut alpha = a.member("alpha").await;
    let digest = email_digest("deploy@example.com");
    alpha
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 80)]))
        .await
        .unwrap();
    eventually("b applied a's flag", || async {
        peer_status(&b, "a").await.n_applied >= 1
    })
    .await;
    let mut beta = b.member("beta").await;
    beta.submit(submit_request(vec![flag(digest, pb::Category::Sextortion, 50)]))
        .await
        .unwrap();
    beta.submit(submit_request(vec![flag(digest, pb::Category::Sextortion, 60)]))
        .await
        .unwrap();
    assert_eq!(
        beta.query(query_request(&[digest]))
            .await
            .unwrap()
            .into_inner()
            .matches
            .len(),
        1
    );
    beta.retract(pb::RetractRequest {
        flags: vec![pb::FlagSelector {
            digest: digest.to_vec(),
            kind: 0,
            category: 0,
        }],
        reason: pb::RetractReason::Duplicate as i32,
    })
    .await
    .unwrap();

    let mut scraped = b.scrape().await.names();
    // The cluster's metrics, from a node of a (one-node) replicated operator.
    let node = TestServer::start_configured(|config| config.replicated_log = true).await;
    scraped.extend(node.scrape().await.names());
    let mut named = BTreeSet::new();
    for expr in alerts.iter().chain(&panels) {
        metric_names(expr, &mut named);
    }
    let missing: Vec<_> = named.iter().filter(|name| !scraped.contains(*name)).collect();
    assert!(
        missing.is_empty(),
        "named but not in a scrape: {missing:?}\nscrape has {scraped:?}"
    );
    // The check itself sees what it should.
    assert!(
        named.contains("flagshare_rpc_duration_seconds_bucket") && named.len() >= 15,
        "{named:?}"
    );
}

const THREE_NODES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/three-nodes.sh");

/// Stops the script's nodes however the test ends.
struct StopNodes(std::path::PathBuf);

impl Drop for StopNodes {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args([THREE_NODES, self.0.to_str().unwrap(), "stop"])
            .status();
    }
}

/// deploy/three-nodes.sh, run as the README says: three nodes made with `init --cluster`
/// and `init --join`, one leading and two following; a member's bundle naming the three
/// writes through one follower and finds the flag on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_node_example_makes_a_cluster_members_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("cluster");
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect();
    drop(listeners);
    let _stop = StopNodes(nodes.clone());
    let made = std::process::Command::new("bash")
        .arg(THREE_NODES)
        .arg(&nodes)
        .env("FLAGSHARE", env!("CARGO_BIN_EXE_flagshare"))
        .env("PORTS", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(" "))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&made.stdout);
    assert!(
        made.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The table's rows: id, role, matched, lag, address.
    let roles: Vec<&str> = out
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.next()?.parse::<u64>().ok()?;
            words.next()
        })
        .collect();
    assert_eq!(
        (
            roles.iter().filter(|role| **role == "leader").count(),
            roles.iter().filter(|role| **role == "follower").count()
        ),
        (1, 2),
        "{out}"
    );

    // An operator's change asked of a follower is made on the leader (the CLI goes there);
    // a read is answered by the node asked, in its own view.
    let bin = env!("CARGO_BIN_EXE_flagshare");
    let admin = nodes.join("node-1/clients/admin");
    let on = |index: usize| format!("https://127.0.0.1:{}", ports[index]);
    let added = std::process::Command::new(bin)
        .args(["admin", "--bundle", admin.to_str().unwrap(), "--endpoint", &on(1)])
        .args([
            "member",
            "add",
            "platform-b",
            "--out",
            nodes.join("platform-b").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let listed = std::process::Command::new(bin)
        .args(["admin", "--bundle", admin.to_str().unwrap(), "--endpoint", &on(2)])
        .args(["cluster", "list", "--json"])
        .output()
        .unwrap();
    let view: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(view["node_id"], 3, "answered by the node asked: {view}");

    let member = flagshare::client::Bundle::load(&nodes.join("platform-a")).unwrap();
    assert_eq!(member.endpoints().len(), 3, "the bundle names every node");
    let digest = email_digest("three-nodes@example.com");
    let mut via_second = pb::flags_client::FlagsClient::new(member.connect(Some(&on(1))).await.unwrap());
    via_second
        .submit(submit_request(vec![flag(digest, pb::Category::Grooming, 80)]))
        .await
        .unwrap();
    let on_third = pb::flags_client::FlagsClient::new(member.connect(Some(&on(2))).await.unwrap());
    eventually("the flag written through node 2 is found on node 3", || {
        let mut on_third = on_third.clone();
        async move {
            on_third
                .query(query_request(&[digest]))
                .await
                .is_ok_and(|answer| answer.get_ref().matches.len() == 1)
        }
    })
    .await;
}
