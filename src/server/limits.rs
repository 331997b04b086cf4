//! Per-principal limits: token buckets in memory, one per principal and limit, with the
//! role's defaults from `flagshare.toml` and the overrides an admin set. A call over a
//! limit is refused with RESOURCE_EXHAUSTED naming the limit, and `grpc-retry-pushback-ms`
//! saying when the same call would fit; it is counted in the metrics and audited once per
//! minute per principal and limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tonic::Status;

use crate::config::{Config, RoleLimits};
use crate::domain::{Caller, Domain};
use crate::metrics::Metrics;
use crate::model::{LimitOverrides, PrincipalId, Role};

/// A refusal is audited at most this often per principal and limit.
const AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// A per-second bucket holds at least this much, so a full batch always fits.
const MIN_BURST: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    DigestsQueried,
    FlagsPerSecond,
    FlagsPerDay,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::DigestsQueried => "digests_queried_per_second",
            Limit::FlagsPerSecond => "flags_submitted_per_second",
            Limit::FlagsPerDay => "flags_submitted_per_day",
        }
    }

    /// (tokens per second, bucket size) for a limit of `value`.
    fn shape(self, value: u64) -> (f64, f64) {
        match self {
            Limit::DigestsQueried | Limit::FlagsPerSecond => (value as f64, value.max(MIN_BURST) as f64),
            Limit::FlagsPerDay => (value as f64 / 86_400.0, value as f64),
        }
    }

    fn value(self, limits: &RoleLimits) -> u64 {
        match self {
            Limit::DigestsQueried => limits.digests_queried_per_second,
            Limit::FlagsPerSecond => limits.flags_submitted_per_second,
            Limit::FlagsPerDay => limits.flags_submitted_per_day,
        }
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, size: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(size);
        self.refilled = now;
    }
}

pub struct Limits {
    defaults: HashMap<Role, RoleLimits>,
    overrides: RwLock<HashMap<String, LimitOverrides>>,
    buckets: Mutex<HashMap<(PrincipalId, Limit), Bucket>>,
    audited: Mutex<HashMap<(PrincipalId, Limit), Instant>>,
    domain: Domain,
    metrics: Arc<Metrics>,
}

impl Limits {
    pub async fn load(config: &Config, domain: Domain, metrics: Arc<Metrics>) -> crate::error::Result<Arc<Limits>> {
        let defaults = [Role::Member, Role::Peer, Role::Admin]
            .into_iter()
            .map(|role| (role, config.role_limits(role)))
            .collect();
        let overrides = domain.all_limit_overrides().await?.into_iter().collect();
        Ok(Arc::new(Limits {
            defaults,
            overrides: RwLock::new(overrides),
            buckets: Mutex::new(HashMap::new()),
            audited: Mutex::new(HashMap::new()),
            domain,
            metrics,
        }))
    }

    /// The role's defaults with the principal's overrides on top.
    pub fn effective(&self, name: &str, role: Role) -> RoleLimits {
        let mut limits = self.defaults.get(&role).copied().unwrap_or_default();
        if let Some(set) = self.overrides.read().get(name) {
            limits.digests_queried_per_second = set
                .digests_queried_per_second
                .unwrap_or(limits.digests_queried_per_second);
            limits.flags_submitted_per_second = set
                .flags_submitted_per_second
                .unwrap_or(limits.flags_submitted_per_second);
            limits.flags_submitted_per_day = set.flags_submitted_per_day.unwrap_or(limits.flags_submitted_per_day);
            limits.streams = set.streams.unwrap_or(limits.streams);
        }
        limits
    }

    /// What is set for `name` over its role's defaults (kept in memory since start).
    pub fn overrides_of(&self, name: &str) -> LimitOverrides {
        self.overrides.read().get(name).copied().unwrap_or_default()
    }

    /// After an admin changed a principal's overrides: they apply from the next call.
    pub fn set_overrides(&self, name: &str, overrides: LimitOverrides) {
        let mut all = self.overrides.write();
        if overrides.is_empty() {
            all.remove(name);
        } else {
            all.insert(name.to_owned(), overrides);
        }
        // Buckets refill to the new size as they are next used.
    }

