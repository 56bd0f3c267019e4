//! Client-side load balancing over a discovery query.
//!
//! A [`Balancer`] picks one instance per request from the cached answer of
//! its query. Strategies: [`Strategy::RoundRobin`], [`Strategy::Random`],
//! [`Strategy::Weighted`] (by instance weight),
//! [`Strategy::PowerOfTwoChoices`] (of two random instances, the one with
//! fewer outstanding requests) and [`Strategy::LeastOutstanding`] (the
//! instance with the fewest outstanding requests). Any other rule plugs in
//! with [`Balancer::choose_with`] and the [`Choose`] trait. [`Balancer::prefer_zone`] restricts picks
//! to one zone while it has a usable instance and falls back to the others.
//!
//! Every pick returns a [`Pick`] guard: it counts as an outstanding request
//! until dropped. [`Pick::report_failure`] ejects the instance for a
//! back-off that doubles with consecutive failures (passive outlier
//! ejection); [`Pick::report_success`] resets it. When nothing is left to
//! pick, [`Balancer::pick`] fails at once with
//! [`Error::NoHealthyInstance`](crate::Error::NoHealthyInstance).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use muster_types::{Health, Instance};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cache::Snapshot;
use crate::discovery::Discovery;
use crate::error::{Error, Result};

/// How a [`Balancer`] chooses among usable instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Each instance in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// At random, in proportion to each instance's `weight`.
    Weighted,
    /// Two distinct instances at random; the one with fewer outstanding
    /// requests (picks not yet dropped) wins.
    PowerOfTwoChoices,
    /// The instance with the fewest outstanding requests (least
    /// connections); ties go to each in turn.
    LeastOutstanding,
}

/// An instance a [`Choose`] may pick: usable (not critical, not ejected,
/// in the preferred zone when it has any).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The instance.
    pub instance: &'a Instance,
    /// Its outstanding requests through this balancer (picks not yet
    /// dropped).
    pub outstanding: usize,
}

