//! Names of the metrics the client records through the `metrics` crate.
//! Install any `metrics` recorder (e.g. a Prometheus exporter) to see them.

/// Counter: lookups answered from a warm cache entry.
pub const CACHE_HITS: &str = "muster_client_cache_hits_total";
/// Counter: lookups that had to wait for a first snapshot.
pub const CACHE_MISSES: &str = "muster_client_cache_misses_total";
/// Histogram: seconds a lookup took.
pub const LOOKUP_SECONDS: &str = "muster_client_lookup_seconds";
/// Counter: successful lease renewals.
pub const RENEWALS: &str = "muster_client_lease_renewals_total";
/// Counter: failed lease renewal attempts.
pub const RENEWAL_FAILURES: &str = "muster_client_lease_renewal_failures_total";
/// Counter: instances registered again after the registry lost the lease.
pub const REREGISTRATIONS: &str = "muster_client_reregistrations_total";
/// Counter: instances ejected by a balancer after a reported failure.
pub const EJECTIONS: &str = "muster_client_ejections_total";
/// Gauge: watch streams the client holds open (one for all its lookups,
/// more only past the per-stream limits or briefly while lookups are added).
pub const WATCH_STREAMS: &str = "muster_client_watch_streams";
