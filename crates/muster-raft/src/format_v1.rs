//! Version 1 of the log entry encoding: how each command is written, defined
//! here, apart from the in-memory types ([`muster_catalog::Command`]) and
//! the HTTP JSON ([`muster_types`]).
//!
//! Each type below mirrors one in-memory type field for field (serde's
//! `remote` derive: no copy on either side). A change to an in-memory type
//! therefore fails to compile here until someone decides what it means for
//! the stored form; a change to what is written fails the golden fixtures
//! (`testdata/log-entry-v1.bin`) and needs a new format version.

use std::collections::{BTreeMap, BTreeSet};

use muster_catalog::{Command, InstanceData, LeaseRef};
use muster_types::{Check, CheckKind, Health};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// [`Command`] as version 1 writes it.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Command")]
pub(crate) enum CommandV1 {
    Register {
        namespace: String,
        service: String,
        #[serde(with = "InstanceDataV1")]
        instance: InstanceData,
        #[serde(with = "LeaseRefV1")]
        lease: LeaseRef,
    },
    Deregister {
        namespace: String,
        service: String,
        id: String,
    },
    CreateLease {
        id: u64,
        ttl_ms: u64,
    },
    RevokeLease {
        id: u64,
    },
    CheckStatus {
        namespace: String,
        service: String,
        id: String,
        check: String,
        #[serde(with = "HealthV1")]
        status: Health,
        output: String,
    },
    Maintenance {
        namespace: String,
        service: String,
        id: String,
        reason: Option<String>,
    },
    PutCheck {
        namespace: String,
        service: String,
        id: String,
        #[serde(with = "CheckV1")]
        check: Check,
    },
    RemoveCheck {
        namespace: String,
        service: String,
        id: String,
        check: String,
    },
    ExpireLeases {
        ids: Vec<u64>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "InstanceData")]
struct InstanceDataV1 {
    id: String,
    address: String,
    port: u16,
    tags: BTreeSet<String>,
    meta: BTreeMap<String, String>,
    version: Option<String>,
    zone: Option<String>,
    weight: u32,
    #[serde(default, with = "checks_v1")]
    checks: Vec<Check>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "LeaseRef")]
enum LeaseRefV1 {
    None,
    Own { id: u64, ttl_ms: u64 },
    Existing(u64),
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Check")]
struct CheckV1 {
    id: String,
    name: String,
    #[serde(with = "CheckKindV1")]
    kind: CheckKind,
    interval_ms: u64,
    timeout_ms: u64,
    success_before_passing: u32,
    failures_before_critical: u32,
    deregister_critical_after_ms: Option<u64>,
    notes: Option<String>,
    #[serde(with = "HealthV1")]
    status: Health,
    output: String,
    status_index: u64,
    // Runtime fields of reads: never set in a command, so never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_run_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_output: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "CheckKind", rename_all = "lowercase", tag = "type")]
enum CheckKindV1 {
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, String>,
        tls_skip_verify: bool,
    },
    Tcp {
        addr: String,
    },
    Grpc {
        addr: String,
        service: String,
    },
    Ttl,
    Command {
        args: Vec<String>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Health", rename_all = "lowercase")]
enum HealthV1 {
    Passing,
    Warning,
    Critical,
}

/// A list of checks, each as [`CheckV1`].
mod checks_v1 {
    use super::*;

    struct One<'a>(&'a Check);

    impl Serialize for One<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            CheckV1::serialize(self.0, s)
        }
    }

    #[derive(Deserialize)]
    struct Owned(#[serde(with = "CheckV1")] Check);

    pub(super) fn serialize<S: Serializer>(checks: &[Check], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(checks.iter().map(One))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Check>, D::Error> {
        Ok(Vec::<Owned>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}

/// A list of commands, each as [`CommandV1`]: the `commands` of an entry.
pub(crate) mod commands_v1 {
    use super::*;

    struct One<'a>(&'a Command);

    impl Serialize for One<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            CommandV1::serialize(self.0, s)
        }
    }

    #[derive(Deserialize)]
    struct Owned(#[serde(with = "CommandV1")] Command);

    pub(crate) fn serialize<S: Serializer>(commands: &[Command], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(commands.iter().map(One))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Command>, D::Error> {
        Ok(Vec::<Owned>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}
