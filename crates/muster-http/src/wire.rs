//! The registry's model as the v1 JSON shows it: the one place that maps
//! [`model::Instance`] and [`model::Check`] to [`muster_types`].

use muster_registry::{CheckRun, InstanceState, model};
use muster_types::{Check, Instance};

/// An instance as every v1 read and write answer shows it.
pub(crate) fn instance(i: &model::Instance) -> Instance {
    instance_with(i, |c| check(c, None))
}

/// A single-instance read: the instance, each check with its last run.
pub(crate) fn instance_state(s: &InstanceState) -> Instance {
    let mut runs = s.runs.iter();
    instance_with(&s.instance, |c| check(c, runs.next()))
}

fn instance_with(i: &model::Instance, mut check: impl FnMut(&model::Check) -> Check) -> Instance {
    Instance {
        id: i.id.clone(),
        namespace: i.namespace.clone(),
        service: i.service.clone(),
        address: i.address.clone(),
        port: i.port,
        tags: i.tags.clone(),
        meta: i.meta.clone(),
        version: i.version.clone(),
        zone: i.zone.clone(),
        weight: i.weight,
        health: i.health,
        checks: i.checks.iter().map(&mut check).collect(),
        maintenance: i.maintenance.clone(),
        lease: i.lease.clone(),
        preserved: i.preserved.is_preserved(),
        create_index: i.create_index,
        modify_index: i.modify_index,
        registered_at_ms: i.registered_at_ms,
    }
}

/// A check; its last output is shown only where it differs from the output
/// that set the status.
fn check(c: &model::Check, run: Option<&CheckRun>) -> Check {
    Check {
        id: c.id.clone(),
        name: c.name.clone(),
        kind: c.kind.clone(),
        interval_ms: c.interval_ms,
        timeout_ms: c.timeout_ms,
        success_before_passing: c.success_before_passing,
        failures_before_critical: c.failures_before_critical,
        deregister_critical_after_ms: c.deregister_critical_after_ms,
        notes: c.notes.clone(),
        status: c.status,
        output: c.output.clone(),
        status_index: c.status_index,
        last_run_ms: run.and_then(|r| r.last_run_ms),
        last_output: run
            .and_then(|r| r.last_output.clone())
            .filter(|o| *o != c.output),
    }
}
