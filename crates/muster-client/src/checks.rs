//! Health checks, check reports and maintenance.
//!
//! A [`HealthCheck`] is a check the registry runs (HTTP, TCP, gRPC) or
//! expects reports for (TTL), added to a registration with
//! [`InstanceSpec::check`](crate::InstanceSpec::check). An instance with
//! checks is `critical` until its first check passes (unless the check
//! sets another [`HealthCheck::initial_status`]), so callers never get an
//! instance that is not serving yet.
//!
//! A TTL check passes only while the service reports within its TTL:
//! [`Registration::report`](crate::Registration::report). Maintenance
//! takes an instance out of discovery without deregistering it:
//! [`Registration::set_maintenance`](crate::Registration::set_maintenance).
//! Both are kept by the client and applied again when it registers the
//! instance anew after the registry lost its lease.

use std::time::Duration;

use muster_types::{CheckReport, CheckSpec, Health, Instance, MaintenanceRequest, format_duration};
use reqwest::Method;

use crate::api::Api;
use crate::error::Result;
use crate::transport::{Req, json};

/// A health check of an instance, in the shape Consul users know.
///
/// ```
/// use std::time::Duration;
/// use muster_client::{HealthCheck, InstanceSpec};
///
/// let spec = InstanceSpec::new("payments", "pay-1", "10.0.0.5", 8080)
///     .check(HealthCheck::http("http://10.0.0.5:8080/health", Duration::from_secs(10))
///         .timeout(Duration::from_secs(2))
///         .deregister_critical_after(Duration::from_secs(600)))
///     .check(HealthCheck::ttl(Duration::from_secs(30)).id("worker"));
/// assert_eq!(spec.checks().len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    spec: CheckSpec,
}

impl HealthCheck {
    fn with(interval: Option<Duration>, f: impl FnOnce(&mut CheckSpec)) -> Self {
        let mut spec = CheckSpec {
            interval: interval.map(format_duration),
            ..CheckSpec::default()
        };
        f(&mut spec);
        HealthCheck { spec }
    }

    /// An HTTP request to `url` every `interval`: 2xx is passing, 429
    /// warning, anything else (or no answer) critical.
    pub fn http(url: impl Into<String>, interval: Duration) -> Self {
        Self::with(Some(interval), |s| s.http = Some(url.into()))
    }

    /// A TCP connect to `host:port` every `interval`.
    pub fn tcp(addr: impl Into<String>, interval: Duration) -> Self {
        Self::with(Some(interval), |s| s.tcp = Some(addr.into()))
    }

    /// The gRPC health protocol (`grpc.health.v1.Health/Check`) against
    /// `host:port` or `host:port/service` every `interval`.
    pub fn grpc(target: impl Into<String>, interval: Duration) -> Self {
        Self::with(Some(interval), |s| s.grpc = Some(target.into()))
    }

    /// Passing only while the service reports within `ttl`
    /// ([`Registration::report`](crate::Registration::report)).
    pub fn ttl(ttl: Duration) -> Self {
        Self::with(None, |s| s.ttl = Some(format_duration(ttl)))
    }

    /// The check's id within the instance (default `check-N` by position):
    /// what [`Registration::report`](crate::Registration::report) names.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.spec.id = Some(id.into());
        self
    }

    /// A human-readable name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.spec.name = Some(name.into());
        self
    }

    /// The time a run may take (default the smaller of 10 s and the
    /// interval).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.timeout = Some(format_duration(timeout));
        self
    }

    /// The HTTP method of an HTTP check (default GET).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.spec.method = Some(method.into());
        self
    }

    /// A request header of an HTTP check.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.headers.insert(name.into(), value.into());
        self
    }

    /// The status before the first result (default critical).
    pub fn initial_status(mut self, status: Health) -> Self {
        self.spec.status = Some(status);
        self
    }

    /// Removes the instance once the check has been critical this long.
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.spec.deregister_critical_after = Some(format_duration(after));
        self
    }

    /// Consecutive successes before the check turns passing (default 1).
    pub fn success_before_passing(mut self, n: u32) -> Self {
        self.spec.success_before_passing = Some(n);
        self
    }

    /// Consecutive failures before the check turns critical (default 1).
    pub fn failures_before_critical(mut self, n: u32) -> Self {
        self.spec.failures_before_critical = Some(n);
        self
    }

    /// Free-form notes for operators.
    pub fn notes(mut self, notes: impl Into<String>) -> Self {
        self.spec.notes = Some(notes.into());
        self
    }

    /// The check as the registry's API takes it.
    pub fn spec(&self) -> &CheckSpec {
        &self.spec
    }

    pub(crate) fn into_spec(self) -> CheckSpec {
        self.spec
    }
}

/// What a service reports for a TTL check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    /// Healthy: the instance is passing.
    Pass,
    /// Degraded: the instance is warning.
    Warn,
    /// Failing: the instance is critical.
    Fail,
}

impl CheckStatus {
    fn path(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        }
    }
}

impl Api {
    /// `PUT .../instances/{id}/checks/{check}/pass|warn|fail`: reports the
    /// status of a TTL check, with an optional output (at most 4 KiB kept).
    pub async fn report_check(
        &self,
        service: &str,
        id: &str,
        check: &str,
        status: CheckStatus,
        output: Option<&str>,
    ) -> Result<()> {
        let path = format!(
            "/v1/services/{service}/instances/{id}/checks/{check}/{}",
            status.path()
        );
        let q = [self.ns()];
        let body = CheckReport {
            output: output.map(str::to_string),
        };
        // Refusals come back as errors from `send`; the answer has no body.
        self.transport
            .send(
                Req::new(
                    Method::PUT,
                    "/v1/services/{service}/instances/{id}/checks/{check}/{status}",
                )
                .at(&path)
                .query(&q)
                .json(&body),
            )
            .await?;
        Ok(())
    }

    /// `PUT .../instances/{id}/maintenance`: takes the instance out of
    /// discovery (`reason` given) or puts it back (`None`).
    pub async fn maintenance(
        &self,
        service: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<Instance> {
        let path = format!("/v1/services/{service}/instances/{id}/maintenance");
        let q = [self.ns()];
        let body = MaintenanceRequest {
            enabled: reason.is_some(),
            reason: reason.map(str::to_string),
        };
        let resp = self
            .transport
            .send(
                Req::new(
                    Method::PUT,
                    "/v1/services/{service}/instances/{id}/maintenance",
                )
                .at(&path)
                .query(&q)
                .json(&body),
            )
            .await?;
        json(resp).await
    }
}
