//! The `flagshare` binary as a child process: one-shot commands and a `serve` process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn flagshare(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flagshare"))
        .args(args)
        .env_remove("FLAGSHARE_BUNDLE")
        .env_remove("FLAGSHARE_KEY")
        .output()
        .unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A `flagshare serve` child process, stopped with SIGTERM on drop.
pub struct ServeProcess {
    child: Child,
    port: u16,
    /// Where its metrics endpoint listens, once its log said so.
    metrics: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
}

impl ServeProcess {
    pub fn start(data: &Path) -> ServeProcess {
        ServeProcess::start_on(data, 0)
    }

    /// As `start`, listening on `port` of 127.0.0.1 (0: any free one), so that a node
    /// restarted keeps the address its cluster knows. Its log goes to `<data>/serve.log`.
    pub fn start_on(data: &Path, port: u16) -> ServeProcess {
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_flagshare"))
            .args([
                "serve",
                "--data",
                path(data),
                "--listen",
                &listen,
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found, port) = std::sync::mpsc::channel();
        let metrics = std::sync::Arc::new(std::sync::Mutex::new(None));
        let metrics_found = metrics.clone();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("serve.log"))
            .unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write as _;
                let _ = writeln!(log, "{line}");
                if let Some(address) = line.split("metrics at http://").nth(1)
                    && let Some(Ok(address)) = address.split('/').next().map(str::parse)
                {
                    *metrics_found.lock().unwrap() = Some(address);
                }
                if let Some(address) = line.split("listening on ").nth(1) {
                    let port: u16 = address
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let _ = found.send(port);
                }
            }
        });
        let port = port
            .recv_timeout(Duration::from_secs(60))
            .expect("the server prints its address within a minute");
        ServeProcess { child, port, metrics }
    }

    /// `GET /metrics` of this server (its endpoint as its log names it, waited for).
    pub async fn scrape(&self) -> super::Metrics {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let address = loop {
            if let Some(address) = *self.metrics.lock().unwrap() {
                break address;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server names its metrics endpoint"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        super::Metrics(super::scrape(address).await)
    }

    /// The server's resident memory now, in bytes (Linux `/proc`).
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap();
        kib * 1024
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends `signal` ("STOP", "CONT", ...) to the server.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// SIGKILL: no shutdown of any kind. Returns once the process is gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_within(Duration::from_secs(30))
    }

    /// Sends SIGTERM; fails unless the server exits within `limit`.
    pub fn stop_within(mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server must stop within {limit:?} of SIGTERM"
            );
            // A plain test thread, not a runtime worker: polling the child is fine here.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// `flagshare admin --bundle <data>/clients/admin --endpoint <server> ARGS...`
pub fn admin(data: &Path, server: &ServeProcess, args: &[&str]) -> Output {
    let bundle = data.join("clients").join("admin");
    let endpoint = server.endpoint();
    let mut all = vec!["admin", "--bundle", path(&bundle), "--endpoint", &endpoint];
    all.extend_from_slice(args);
    flagshare(&all)
}

/// Runs a command that must succeed and returns its stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

/// Parses JSON-lines output.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
