//! Test harness: real flagshare servers on 127.0.0.1:0, each with its own temporary data
//! folder and freshly generated PKI.

pub mod cluster;
pub mod process;

use std::net::SocketAddr;
use std::path::Path;

use flagshare::client::{Bundle, enroll};
use flagshare::config::Config;
use flagshare::digest::{ConsortiumKey, Digest, Hasher, Kind, NormalizeOptions};
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    /// The plain-HTTP metrics endpoint.
    pub metrics_addr: SocketAddr,
    pub admin: Bundle,
    dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

fn test_config(data_dir: &Path, operator_name: &str) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        operator_name: operator_name.to_owned(),
        // Tests and benchmarks load many flags as one member; the quarantine's own tests
        // turn it on.
        quarantine_new_flags_per_hour: 0,
        ..Config::default()
    }
}

/// Writes `<dir>/flagshare.toml` with the harness's settings, `adjust`ed, for a
/// `flagshare serve` process on `dir` (an in-process server takes them directly).
pub fn write_config(dir: &Path, adjust: impl FnOnce(&mut Config)) {
    let mut config = test_config(dir, "flagshare-dev");
    adjust(&mut config);
    std::fs::write(dir.join("flagshare.toml"), toml::to_string(&config).unwrap()).unwrap();
}

impl TestServer {
    /// A new data folder, `init`ed, and a server on it.
    pub async fn start() -> TestServer {
        TestServer::start_named("flagshare-dev").await
    }

    /// As `start`, for an operator of this name (federation tests run several).
    pub async fn start_named(operator_name: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        flagshare::cli::setup::initialize(&test_config(dir.path(), operator_name))
            .await
            .unwrap();
        TestServer::start_in_named(dir, operator_name).await
    }

    /// A server on an existing data folder (after `stop`).
    pub async fn start_in(dir: TempDir) -> TestServer {
        TestServer::start_in_named(dir, "flagshare-dev").await
    }

    pub async fn start_in_named(dir: TempDir, operator_name: &str) -> TestServer {
        TestServer::start_in_configured(dir, operator_name, |_| {}).await
    }

    /// As `start_named`, with `adjust` applied to its settings.
    pub async fn start_named_configured(operator_name: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        flagshare::cli::setup::initialize(&test_config(dir.path(), operator_name))
            .await
            .unwrap();
        TestServer::start_in_configured(dir, operator_name, adjust).await
    }

    /// A new data folder and a server on it, with `adjust` applied to its settings.
    /// A server without a replicated log (`replicated_log = false`): every commit straight
    /// to its own store.
    pub async fn start_single() -> TestServer {
        TestServer::start_configured(|config| config.replicated_log = false).await
    }

    pub async fn start_configured(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        flagshare::cli::setup::initialize(&test_config(dir.path(), "flagshare-dev"))
            .await
            .unwrap();
        TestServer::start_in_configured(dir, "flagshare-dev", adjust).await
    }

