//! Server-run health checks. The leader runs every check of every instance:
//! HTTP, TCP, gRPC health, command (opt-in) and TTL checks reported by
//! clients. Only a *status transition* is written to the log (as
//! `CheckStatus`); a run that confirms the current status, or changes only
//! the output, writes nothing. The last output and run time live here, in
//! memory, and are shown on single-instance reads.
//!
//! Checks are started and stopped by reconciling a service whenever the log
//! changes it, so a check whose instance is deregistered stops at once.
//! Runs start at a random point of their interval (spreading load) and a
//! semaphore bounds how many probes run at the same time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_catalog::{Catalog, Check, Command, ServiceKey};
use muster_raft::{Node, ProposeError};
use muster_types::{CheckKind, Health, truncate_output};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::cache::lock;

type TaskKey = (ServiceKey, String, String);

/// What the node running a check last saw of it, beyond what the log
/// records.
#[derive(Debug, Clone, Default)]
pub struct CheckRun {
    /// Unix milliseconds of the last run or report.
    pub last_run_ms: Option<u64>,
    /// Its output.
    pub last_output: Option<String>,
}

struct Running {
    fingerprint: Check,
    task: JoinHandle<()>,
    reports: Option<mpsc::Sender<Report>>,
    runtime: Arc<Mutex<CheckRun>>,
}

/// A TTL report on its way to the check's task, with where to answer once
/// the status it reports is committed (or was already the status).
struct Report {
    status: Health,
    output: String,
    /// Answered with a log index at which the reported status holds.
    done: oneshot::Sender<Result<u64, ReportError>>,
}

/// Why a TTL report was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportError {
    /// No such check is running (unknown instance or check).
    Missing,
    /// The check is not a TTL check.
    NotTtl,
    /// This node is not the leader.
    NotLeader,
    /// The status could not be written.
    Unwritten(ProposeError),
}

/// Runs the checks of every instance while this node leads.
pub struct CheckRunner {
    node: Node,
    tasks: Mutex<HashMap<TaskKey, Running>>,
    /// How many check tasks each service has (services without any are
    /// absent), so a change that cannot concern checks skips the scan.
    per_service: Mutex<HashMap<ServiceKey, usize>>,
    permits: Arc<Semaphore>,
    http: reqwest::Client,
    http_insecure: reqwest::Client,
    leader: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The definition part of a check: what, when changed, means a restart.
fn fingerprint(c: &Check) -> Check {
    Check {
        status: Health::Passing,
        output: String::new(),
        status_index: 0,
        ..c.clone()
    }
}

/// Applies the thresholds to one result.
pub fn decide(
    result: Health,
    successes: &mut u32,
    failures: &mut u32,
    current: Health,
    c: &Check,
) -> Health {
    match result {
        Health::Passing => {
            *successes += 1;
            *failures = 0;
            if *successes >= c.success_before_passing {
                Health::Passing
            } else {
                current
            }
        }
        Health::Critical => {
            *failures += 1;
            *successes = 0;
            if *failures >= c.failures_before_critical {
                Health::Critical
            } else {
                current
            }
        }
        Health::Warning => {
            *successes = 0;
            *failures = 0;
            Health::Warning
        }
    }
}

impl CheckRunner {
    /// A runner that proposes through `node`, with at most `concurrency`
    /// probes in flight.
    pub fn new(node: Node, concurrency: usize) -> Arc<Self> {
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .danger_accept_invalid_certs(insecure)
                .user_agent("muster-health-check")
                .build()
                .expect("HTTP client for checks")
        };
        Arc::new(CheckRunner {
            node,
            tasks: Mutex::new(HashMap::new()),
            per_service: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            http: build(false),
            http_insecure: build(true),
            leader: AtomicBool::new(false),
        })
    }

    /// Reconciles every service (after the whole catalog was replaced).
    pub fn reconcile_all(self: &Arc<Self>) {
        let keys: Vec<ServiceKey> = {
            let c = crate::catalog(&self.node);
            all_keys(&c)
        };
        for k in keys {
            self.reconcile(&k);
        }
    }

