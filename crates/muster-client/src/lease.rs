//! Self-registration: one lease per client holds every registration.
//!
//! The lease is created on the first [`Client::register`](crate::Client::register)
//! and renewed in the background about every third of its TTL (with jitter,
//! and with back-off retries when a renewal fails). When the registry
//! answers `lease_not_found` — the lease expired during a partition, or the
//! registry lost its state — the client creates a new lease and registers
//! every live registration again, by itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use muster_types::{DEFAULT_WEIGHT, Instance, RegisterRequest};
use tokio::sync::{Mutex, watch};

use crate::Client;
use crate::api::Api;
use crate::checks::{CheckStatus, HealthCheck};
use crate::error::Result;
use crate::transport::{jitter, spread};

/// What to register: a service instance's address and attributes.
///
/// ```
/// let spec = muster_client::InstanceSpec::new("payments", "pay-1", "10.0.0.5", 8080)
///     .tag("v2")
///     .version("1.4.2")
///     .zone("eu-1a")
///     .meta("team", "core");
/// assert_eq!(spec.service(), "payments");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    service: String,
    id: String,
    body: RegisterRequest,
}

impl InstanceSpec {
    /// Instance `id` of `service`, serving on `address:port`.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        address: impl Into<String>,
        port: u16,
    ) -> Self {
        InstanceSpec {
            service: service.into(),
            id: id.into(),
            body: RegisterRequest {
                address: address.into(),
                port: u32::from(port),
                ..RegisterRequest::default()
            },
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.body.tags.push(tag.into());
        self
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.body.meta.insert(key.into(), value.into());
        self
    }

    /// Sets the version (semver, e.g. `1.4.2`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.body.version = Some(version.into());
        self
    }

    /// Sets the zone (failure domain), e.g. `eu-1a`.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.body.zone = Some(zone.into());
        self
    }

    /// Sets the load-balancing weight (1 to 10000, default 100).
    pub fn weight(mut self, weight: u32) -> Self {
        self.body.weight = Some(weight);
        self
    }

    /// Adds a health check (at most 16), kept when the client registers
    /// the instance again after the registry lost its lease.
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.body.checks.push(check.into_spec());
        self
    }

    /// The checks added so far, as the registry's API takes them.
    pub fn checks(&self) -> &[muster_types::CheckSpec] {
        &self.body.checks
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The weight the registry will record.
    pub fn effective_weight(&self) -> u32 {
        self.body.weight.unwrap_or(DEFAULT_WEIGHT)
    }
}

/// The client's lease and what its renewals have done so far; watch it with
/// [`Client::lease_status`](crate::Client::lease_status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Current lease id, once one exists.
    pub lease: Option<String>,
    /// Live registrations held by the lease.
    pub registrations: usize,
    /// Leases created (the first one, and one per recovery).
    pub leases_created: u64,
    /// Successful renewals.
    pub renewals: u64,
    /// Failed renewal attempts (the registry unreachable or erroring).
    pub renewal_failures: u64,
    /// Instances registered again after the registry lost the lease.
    pub reregistrations: u64,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
}

/// The client's session with the registry, as its lease sees it (the
/// states ZooKeeper clients know): watch it with
/// [`Client::connection_state`](crate::Client::connection_state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// No lease yet: nothing registered so far.
    #[default]
    Idle,
    /// The last renewal (or registration) reached the registry.
    Connected,
    /// The registry cannot be reached, but less than a TTL has passed since
    /// the last renewal: the registrations are still there.
    Suspended,
    /// The lease is gone, or the registry was out of reach for a whole TTL:
    /// the registrations may have expired. The client registers them again
    /// as soon as it can, and is `Connected` once it has.
    Lost,
}

type Key = (String, String);

struct State {
    lease: Option<String>,
    /// The lease is known lost: create a new one and re-register.
    lost: bool,
    regs: BTreeMap<Key, Reg>,
}

/// One live registration: what to register, and what the service said of
/// it since, applied again after a re-registration.
#[derive(Clone)]
struct Reg {
    body: RegisterRequest,
    /// The maintenance reason, while in maintenance.
    maintenance: Option<String>,
    /// The last report of each TTL check.
    reports: BTreeMap<String, (CheckStatus, Option<String>)>,
}

/// The lease and every registration it holds.
pub(crate) struct Leases {
    api: Api,
    ttl: Duration,
    state: Mutex<State>,
    status: watch::Sender<LeaseStatus>,
    connection: watch::Sender<ConnectionState>,
    /// When the registry last accepted a renewal or registration.
    last_ok: std::sync::Mutex<Option<tokio::time::Instant>>,
    renewer: std::sync::Once,
}

impl Leases {
    pub fn new(api: Api, ttl: Duration) -> Self {
        Leases {
            api,
            ttl,
            state: Mutex::new(State {
                lease: None,
                lost: false,
                regs: BTreeMap::new(),
            }),
            status: watch::channel(LeaseStatus::default()).0,
            connection: watch::channel(ConnectionState::Idle).0,
            last_ok: std::sync::Mutex::new(None),
            renewer: std::sync::Once::new(),
        }
    }

