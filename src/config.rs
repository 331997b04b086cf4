//! Server configuration: defaults that run a development server with no flags, overridable
//! by `<data>/flagshare.toml` and then by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where `flagshare serve` keeps everything when no `--data` is given.
pub const DEFAULT_DATA_DIR: &str = "flagshare-data";
/// Loopback by default: a development server is not reachable from the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051"; // `Config::default().listen` says the same

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Holds `pki/`, `db/` and `clients/`.
    pub data_dir: PathBuf,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Names the server certificate is issued for (DNS names or IP addresses), used when the
    /// PKI is created. Clients must reach the server under one of them.
    pub host_names: Vec<String>,
    /// The operator's name, written into its CA certificate.
    pub operator_name: String,
    /// Acknowledge a write only after its WAL record reached the disk (fsync). Turning it
    /// off trades the last few writes before a power loss for throughput.
    pub sync_writes: bool,
    /// Size of the RocksDB block cache, in MiB.
    pub block_cache_mib: usize,
    /// How long a flag matches when its member gave no expiry, in days.
    pub default_flag_ttl_days: u32,
    /// Per-category overrides of `default_flag_ttl_days`, e.g. `{ grooming = 1095 }`.
    pub flag_ttl_days: std::collections::BTreeMap<String, u32>,
    /// How long audit entries are kept, in days.
    pub audit_retention_days: u32,
    /// Distribution of a flag whose member did not choose: `federated` (shared with
    /// federation peers, as their policies allow) or `local` (this operator's members only).
    pub default_distribution: String,
    /// Seconds between maintenance passes (purging expired flags, pruning the audit log).
    pub maintenance_interval_secs: u64,
    /// Response streams (`Subscribe`, `QueryStream`, `Pull`) one principal may hold open at
    /// once: each costs a task and a few buffered batches, so one member cannot hold
    /// thousands.
    pub max_streams_per_principal: usize,
    /// Members of one other operator this server keeps, learnt through federation: what a
    /// peer can make this server remember is bounded.
    pub max_foreign_members_per_origin: usize,
    /// How long the thin tombstone of a retracted or expired flag stays in the change log
    /// (like Cassandra's gc_grace_seconds): a mirror or peer away longer than this starts
    /// again with a snapshot.
    pub tombstone_retention_secs: u64,
    /// A connection from which nothing arrives for this long is closed (a stalled TLS
    /// handshake included; live connections answer the server's pings every 20 s).
    pub idle_connection_secs: u64,
    /// What one principal of a role may cost (`[limits.member]`, `[limits.peer]`,
    /// `[limits.admin]`); `flagshare admin member limits` overrides them per principal.
    pub limits: std::collections::BTreeMap<String, RoleLimits>,
    /// A unary call still unanswered after this many seconds is ended with
    /// DEADLINE_EXCEEDED (a client's shorter `grpc-timeout` wins).
    pub request_timeout_secs: u64,
    /// TCP connections open at once on the gRPC port; one more is closed at accept.
    pub max_connections: usize,
    /// New flags one member may commit per hour before its further new flags are
    /// quarantined (held back from everyone else until an admin releases them); 0 turns the
    /// quarantine off.
    pub quarantine_new_flags_per_hour: u64,
    /// Count RocksDB block cache hits and write stalls for the metrics endpoint. Off by
    /// default: it costs lookups with hits about a tenth of their throughput.
    pub rocksdb_statistics: bool,
    /// `text` (for a terminal) or `json` (one object per line, for log shippers).
    pub log_format: String,
    /// Every commit goes through this server's Raft log: a one-node cluster, which
    /// `admin cluster invite` / `add-node` grow. On by default; off, every commit goes
    /// straight to the server's own store (a data folder made before it was the default
    /// says so in its `flagshare.toml`, and stays as it was).
    pub replicated_log: bool,
    /// With `replicated_log`: the client bundle (a certificate with the `node` role from
    /// this operator's CA) this node calls the other nodes with; relative to the data
    /// folder. Empty: this node calls no other (a one-node cluster).
    pub cluster_credentials: String,
    /// With `replicated_log`: this node's id in its cluster (1 for the first node; each
    /// node its own).
    pub node_id: u64,
    /// With `replicated_log`, on a node made by `init --join`: SHA-256 (hex) of the client
    /// certificates of the cluster's nodes when it was invited. Until the node holds its
    /// cluster's state (a snapshot from the leader), it serves only the `Cluster` service,
    /// to these certificates; a node that never held a log starts as a new cluster
    /// without them.
    pub join_trusted_nodes: Vec<String>,
    /// With `replicated_log`: how long a node cut off from its cluster's majority (a
    /// follower that knows no leader, a leader no majority has answered) keeps answering
    /// reads from what it has; past it, its health is NOT_SERVING and reads are refused.
    pub max_staleness_secs: u64,
    /// Address of the plain-HTTP Prometheus endpoint (`GET /metrics`); empty turns it off.
    /// Loopback by default: the figures name members and peers.
    pub metrics_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            host_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()],
            operator_name: "flagshare-dev".to_owned(),
            sync_writes: true,
            block_cache_mib: 256,
            default_flag_ttl_days: 730,
            flag_ttl_days: Default::default(),
            // Seven years: the usual horizon for records that may be asked for in court.
            audit_retention_days: 7 * 365,
            maintenance_interval_secs: 600,
            default_distribution: "federated".to_owned(),
            max_streams_per_principal: 32,
            max_foreign_members_per_origin: crate::domain::DEFAULT_MAX_FOREIGN_MEMBERS_PER_ORIGIN,
            // Thirty days: longer than a mirror or peer is expected to be down.
            tombstone_retention_secs: 30 * 24 * 3600,
            idle_connection_secs: 45,
            metrics_listen: DEFAULT_METRICS_LISTEN.to_owned(),
            replicated_log: true,
            cluster_credentials: String::new(),
            node_id: 1,
            join_trusted_nodes: Vec::new(),
            max_staleness_secs: 10,
            limits: std::collections::BTreeMap::new(),
            request_timeout_secs: 60,
            max_connections: 4096,
            log_format: "text".to_owned(),
            rocksdb_statistics: false,
            quarantine_new_flags_per_hour: DEFAULT_QUARANTINE_NEW_FLAGS_PER_HOUR,
        }
    }
}