    /// Takes over or gives up running checks with leadership.
    pub fn set_leader(self: &Arc<Self>, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
        if leader {
            self.reconcile_all();
        } else {
            for (_, r) in lock(&self.tasks).drain() {
                r.task.abort();
            }
            lock(&self.per_service).clear();
            metrics::gauge!("muster_checks").set(0.0);
        }
    }

    /// Reconciles `key` if the change may concern checks: `may_have_checks`
    /// says the change itself may have added or changed some; otherwise only
    /// a service that has check tasks can need stopping any. Registrations
    /// and removals of instances without checks thus cost no scan of the
    /// service (that scan dominated write throughput).
    pub fn reconcile_if_needed(self: &Arc<Self>, key: &ServiceKey, may_have_checks: bool) {
        if may_have_checks || lock(&self.per_service).contains_key(key) {
            self.reconcile(key);
        }
    }

    /// Starts, restarts and stops the checks of one service to match the catalog.
    pub fn reconcile(self: &Arc<Self>, key: &ServiceKey) {
        if !self.leader.load(Ordering::SeqCst) {
            return;
        }
        let desired: HashMap<(String, String), Check> = {
            let c = crate::catalog(&self.node);
            c.service(key)
                .map(|s| {
                    s.instances
                        .values()
                        .flat_map(|i| {
                            i.checks
                                .iter()
                                .map(|ch| ((i.id.to_string(), ch.id.clone()), ch.clone()))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let desired_count = desired.len();
        let mut tasks = lock(&self.tasks);
        tasks.retain(|(k, inst, check), r| {
            if k != key {
                return true;
            }
            let keep = desired
                .get(&(inst.clone(), check.clone()))
                .is_some_and(|c| fingerprint(c) == r.fingerprint);
            if !keep {
                r.task.abort();
            }
            keep
        });
        for ((inst, check_id), check) in desired {
            let tk = (key.clone(), inst.clone(), check_id);
            if tasks.contains_key(&tk) {
                continue;
            }
            let runtime = Arc::new(Mutex::new(CheckRun::default()));
            let (reports, rx) = if check.kind == CheckKind::Ttl {
                let (tx, rx) = mpsc::channel(16);
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let task = tokio::spawn(self.clone().run(
                key.clone(),
                inst,
                check.clone(),
                runtime.clone(),
                rx,
            ));
            tasks.insert(
                tk,
                Running {
                    fingerprint: fingerprint(&check),
                    task,
                    reports,
                    runtime,
                },
            );
        }
        let mut per_service = lock(&self.per_service);
        if desired_count == 0 {
            per_service.remove(key);
        } else {
            per_service.insert(key.clone(), desired_count);
        }
        metrics::gauge!("muster_checks").set(tasks.len() as f64);
    }

    /// Records a TTL check report from a client, and answers once the
    /// status it reports is committed (at once if it already was).
    ///
    /// A report may arrive before this runner reconciled the registration
    /// that added the check (the registration is answered on commit; the
    /// reconcile follows asynchronously): then the service is reconciled
    /// here first, so a client never has to retry a report it sends right
    /// after registering.
    pub async fn report(
        self: &Arc<Self>,
        key: &ServiceKey,
        inst: &str,
        check: &str,
        status: Health,
        output: String,
    ) -> Result<u64, ReportError> {
        if !self.leader.load(Ordering::SeqCst) {
            return Err(ReportError::NotLeader);
        }
        let tx = match self.report_sender(key, inst, check) {
            Some(tx) => tx?,
            None => {
                self.reconcile(key);
                self.report_sender(key, inst, check)
                    .ok_or(ReportError::Missing)??
            }
        };
        let (done, answer) = oneshot::channel();
        tx.send(Report {
            status,
            output,
            done,
        })
        .await
        .map_err(|_| ReportError::Missing)?;
        // The task ends without answering when the check or its instance is
        // removed meanwhile.
        answer.await.unwrap_or(Err(ReportError::Missing))
    }

    /// Where reports for a running check go: `None` if it does not run here.
    fn report_sender(
        &self,
        key: &ServiceKey,
        inst: &str,
        check: &str,
    ) -> Option<Result<mpsc::Sender<Report>, ReportError>> {
        let tasks = lock(&self.tasks);
        let r = tasks.get(&(key.clone(), inst.to_string(), check.to_string()))?;
        Some(r.reports.clone().ok_or(ReportError::NotTtl))
    }

    /// The in-memory state of one check, if it runs here.
    pub fn runtime(&self, key: &ServiceKey, inst: &str, check: &str) -> Option<CheckRun> {
        let tasks = lock(&self.tasks);
        let r = tasks.get(&(key.clone(), inst.to_string(), check.to_string()))?;
        Some(lock(&r.runtime).clone())
    }

    /// Number of checks running.
    pub fn len(&self) -> usize {
        lock(&self.tasks).len()
    }

    /// Writes a status transition: `Ok(Some(index))` once committed,
    /// `Ok(None)` if the log refused it (the instance or check is gone),
    /// `Err` if it could not be written.
    async fn propose_status(
        &self,
        key: &ServiceKey,
        inst: &str,
        check: &Check,
        status: Health,
        output: &str,
    ) -> Result<Option<u64>, ProposeError> {
        let cmd = Command::CheckStatus {
            namespace: key.namespace.to_string(),
            service: key.service.to_string(),
            id: inst.to_string(),
            check: check.id.clone(),
            status,
            output: truncate_output(output),
        };
        match self.node.propose(cmd).await {
            Ok(a) if a.result.is_ok() => {
                tracing::info!(service = %key.service, instance = inst, check = %check.id, status = status.as_str(), "check status changed");
                Ok(Some(a.index))
            }
            Ok(a) => {
                tracing::debug!(result = ?a.result, "check status not applied");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not propose a check status");
                Err(e)
            }
        }
    }

    /// [`Self::propose_status`] where only success matters.
    async fn write_status(
        &self,
        key: &ServiceKey,
        inst: &str,
        check: &Check,
        status: Health,
        output: &str,
    ) -> bool {
        matches!(
            self.propose_status(key, inst, check, status, output).await,
            Ok(Some(_))
        )
    }

    async fn deregister(&self, key: &ServiceKey, inst: &str, check: &Check) {
        tracing::warn!(service = %key.service, instance = inst, check = %check.id,
            "instance critical longer than deregister_critical_after: removing it");
        let cmd = Command::Deregister {
            namespace: key.namespace.to_string(),
            service: key.service.to_string(),
            id: inst.to_string(),
        };
        if let Err(e) = self.node.propose(cmd).await {
            tracing::warn!(error = %e, "could not deregister a critical instance");
        }
    }

    async fn run(
        self: Arc<Self>,
        key: ServiceKey,
        inst: String,
        check: Check,
        runtime: Arc<Mutex<CheckRun>>,
        reports: Option<mpsc::Receiver<Report>>,
    ) {
        let kind = check.kind.name();
        let interval = Duration::from_millis(check.interval_ms);
        let deregister_after = check
            .deregister_critical_after_ms
            .map(Duration::from_millis);
        let mut status = check.status;
        let mut critical_since = (status == Health::Critical).then(Instant::now);
        let (mut successes, mut failures) = (0u32, 0u32);
        let record = |output: &str| {
            let mut r = lock(&runtime);
            r.last_run_ms = Some(now_ms());
            r.last_output = Some(truncate_output(output));
        };
        let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);

        if let Some(mut reports) = reports {
            // A TTL check: a fresh full TTL from the moment this node runs it.
            let mut deadline = Instant::now() + interval;
            loop {
                let reap_at = match (critical_since, deregister_after) {
                    (Some(since), Some(after)) => since + after,
                    _ => far(),
                };
                tokio::select! {
                    r = reports.recv() => {
                        let Some(Report { status: reported, output, done }) = r else { return };
                        record(&output);
                        metrics::counter!("muster_check_runs_total", "kind" => kind).increment(1);
                        deadline = Instant::now() + interval;
                        let answer = if reported == status {
                            // Committed already, at or before what is applied here.
                            Ok(crate::catalog(&self.node).applied_index())
                        } else {
                            match self.propose_status(&key, &inst, &check, reported, &output).await {
                                Ok(Some(index)) => {
                                    status = reported;
                                    Ok(index)
                                }
                                Ok(None) => Err(ReportError::Missing),
                                Err(e) => Err(ReportError::Unwritten(e)),
                            }
                        };
                        // The reporter may have given up waiting: nothing to tell.
                        let _ = done.send(answer);
                    }
                    _ = sleep_until(deadline) => {
                        deadline = far();
                        let output = format!("TTL of {} expired without a report", muster_types::format_duration(interval));
                        record(&output);
                        metrics::counter!("muster_check_failures_total", "kind" => kind).increment(1);
                        if status != Health::Critical && self.write_status(&key, &inst, &check, Health::Critical, &output).await {
                            status = Health::Critical;
                        }
                    }
                    _ = sleep_until(reap_at) => {
                        self.deregister(&key, &inst, &check).await;
                        return;
                    }
                }
                critical_since = match (status, critical_since) {
                    (Health::Critical, None) => Some(Instant::now()),
                    (Health::Critical, since) => since,
                    _ => None,
                };
            }
        }

        // Start somewhere in the first interval, so checks registered together
        // do not all run together.
        let offset = rand::rng().random_range(0..=check.interval_ms);
        sleep(Duration::from_millis(offset)).await;
        loop {
            let next = Instant::now() + interval;
            let started = Instant::now();
            let (result, output) = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("semaphore never closes");
                self.probe(&check).await
            };
            metrics::counter!("muster_check_runs_total", "kind" => kind).increment(1);
            metrics::histogram!("muster_check_duration_seconds", "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            if result != Health::Passing {
                metrics::counter!("muster_check_failures_total", "kind" => kind).increment(1);
            }
            record(&output);
            let new = decide(result, &mut successes, &mut failures, status, &check);
            if new != status && self.write_status(&key, &inst, &check, new, &output).await {
                status = new;
            }
            critical_since = match (status, critical_since) {
                (Health::Critical, None) => Some(Instant::now()),
                (Health::Critical, since) => since,
                _ => None,
            };
            if let (Some(since), Some(after)) = (critical_since, deregister_after) {
                if since.elapsed() >= after {
                    self.deregister(&key, &inst, &check).await;
                    return;
                }
                sleep_until(next.min(since + after)).await;
                if since.elapsed() >= after && status == Health::Critical {
                    self.deregister(&key, &inst, &check).await;
                    return;
                }
                sleep_until(next).await;
            } else {
                sleep_until(next).await;
            }
        }
    }

    /// One run of a probe: its result and output.
    async fn probe(&self, check: &Check) -> (Health, String) {
        let limit = Duration::from_millis(check.timeout_ms);
        match &check.kind {
            CheckKind::Http {
                url,
                method,
                headers,
                tls_skip_verify,
            } => {
                let client = if *tls_skip_verify {
                    &self.http_insecure
                } else {
                    &self.http
                };
                let method =
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
                let mut req = client.request(method.clone(), url).timeout(limit);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                match req.send().await {
                    Err(e) => (Health::Critical, format!("HTTP {method} {url}: {e}")),
                    Ok(resp) => {
                        let status = resp.status();
                        let body = timeout(limit, resp.text())
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_default();
                        let health = if status.is_success() {
                            Health::Passing
                        } else if status.as_u16() == 429 {
                            Health::Warning
                        } else {
                            Health::Critical
                        };
                        (
                            health,
                            truncate_output(&format!("HTTP {method} {url}: {status}\n{body}")),
                        )
                    }
                }
            }
            CheckKind::Tcp { addr } => {
                match timeout(limit, tokio::net::TcpStream::connect(addr.as_str())).await {
                    Ok(Ok(_)) => (Health::Passing, format!("TCP connect {addr}: success")),
                    Ok(Err(e)) => (Health::Critical, format!("TCP connect {addr}: {e}")),
                    Err(_) => (
                        Health::Critical,
                        format!("TCP connect {addr}: timed out after {limit:?}"),
                    ),
                }
            }
            CheckKind::Grpc { addr, service } => grpc_probe(addr, service, limit).await,
            CheckKind::Command { args } => command_probe(args, limit).await,
            CheckKind::Ttl => (Health::Critical, "a TTL check is not probed".into()),
        }
    }
}

fn all_keys(c: &Catalog) -> Vec<ServiceKey> {
    c.service_keys().cloned().collect()
}

async fn grpc_probe(addr: &str, service: &str, limit: Duration) -> (Health, String) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let target = format!("gRPC health {addr}/{service}");
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(limit).timeout(limit),
        Err(e) => return (Health::Critical, format!("{target}: {e}")),
    };
    let channel = match timeout(limit, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return (Health::Critical, format!("{target}: cannot connect: {e}")),
        Err(_) => return (Health::Critical, format!("{target}: connect timed out")),
    };
    let mut client = HealthClient::new(channel);
    match timeout(
        limit,
        client.check(HealthCheckRequest {
            service: service.to_string(),
        }),
    )
    .await
    {
        Ok(Ok(resp)) => {
            let status = resp.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                (Health::Passing, format!("{target}: SERVING"))
            } else {
                let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
                (Health::Critical, format!("{target}: {name}"))
            }
        }
        Ok(Err(e)) => (
            Health::Critical,
            format!("{target}: {}: {}", e.code(), e.message()),
        ),
        Err(_) => (
            Health::Critical,
            format!("{target}: timed out after {limit:?}"),
        ),
    }
}

async fn command_probe(args: &[String], limit: Duration) -> (Health, String) {
    let mut cmd = tokio::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    match timeout(limit, cmd.output()).await {
        Err(_) => (
            Health::Critical,
            format!("command timed out after {limit:?}"),
        ),
        Ok(Err(e)) => (Health::Critical, format!("cannot run {:?}: {e}", args[0])),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let health = match out.status.code() {
                Some(0) => Health::Passing,
                Some(1) => Health::Warning,
                _ => Health::Critical,
            };
            (health, truncate_output(&text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(succ: u32, fail: u32) -> Check {
        let spec = muster_types::CheckSpec {
            tcp: Some("h:1".into()),
            interval: Some("1s".into()),
            success_before_passing: Some(succ),
            failures_before_critical: Some(fail),
            ..Default::default()
        };
        muster_types::validate_check(0, &spec).unwrap().into()
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let c = check(2, 3);
        let (mut s, mut f) = (0, 0);
        let mut st = Health::Critical;
        st = decide(Health::Passing, &mut s, &mut f, st, &c);
        assert_eq!(st, Health::Critical, "one success is not enough");
        st = decide(Health::Passing, &mut s, &mut f, st, &c);
        assert_eq!(st, Health::Passing);
        for _ in 0..2 {
            st = decide(Health::Critical, &mut s, &mut f, st, &c);
            assert_eq!(
                st,
                Health::Passing,
                "fewer than three failures keep it passing"
            );
        }
        st = decide(Health::Passing, &mut s, &mut f, st, &c);
        st = decide(Health::Critical, &mut s, &mut f, st, &c);
        st = decide(Health::Critical, &mut s, &mut f, st, &c);
        assert_eq!(st, Health::Passing, "a success in between resets the count");
        st = decide(Health::Critical, &mut s, &mut f, st, &c);
        assert_eq!(st, Health::Critical);
        assert_eq!(
            decide(Health::Warning, &mut s, &mut f, st, &c),
            Health::Warning
        );
    }
}