    pub fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.status.subscribe()
    }

    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.connection.subscribe()
    }

    /// The registry accepted a renewal or a registration.
    fn reached(&self) {
        *self
            .last_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
        self.connection.send_if_modified(|c| {
            let changed = *c != ConnectionState::Connected;
            *c = ConnectionState::Connected;
            changed
        });
    }

    /// A renewal or registration failed; `lost`: the registry said the
    /// lease is gone.
    fn missed(&self, lost: bool) {
        let last_ok = *self
            .last_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let expired = last_ok.is_none_or(|t| t.elapsed() >= self.ttl);
        self.connection.send_if_modified(|c| {
            let next = match *c {
                // Idle stays Idle until a lease exists; Lost stays Lost until
                // the registrations are back.
                ConnectionState::Idle | ConnectionState::Lost => return false,
                _ if lost || expired => ConnectionState::Lost,
                _ => ConnectionState::Suspended,
            };
            let changed = *c != next;
            *c = next;
            changed
        });
    }

    fn publish(&self, st: &State, f: impl FnOnce(&mut LeaseStatus)) {
        self.status.send_modify(|s| {
            s.lease = st.lease.clone();
            s.registrations = st.regs.len();
            f(s);
        });
    }

    /// Registers one instance on the lease, creating or recovering the lease
    /// first when needed.
    pub async fn register(
        self: &Arc<Self>,
        spec: &InstanceSpec,
        stop: &watch::Sender<()>,
    ) -> Result<Instance> {
        let mut st = self.state.lock().await;
        if st.lease.is_none() || st.lost {
            self.reestablish(&mut st).await?;
        }
        let inst = match self.put(&st, &spec.service, &spec.id, &spec.body).await {
            Err(e) if e.is_lease_not_found() => {
                st.lost = true;
                self.reestablish(&mut st).await?;
                self.put(&st, &spec.service, &spec.id, &spec.body).await?
            }
            r => r?,
        };
        st.regs.insert(
            (spec.service.clone(), spec.id.clone()),
            Reg {
                body: spec.body.clone(),
                maintenance: None,
                reports: BTreeMap::new(),
            },
        );
        self.publish(&st, |_| {});
        drop(st);
        self.reached();
        self.renewer.call_once(|| {
            tokio::spawn(renew_loop(self.clone(), stop.subscribe()));
        });
        Ok(inst)
    }

    async fn put(
        &self,
        st: &State,
        service: &str,
        id: &str,
        body: &RegisterRequest,
    ) -> Result<Instance> {
        let mut body = body.clone();
        body.ttl = None;
        body.lease = st.lease.clone();
        self.api.register(service, id, &body).await
    }

    /// Creates a new lease when there is none or it was lost, then registers
    /// every live registration on it.
    async fn reestablish(&self, st: &mut State) -> Result<()> {
        if st.lease.is_none() || st.lost {
            let info = self.api.create_lease(self.ttl).await?;
            st.lease = Some(info.id);
            self.publish(st, |s| s.leases_created += 1);
        }
        let mut done = 0u64;
        for ((service, id), reg) in &st.regs {
            match self.put_again(st, service, id, reg).await {
                Ok(()) => done += 1,
                Err(e) => {
                    // Keep `lost` so the next tick tries again.
                    st.lost = true;
                    self.publish(st, |s| s.reregistrations += done);
                    metrics::counter!(crate::metrics::REREGISTRATIONS).increment(done);
                    return Err(e);
                }
            }
        }
        if done > 0 {
            tracing::info!(
                instances = done,
                "the registry had lost the lease: re-registered"
            );
        }
        st.lost = false;
        self.reached();
        metrics::counter!(crate::metrics::REREGISTRATIONS).increment(done);
        self.publish(st, |s| s.reregistrations += done);
        Ok(())
    }

    /// Registers `reg` again on the current lease, with its maintenance and
    /// its last check reports.
    async fn put_again(&self, st: &State, service: &str, id: &str, reg: &Reg) -> Result<()> {
        self.put(st, service, id, &reg.body).await?;
        if let Some(reason) = &reg.maintenance {
            self.api.maintenance(service, id, Some(reason)).await?;
        }
        // The registry accepts a report sent right after the registration
        // that added the check, and answers once it is committed.
        for (check, (status, output)) in &reg.reports {
            self.api
                .report_check(service, id, check, *status, output.as_deref())
                .await?;
        }
        Ok(())
    }

    /// Reports a TTL check of a live registration, and keeps the report to
    /// apply again after a re-registration.
    pub async fn report(
        &self,
        service: &str,
        id: &str,
        check: &str,
        status: CheckStatus,
        output: Option<&str>,
    ) -> Result<()> {
        self.api
            .report_check(service, id, check, status, output)
            .await?;
        let mut st = self.state.lock().await;
        if let Some(reg) = st.regs.get_mut(&(service.to_string(), id.to_string())) {
            reg.reports
                .insert(check.to_string(), (status, output.map(str::to_string)));
        }
        Ok(())
    }

    /// Puts a live registration in maintenance (`Some(reason)`) or takes it
    /// out, and keeps the state to apply again after a re-registration.
    pub async fn maintenance(
        &self,
        service: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<Instance> {
        let inst = self.api.maintenance(service, id, reason).await?;
        let mut st = self.state.lock().await;
        if let Some(reg) = st.regs.get_mut(&(service.to_string(), id.to_string())) {
            reg.maintenance = reason.map(str::to_string);
        }
        Ok(inst)
    }

    /// Removes one registration; unknown or already removed is fine.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        if st
            .regs
            .remove(&(service.to_string(), id.to_string()))
            .is_none()
        {
            return Ok(());
        }
        self.publish(&st, |_| {});
        drop(st);
        match self.api.deregister(service, id).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("not_found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes every registration at once by revoking the lease.
    pub async fn shutdown(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        st.regs.clear();
        st.lost = false;
        let lease = st.lease.take();
        self.publish(&st, |_| {});
        drop(st);
        match lease {
            Some(l) => match self.api.revoke_lease(&l).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_lease_not_found() => Ok(()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        }
    }

    /// One renewal tick: renews the lease, or recovers it when lost.
    async fn tick(&self) -> Result<()> {
        let (lease, lost) = {
            let st = self.state.lock().await;
            (st.lease.clone(), st.lost)
        };
        if lost {
            let mut st = self.state.lock().await;
            return self.reestablish(&mut st).await;
        }
        let Some(lease) = lease else { return Ok(()) };
        match self.api.renew_lease(&lease).await {
            Ok(_) => {
                self.reached();
                metrics::counter!(crate::metrics::RENEWALS).increment(1);
                self.status.send_modify(|s| {
                    s.renewals += 1;
                    s.last_error = None;
                });
                Ok(())
            }
            Err(e) if e.is_lease_not_found() => {
                tracing::warn!(%lease, "the registry does not know our lease; recovering");
                self.missed(true);
                let mut st = self.state.lock().await;
                if st.lease.as_deref() == Some(lease.as_str()) {
                    st.lost = true;
                }
                self.reestablish(&mut st).await
            }
            Err(e) => Err(e),
        }
    }
}

/// Renews until the client is dropped.
async fn renew_loop(leases: Arc<Leases>, mut stop: watch::Receiver<()>) {
    let period = leases.ttl / 3;
    let backoff = leases.api.transport.settings.backoff;
    let mut failures: u32 = 0;
    let mut delay = spread(period);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        match leases.tick().await {
            Ok(()) => {
                failures = 0;
                delay = spread(period);
            }
            Err(e) => {
                leases.missed(e.is_lease_not_found());
                tracing::warn!(error = %e, "lease renewal failed; retrying");
                metrics::counter!(crate::metrics::RENEWAL_FAILURES).increment(1);
                leases.status.send_modify(|s| {
                    s.renewal_failures += 1;
                    s.last_error = Some(e.to_string());
                });
                // Retry sooner than the period, so one lost renewal does not
                // cost the lease.
                delay = jitter(backoff.delay(failures)).min(period / 2);
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// A registered instance. [`Registration::deregister`] removes it; dropping
/// the handle removes it too, on a best-effort basis (in a task spawned on
/// the current runtime, if there is one).
pub struct Registration {
    client: Client,
    instance: Instance,
    active: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("service", &self.instance.service)
            .field("id", &self.instance.id)
            .field("active", &self.active)
            .finish()
    }
}

impl Registration {
    pub(crate) fn new(client: Client, instance: Instance) -> Self {
        Registration {
            client,
            instance,
            active: true,
        }
    }

    /// The instance as the registry stored it at registration.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.instance.service
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.instance.id
    }

    /// Reports the status of one of its TTL checks ([`HealthCheck::ttl`]),
    /// with an optional output (at most 4 KiB kept). The last report of
    /// each check is sent again if the client has to register the instance
    /// anew.
    pub async fn report(
        &self,
        check: &str,
        status: CheckStatus,
        output: Option<&str>,
    ) -> Result<()> {
        self.client
            .inner
            .leases
            .report(
                &self.instance.service,
                &self.instance.id,
                check,
                status,
                output,
            )
            .await
    }

    /// Takes the instance out of discovery answers without deregistering
    /// it (`Some(reason)`), or puts it back (`None`). Kept across
    /// re-registrations.
    pub async fn set_maintenance(&self, reason: Option<&str>) -> Result<Instance> {
        self.client
            .inner
            .leases
            .maintenance(&self.instance.service, &self.instance.id, reason)
            .await
    }

    /// Removes the instance from the registry and stops keeping it alive.
    pub async fn deregister(mut self) -> Result<()> {
        self.active = false;
        self.client
            .inner
            .leases
            .deregister(&self.instance.service, &self.instance.id)
            .await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the lease expiry will remove the instance.
        };
        let leases = self.client.inner.leases.clone();
        let (service, id) = (self.instance.service.clone(), self.instance.id.clone());
        let _keep_client_alive = self.client.clone();
        rt.spawn(async move {
            if let Err(e) = leases.deregister(&service, &id).await {
                tracing::debug!(error = %e, %service, %id, "deregistration on drop failed");
            }
            drop(_keep_client_alive);
        });
    }
}
