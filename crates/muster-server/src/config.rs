//! The server's typed configuration, validated once and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the server needs to run. The binary fills it from a TOML file,
/// then environment variables, then flags, and calls [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP API.
    pub http_addr: SocketAddr,
    /// Directory holding the durable log, vote and snapshots.
    pub data_dir: PathBuf,
    /// This node's id in the Raft cluster.
    pub node_id: u64,
    /// Take a snapshot (and compact the log) after this many log entries.
    pub snapshot_logs: u64,
    /// Also take one after this many commands (registrations, removals,
    /// status changes) since the last one, or an eighth of the instances it
    /// held if that is more: bounds what a restart replays.
    pub snapshot_commands: u64,
    /// Share of leases (0..1) that may fall silent at once before expiry
    /// pauses (self-preservation). 1.0 disables self-preservation.
    pub self_preservation_threshold: f64,
    /// Self-preservation only applies when at least this many leases exist.
    pub self_preservation_min_leases: usize,
    /// How often the leader looks for expired leases.
    #[serde(with = "humantime_serde_compat")]
    pub sweep_interval: Duration,
    /// Allow checks that run a command on the agent's host (`args`). Off by
    /// default: anyone who can register could otherwise run programs here.
    pub enable_command_checks: bool,
    /// Most health-check probes in flight at once.
    pub check_concurrency: usize,
    /// How long start-up may take before giving up.
    #[serde(with = "humantime_serde_compat")]
    pub startup_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from("./muster-data"),
            node_id: 1,
            snapshot_logs: 10_000,
            snapshot_commands: 50_000,
            self_preservation_threshold: 0.85,
            self_preservation_min_leases: 10,
            sweep_interval: Duration::from_millis(250),
            startup_timeout: Duration::from_secs(60),
            enable_command_checks: false,
            check_concurrency: 512,
        }
    }
}

impl Config {
    /// Checks every field; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be at least 1".into());
        }
        if self.snapshot_logs < 10 {
            return Err("snapshot_logs must be at least 10".into());
        }
        if self.snapshot_commands < 10 {
            return Err("snapshot_commands must be at least 10".into());
        }
        if !(self.self_preservation_threshold > 0.0 && self.self_preservation_threshold <= 1.0) {
            return Err("self_preservation_threshold must be in (0, 1]; 1 disables it".into());
        }
        if self.sweep_interval < Duration::from_millis(10)
            || self.sweep_interval > Duration::from_secs(10)
        {
            return Err("sweep_interval must be between 10ms and 10s".into());
        }
        if self.check_concurrency == 0 {
            return Err("check_concurrency must be at least 1".into());
        }
        Ok(())
    }
}

/// Durations in the config file are strings such as `"250ms"`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&muster_types::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        muster_types::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