    /// As `take`, but a shortfall that refills within `patience` is waited for instead of
    /// refused: a bulk import slows to its member's rate rather than failing midway (the
    /// stream's flow control holds the client back meanwhile).
    pub async fn take_waiting(
        &self,
        caller: &Caller,
        limits: &[Limit],
        amount: u64,
        patience: Duration,
    ) -> Result<(), Status> {
        let deadline = Instant::now() + patience;
        loop {
            match self.shortfall(caller, limits, amount) {
                None => return self.take(caller, limits, amount),
                Some(retry) if Instant::now().checked_add(retry).is_some_and(|ready| ready <= deadline) => {
                    tokio::time::sleep(retry).await;
                }
                Some(_) => return self.take(caller, limits, amount),
            }
        }
    }

    /// How long until `amount` of each of `limits` is there for `caller` (None: now; a
    /// call that can never fit is `take`'s to refuse).
    fn shortfall(&self, caller: &Caller, limits: &[Limit], amount: u64) -> Option<Duration> {
        let effective = self.effective(&caller.name, caller.role);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let mut longest: Option<Duration> = None;
        for &limit in limits {
            let (rate, size) = limit.shape(limit.value(&effective));
            let Some(bucket) = buckets.get_mut(&(caller.id, limit)) else {
                continue;
            };
            bucket.refill(rate, size, now);
            let needed = amount as f64;
            if needed <= size && bucket.tokens < needed {
                let retry = Duration::try_from_secs_f64((needed - bucket.tokens) / rate).unwrap_or(Duration::MAX);
                longest = Some(longest.map_or(retry, |longest| longest.max(retry)));
            }
        }
        longest
    }

    /// Takes `amount` from each of `limits` for `caller`, all or none.
    pub fn take(&self, caller: &Caller, limits: &[Limit], amount: u64) -> Result<(), Status> {
        let effective = self.effective(&caller.name, caller.role);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let mut wait: Option<(Limit, u64, Duration)> = None;
        for &limit in limits {
            let value = limit.value(&effective);
            let (rate, size) = limit.shape(value);
            let bucket = buckets.entry((caller.id, limit)).or_insert(Bucket {
                tokens: size,
                refilled: now,
            });
            bucket.refill(rate, size, now);
            let needed = amount as f64;
            if needed > size {
                // Can never fit: say so rather than ask for a retry.
                drop(buckets);
                return Err(self.refuse(caller, limit, value, None));
            }
            if bucket.tokens < needed {
                let retry = Duration::from_secs_f64((needed - bucket.tokens) / rate);
                if wait.is_none_or(|(_, _, longest)| retry > longest) {
                    wait = Some((limit, value, retry));
                }
            }
        }
        if let Some((limit, value, retry)) = wait {
            drop(buckets);
            return Err(self.refuse(caller, limit, value, Some(retry)));
        }
        for &limit in limits {
            if let Some(bucket) = buckets.get_mut(&(caller.id, limit)) {
                bucket.tokens -= amount as f64;
            }
        }
        Ok(())
    }

    fn refuse(&self, caller: &Caller, limit: Limit, value: u64, retry: Option<Duration>) -> Status {
        self.metrics
            .limit_refusals
            .get_or_create(&crate::metrics::LimitLabels {
                member: caller.name.clone(),
                limit: limit.name(),
            })
            .inc();
        let message = match retry {
            Some(retry) => format!(
                "limit: '{}' is over its {} of {value} (retry in {} ms, or ask the operator to raise it)",
                caller.name,
                limit.name(),
                retry.as_millis().max(1)
            ),
            None => format!(
                "limit: one call of '{}' asks for more than its whole {} of {value}: send fewer items per call",
                caller.name,
                limit.name()
            ),
        };
        self.audit(caller, limit, &message);
        let mut status = Status::resource_exhausted(message);
        if let Some(retry) = retry
            && let Ok(value) = retry.as_millis().max(1).to_string().parse()
        {
            status.metadata_mut().insert("grpc-retry-pushback-ms", value);
        }
        status
    }

    fn audit(&self, caller: &Caller, limit: Limit, message: &str) {
        let now = Instant::now();
        {
            let mut audited = self.audited.lock();
            let key = (caller.id, limit);
            if audited
                .get(&key)
                .is_some_and(|at| now.saturating_duration_since(*at) < AUDIT_WINDOW)
            {
                return;
            }
            audited.insert(key, now);
        }
        let domain = self.domain.clone();
        let caller = caller.clone();
        let detail = message.to_owned();
        tokio::spawn(async move {
            if let Err(err) = domain.record_limit_exceeded(caller, detail).await {
                tracing::warn!(%err, "could not audit a refusal by limit");
            }
        });
    }
}