/// Limits of one role, per principal. Generous by default: they stop a runaway job or a
/// stolen bundle, not a platform's normal peak (the README's benchmarks run under them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleLimits {
    pub digests_queried_per_second: u64,
    pub flags_submitted_per_second: u64,
    pub flags_submitted_per_day: u64,
    /// Streams open at once; 0 means `max_streams_per_principal`.
    pub streams: u32,
}

impl Default for RoleLimits {
    fn default() -> Self {
        RoleLimits {
            digests_queried_per_second: 5_000_000,
            flags_submitted_per_second: 1_000_000,
            flags_submitted_per_day: 100_000_000,
            streams: 0,
        }
    }
}

/// A platform's daily reports are far below this; a leaked bundle or a runaway job that
/// floods the shared list is held back past it. A back-catalogue import needs an admin's
/// release (or a higher setting while it runs).
pub const DEFAULT_QUARANTINE_NEW_FLAGS_PER_HOUR: u64 = 100_000;

/// Where the metrics endpoint listens unless `metrics_listen` says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

impl Config {
    /// The metrics endpoint's address, or `None` when it is off.
    pub fn metrics_address(&self) -> anyhow::Result<Option<SocketAddr>> {
        let text = self.metrics_listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            anyhow::anyhow!("metrics_listen: '{text}' is not an address such as 127.0.0.1:9464 (empty turns it off)")
        })
    }

    /// Reads `<data_dir>/flagshare.toml` when it exists, else the defaults for `data_dir`.
    pub fn load(data_dir: &Path) -> anyhow::Result<Config> {
        let path = data_dir.join("flagshare.toml");
        let mut config = if path.exists() {
            let text = std::fs::read_to_string(&path)?;
            toml::from_str::<Config>(&text).map_err(|err| anyhow::anyhow!("{}: {}", path.display(), err.message()))?
        } else {
            Config::default()
        };
        config.data_dir = data_dir.to_owned();
        config
            .policy()
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        anyhow::ensure!(
            config.maintenance_interval_secs > 0,
            "{}: maintenance_interval_secs must be at least 1",
            path.display()
        );
        anyhow::ensure!(
            config.idle_connection_secs > 0,
            "{}: idle_connection_secs must be at least 1",
            path.display()
        );
        config
            .metrics_address()
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        for (role, limits) in &config.limits {
            anyhow::ensure!(
                matches!(role.as_str(), "member" | "peer" | "admin"),
                "{}: limits.{role}: unknown role (expected member, peer or admin)",
                path.display()
            );
            anyhow::ensure!(
                limits.digests_queried_per_second > 0
                    && limits.flags_submitted_per_second > 0
                    && limits.flags_submitted_per_day > 0,
                "{}: limits.{role}: every rate must be at least 1",
                path.display()
            );
        }
        anyhow::ensure!(
            matches!(config.log_format.as_str(), "text" | "json"),
            "{}: log_format: '{}' is not text or json",
            path.display(),
            config.log_format
        );
        anyhow::ensure!(
            config.max_staleness_secs > 0,
            "{}: max_staleness_secs must be at least 1",
            path.display()
        );
        anyhow::ensure!(
            config.request_timeout_secs > 0 && config.max_connections > 0,
            "{}: request_timeout_secs and max_connections must be at least 1",
            path.display()
        );
        anyhow::ensure!(
            config.max_streams_per_principal > 0,
            "{}: max_streams_per_principal must be at least 1",
            path.display()
        );
        Ok(config)
    }

    /// The limits of `role` from `[limits.<role>]`, or the defaults.
    pub fn role_limits(&self, role: crate::model::Role) -> RoleLimits {
        let mut limits = self.limits.get(role.as_str()).copied().unwrap_or_default();
        if limits.streams == 0 {
            limits.streams = u32::try_from(self.max_streams_per_principal).unwrap_or(u32::MAX);
        }
        limits
    }

    pub fn db_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// The node's credentials for calling other nodes, if set.
    pub fn cluster_credentials_dir(&self) -> Option<PathBuf> {
        (!self.cluster_credentials.is_empty()).then(|| self.data_dir.join(&self.cluster_credentials))
    }

    pub fn clients_dir(&self) -> PathBuf {
        self.data_dir.join("clients")
    }

    /// The name clients use to check the server certificate.
    pub fn server_name(&self) -> &str {
        self.host_names.first().map(String::as_str).unwrap_or("localhost")
    }

    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            block_cache_bytes: self.block_cache_mib << 20,
            sync_writes: self.sync_writes,
            statistics: self.rocksdb_statistics,
            replicated: self.replicated_log,
        }
    }

    /// The flag expiry policy; fails on an unknown category in `flag_ttl_days`.
    pub fn policy(&self) -> Result<crate::domain::Policy, String> {
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        let mut default_ttl_ms: std::collections::HashMap<_, _> = crate::model::Category::ALL
            .iter()
            .map(|category| (*category, i64::from(self.default_flag_ttl_days) * DAY_MS))
            .collect();
        // A flag that expires as it is written would be stored, sent and purged for nothing.
        if self.default_flag_ttl_days == 0 {
            return Err("default_flag_ttl_days: must be at least 1".to_owned());
        }
        for (name, days) in &self.flag_ttl_days {
            let category: crate::model::Category = name.parse().map_err(|err| format!("flag_ttl_days: {err}"))?;
            if *days == 0 {
                return Err(format!("flag_ttl_days.{name}: must be at least 1"));
            }
            default_ttl_ms.insert(category, i64::from(*days) * DAY_MS);
        }
        let default_distribution = self
            .default_distribution
            .parse()
            .map_err(|err| format!("default_distribution: {err}"))?;
        Ok(crate::domain::Policy {
            default_ttl_ms,
            default_distribution,
            operator_name: self.operator_name.clone(),
            max_foreign_members_per_origin: self.max_foreign_members_per_origin,
            quarantine_new_flags_per_hour: self.quarantine_new_flags_per_hour,
        })
    }

    pub fn audit_retention_ms(&self) -> i64 {
        i64::from(self.audit_retention_days) * 24 * 60 * 60 * 1000
    }

    /// What the maintenance task keeps, and for how long.
    pub fn retention(&self) -> crate::domain::Retention {
        crate::domain::Retention {
            audit_ms: self.audit_retention_ms(),
            tombstone_ms: i64::try_from(self.tombstone_retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Category;

    #[test]
    fn per_category_ttls_override_the_default_and_unknown_categories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("flagshare.toml"),
            "default_flag_ttl_days = 10\nflag_ttl_days = { grooming = 3 }\naudit_retention_days = 2\n",
        )
        .unwrap();
        let config = Config::load(dir.path()).unwrap();
        let policy = config.policy().unwrap();
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        assert_eq!(policy.default_ttl_ms[&Category::Grooming], 3 * DAY_MS);
        assert_eq!(policy.default_ttl_ms[&Category::Sextortion], 10 * DAY_MS);
        assert_eq!(config.audit_retention_ms(), 2 * DAY_MS);

        std::fs::write(dir.path().join("flagshare.toml"), "flag_ttl_days = { spam = 3 }\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("flag_ttl_days: unknown category 'spam'"), "{err}");

        std::fs::write(dir.path().join("flagshare.toml"), "default_flag_ttl_days = 0\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("default_flag_ttl_days: must be at least 1"), "{err}");
        std::fs::write(dir.path().join("flagshare.toml"), "flag_ttl_days = { grooming = 0 }\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("flag_ttl_days.grooming: must be at least 1"), "{err}");
    }
}