    pub async fn start_in_configured(
        dir: TempDir,
        operator_name: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = test_config(dir.path(), operator_name);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(flagshare::server::run(
            config,
            listener,
            Some(metrics_listener),
            async {
                let _ = stopped.await;
            },
        ));
        let admin = Bundle::load(&dir.path().join("clients").join("admin")).unwrap();
        TestServer {
            addr,
            metrics_addr,
            admin,
            dir: Some(dir),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Stops the server, waits until it closed its database, and hands back the folder.
    pub async fn stop(mut self) -> TempDir {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
        self.dir.take().unwrap()
    }

    pub async fn channel(&self, bundle: &Bundle) -> Channel {
        bundle.connect(Some(&self.endpoint())).await.unwrap()
    }

    pub async fn admin_client(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel(&self.admin).await)
    }

    pub async fn enroll(&self, name: &str, role: Role) -> Bundle {
        let mut admin = self.admin_client().await;
        enroll(&mut admin, name, role, &self.endpoint(), "localhost")
            .await
            .unwrap()
    }

    /// `GET /metrics`, as Prometheus would scrape it.
    pub async fn scrape(&self) -> Metrics {
        Metrics(scrape(self.metrics_addr).await)
    }

    /// A new member principal and a `Flags` client for it.
    pub async fn member(&self, name: &str) -> FlagsClient<Channel> {
        let bundle = self.enroll(name, Role::Member).await;
        FlagsClient::new(self.channel(&bundle).await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn hasher() -> Hasher {
    Hasher::new(&ConsortiumKey::from_parts(1, [42; 32]))
}

pub fn email_digest(address: &str) -> Digest {
    hasher()
        .digest(Kind::Email, address, &NormalizeOptions::default())
        .unwrap()
        .1
}

pub fn flag(digest: Digest, category: pb::Category, confidence: u32) -> pb::Flag {
    pb::Flag {
        digest: digest.to_vec(),
        kind: pb::IdentifierKind::Email as i32,
        category: category as i32,
        confidence,
        observed_at: None,
        expires_at: None,
        reference: Vec::new(),
        distribution: 0,
    }
}

pub fn submit_request(flags: Vec<pb::Flag>) -> pb::SubmitRequest {
    pb::SubmitRequest { flags, key_id: 1 }
}

pub fn query_request(digests: &[Digest]) -> pb::QueryRequest {
    pb::QueryRequest {
        digests: digests.concat().into(),
    }
}

/// Copies folder `from` and everything in it to `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Fails unless `status` has `code` and its message names `fragment`.
pub fn assert_status(status: &tonic::Status, code: tonic::Code, fragment: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(fragment), "{}", status.message());
}

/// Queries `digests` as `client` and returns the matches.
pub async fn query(client: &mut FlagsClient<Channel>, digests: &[Digest]) -> Vec<pb::Match> {
    client.query(query_request(digests)).await.unwrap().into_inner().matches
}

/// Polls `check` until it holds; fails after 60 s naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sets `limits` over `name`'s role defaults (`admin limits set`).
pub async fn set_limits(
    admin: &mut AdminClient<Channel>,
    name: &str,
    limits: pb::Limits,
) -> pb::PrincipalLimitsResponse {
    admin
        .set_principal_limits(pb::SetPrincipalLimitsRequest {
            name: name.to_owned(),
            limits: Some(limits),
            clear: false,
        })
        .await
        .unwrap()
        .into_inner()
}

/// `admin audit verify` on `admin`'s server; fails unless the chain verifies.
pub async fn verified_audit(admin: &mut AdminClient<Channel>) -> pb::VerifyAuditResponse {
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    verified
}

/// How many audit entries of `op` the server holds.
pub async fn audit_count(admin: &mut AdminClient<Channel>, op: &str) -> usize {
    admin
        .list_audit(pb::ListAuditRequest {
            op: op.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .len()
}

/// `server`'s view of its federation peer `name`.
pub async fn peer_status(server: &TestServer, name: &str) -> pb::PeerStatus {
    server
        .admin_client()
        .await
        .list_peers(pb::ListPeersRequest {})
        .await
        .unwrap()
        .into_inner()
        .peers
        .into_iter()
        .find(|peer| peer.config.as_ref().is_some_and(|config| config.name == name))
        .unwrap()
}

/// The body of `GET /metrics` at `addr`, over a plain HTTP/1.1 connection.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// A scrape, read as Prometheus reads it.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name{labels}`, labels given as `a="x",b="y"` in the order
    /// the server writes them; `None` when the scrape has no such sample.
    pub fn value(&self, name: &str, labels: &str) -> Option<f64> {
        let wanted = if labels.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{labels}}}")
        };
        self.0.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == wanted).then(|| value.parse().unwrap())
        })
    }

    /// As `value`, 0 when absent (a counter not yet touched).
    pub fn counter(&self, name: &str, labels: &str) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Names of every metric the scrape declares (`# TYPE` lines), with the names of a
    /// histogram's series (`_bucket`, `_sum`, `_count`).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for line in self.0.lines() {
            let mut words = line.split_whitespace();
            if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                names.insert(name.to_owned());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
        names
    }
}

/// Streams `messages` as one `Import` through `client` and collects every answer, the
/// last one included.
pub async fn import_answers(
    client: &FlagsClient<Channel>,
    messages: Vec<pb::ImportRequest>,
) -> Vec<pb::ImportProgress> {
    let mut answers = client
        .clone()
        .import(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        all.push(answer);
    }
    all
}

/// Digest `i` of an import test.
pub fn imported(i: u32) -> [u8; 32] {
    *blake3::hash(&i.to_be_bytes()).as_bytes()
}

/// Messages of `per_message` flags with digests `from..to`.
pub fn import_messages_of(from: u32, to: u32, per_message: usize) -> Vec<pb::ImportRequest> {
    (from..to)
        .collect::<Vec<_>>()
        .chunks(per_message)
        .map(|chunk| pb::ImportRequest {
            flags: chunk
                .iter()
                .map(|i| flag(imported(*i), pb::Category::Grooming, 60))
                .collect(),
            key_id: 1,
        })
        .collect()
}