/// A custom balancing rule, for [`Balancer::choose_with`]: health,
/// ejection, zone preference and the outstanding-request bookkeeping stay
/// the balancer's; the rule only chooses.
///
/// ```
/// use muster_client::{Balancer, Candidate, Choose, Strategy};
///
/// /// The heaviest instance, always (e.g. a primary).
/// struct Heaviest;
/// impl Choose for Heaviest {
///     fn choose(&self, candidates: &[Candidate<'_>], _random: u64) -> usize {
///         (0..candidates.len())
///             .max_by_key(|&k| candidates[k].instance.weight)
///             .unwrap_or(0)
///     }
/// }
/// let b = Balancer::fixed(Vec::new(), Strategy::RoundRobin).choose_with(Heaviest);
/// # drop(b);
/// ```
pub trait Choose: Send + Sync + 'static {
    /// The index in `candidates` (never empty) of the instance to use.
    /// `random` is a fresh random number from the balancer's generator
    /// (seeded by [`Balancer::seed`]). An index out of range is taken
    /// modulo the number of candidates.
    fn choose(&self, candidates: &[Candidate<'_>], random: u64) -> usize;
}

/// Per-instance bookkeeping, shared by the picks of that instance.
#[derive(Debug, Default)]
struct Stat {
    outstanding: AtomicUsize,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Stat {
    fn ejected(&self, now: Instant) -> bool {
        matches!(*self.ejected_until.lock().unwrap_or_else(PoisonError::into_inner), Some(t) if t > now)
    }
}

struct State {
    rng: StdRng,
    next: usize,
    stats: HashMap<muster_types::CompactString, Arc<Stat>>,
    /// Index of the snapshot `stats` was last pruned against.
    pruned_at: u64,
}

enum Source {
    Query(Box<Discovery>),
    Fixed(Snapshot),
}

/// Picks instances of a query; build one with
/// [`Discovery::balancer`](crate::Discovery::balancer) or, for a fixed
/// list, [`Balancer::fixed`].
pub struct Balancer {
    source: Source,
    strategy: Strategy,
    zone: Option<String>,
    eject_base: Duration,
    eject_max: Duration,
    chooser: Option<Arc<dyn Choose>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("strategy", &self.strategy)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    fn with_source(source: Source, strategy: Strategy) -> Self {
        Balancer {
            source,
            strategy,
            zone: None,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            chooser: None,
            state: Mutex::new(State {
                rng: StdRng::from_os_rng(),
                next: 0,
                stats: HashMap::new(),
                pruned_at: 0,
            }),
        }
    }

    pub(crate) fn over(discovery: Discovery, strategy: Strategy) -> Self {
        Self::with_source(Source::Query(Box::new(discovery)), strategy)
    }

    /// A balancer over a fixed list of instances (static configuration,
    /// tests).
    pub fn fixed(instances: Vec<Instance>, strategy: Strategy) -> Self {
        Self::with_source(Source::Fixed(Snapshot::from_instances(instances)), strategy)
    }

    /// Seeds the random choices, so a test sees the same sequence each run.
    pub fn seed(self, seed: u64) -> Self {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rng = StdRng::seed_from_u64(seed);
        self
    }

    /// Prefers instances of `zone`; other zones are used only when it has
    /// no usable instance.
    pub fn prefer_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Ejection after a reported failure: `base` after the first consecutive
    /// failure, doubling up to `max` (defaults 1 s and 30 s).
    pub fn ejection(mut self, base: Duration, max: Duration) -> Self {
        self.eject_base = base;
        self.eject_max = max.max(base);
        self
    }

    /// Chooses with `rule` instead of the strategy.
    pub fn choose_with(mut self, rule: impl Choose) -> Self {
        self.chooser = Some(Arc::new(rule));
        self
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks an instance. The cached answer is used (a warm query makes no
    /// network call); fails at once when no instance is usable.
    pub async fn pick(&self) -> Result<Pick> {
        let snapshot = match &self.source {
            Source::Query(d) => d.get().await?,
            Source::Fixed(s) => s.clone(),
        };
        self.pick_from(&snapshot)
    }

    /// Picks an instance from `snapshot` (which must come from the same
    /// query for the per-instance bookkeeping to make sense).
    pub fn pick_from(&self, snapshot: &Snapshot) -> Result<Pick> {
        let now = Instant::now();
        let instances = snapshot.instances();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if snapshot.index() != st.pruned_at {
            st.pruned_at = snapshot.index();
            st.stats.retain(|id, _| snapshot.get(id).is_some());
        }
        let mut usable: Vec<(usize, Arc<Stat>)> = Vec::with_capacity(instances.len());
        let mut ejected = 0;
        for (i, inst) in instances.iter().enumerate() {
            if inst.health == Health::Critical {
                continue;
            }
            let stat = st.stats.entry(inst.id.clone()).or_default().clone();
            if stat.ejected(now) {
                ejected += 1;
                continue;
            }
            usable.push((i, stat));
        }
        if let Some(zone) = &self.zone
            && usable
                .iter()
                .any(|(i, _)| instances[*i].zone.as_deref() == Some(zone))
        {
            usable.retain(|(i, _)| instances[*i].zone.as_deref() == Some(zone));
        }
        if usable.is_empty() {
            return Err(Error::NoHealthyInstance {
                query: self.describe(),
                matching: instances.len(),
                ejected,
            });
        }
        let n = usable.len();
        let load = |k: usize| usable[k].1.outstanding.load(Ordering::Relaxed);
        let chosen = match (&self.chooser, self.strategy) {
            (Some(rule), _) => {
                let candidates: Vec<Candidate<'_>> = (0..n)
                    .map(|k| Candidate {
                        instance: &instances[usable[k].0],
                        outstanding: load(k),
                    })
                    .collect();
                let random = st.rng.random::<u64>();
                rule.choose(&candidates, random) % n
            }
            (None, strategy) => match strategy {
                Strategy::RoundRobin => {
                    let k = st.next % n;
                    st.next = st.next.wrapping_add(1);
                    k
                }
                Strategy::Random => st.rng.random_range(0..n),
                Strategy::Weighted => {
                    let total: u64 = usable
                        .iter()
                        .map(|(i, _)| u64::from(instances[*i].weight.max(1)))
                        .sum();
                    let mut r = st.rng.random_range(0..total);
                    let mut k = 0;
                    for (j, (i, _)) in usable.iter().enumerate() {
                        let w = u64::from(instances[*i].weight.max(1));
                        if r < w {
                            k = j;
                            break;
                        }
                        r -= w;
                    }
                    k
                }
                Strategy::PowerOfTwoChoices => {
                    if n == 1 {
                        0
                    } else {
                        let a = st.rng.random_range(0..n);
                        let mut b = st.rng.random_range(0..n - 1);
                        if b >= a {
                            b += 1;
                        }
                        if load(b) < load(a) { b } else { a }
                    }
                }
                Strategy::LeastOutstanding => {
                    // Scan from a rotating start so ties take turns.
                    let start = st.next % n;
                    st.next = st.next.wrapping_add(1);
                    (0..n)
                        .map(|j| (start + j) % n)
                        .min_by_key(|&k| load(k))
                        .unwrap_or(0)
                }
            },
        };
        drop(st);
        let (index, stat) = usable.swap_remove(chosen);
        stat.outstanding.fetch_add(1, Ordering::Relaxed);
        Ok(Pick {
            instances: snapshot.shared(),
            index,
            stat,
            eject_base: self.eject_base,
            eject_max: self.eject_max,
        })
    }

    /// Outstanding picks of the instance `id` (for observation and tests).
    pub fn outstanding(&self, id: &str) -> usize {
        self.state
            .lock()
            .expect("balancer lock")
            .stats
            .get(id)
            .map_or(0, |s| s.outstanding.load(Ordering::Relaxed))
    }

    fn describe(&self) -> String {
        match &self.source {
            Source::Query(d) => d.query().to_string(),
            Source::Fixed(_) => "a fixed list".into(),
        }
    }
}

/// One picked instance; an outstanding request until dropped.
pub struct Pick {
    instances: Arc<[Instance]>,
    index: usize,
    stat: Arc<Stat>,
    eject_base: Duration,
    eject_max: Duration,
}

impl std::fmt::Debug for Pick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pick")
            .field("id", &self.instance().id)
            .finish_non_exhaustive()
    }
}

impl Pick {
    /// The instance picked.
    pub fn instance(&self) -> &Instance {
        &self.instances[self.index]
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.instance().id
    }

    /// `address:port`, ready for a URL (IPv6 addresses in brackets).
    pub fn authority(&self) -> String {
        let i = self.instance();
        if i.address.contains(':') {
            format!("[{}]:{}", i.address, i.port)
        } else {
            format!("{}:{}", i.address, i.port)
        }
    }

    /// The request failed: eject the instance for a back-off that doubles
    /// with each consecutive failure.
    pub fn report_failure(self) {
        let n = self.stat.failures.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX);
        let backoff = self.eject_base.saturating_mul(factor).min(self.eject_max);
        *self
            .stat
            .ejected_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + backoff);
        metrics::counter!(crate::metrics::EJECTIONS).increment(1);
    }

    /// The request succeeded: consecutive failures start again from zero.
    pub fn report_success(self) {
        self.stat.failures.store(0, Ordering::Relaxed);
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.stat.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}
