//! The agent's typed configuration: the registry's settings and each
//! front-end's listener, in one flat file, validated once and split into
//! what each part needs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use muster_registry::{ClusterConfig, RegistryConfig};
use serde::{Deserialize, Serialize};

/// Everything the agent needs to run. The binary fills it from a TOML file,
/// then environment variables, then flags, and calls [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP API.
    pub http_addr: SocketAddr,
    /// Directory holding the durable log, vote and snapshots.
    pub data_dir: PathBuf,
    /// This node's id in the Raft cluster. In a cluster of several, unique
    /// and never reused for another node.
    pub node_id: u64,
    /// Address of the cluster RPC listener (raft between nodes, forwarded
    /// writes). Bound only when `peers` is set.
    pub cluster_addr: SocketAddr,
    /// The voters of the cluster, this node included, as
    /// `"1=10.0.0.1:7701,2=10.0.0.2:7701,3=10.0.0.3:7701"` (node id =
    /// cluster address); the same on every node. Empty: a cluster of one,
    /// without a cluster listener.
    #[serde(with = "peers_string")]
    pub peers: BTreeMap<u64, String>,
    /// The cluster address (`host:port`) this node tells its peers, where
    /// they reach it: for a node bound to `0.0.0.0` or behind NAT. Default:
    /// `cluster_addr`. Never an unspecified address (`0.0.0.0`, `::`);
    /// with `peers`, it must be this node's entry there. A node being
    /// joined is recorded at the address it advertises.
    pub cluster_advertise: Option<String>,
    /// Join a running cluster instead of forming one from `peers`: serve
    /// cluster RPC at `cluster_addr` and wait to be added (`muster cluster
    /// join <node_id> <cluster_addr>` against any member).
    pub join: bool,
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
    /// How long self-preservation keeps an instance past its lease's
    /// deadline as passing (marked `preserved`); after it, the instance is
    /// kept as critical, so default discovery no longer returns it.
    #[serde(with = "humantime_serde_compat")]
    pub self_preservation_bound: Duration,
    /// How often the leader looks for expired leases.
    #[serde(with = "humantime_serde_compat")]
    pub sweep_interval: Duration,
    /// Allow checks that run a command on the agent's host (`args`). Off by
    /// default: anyone who can register could otherwise run programs here.
    pub enable_command_checks: bool,
    /// Enforce ACL tokens (`muster acl bootstrap` makes the first): default
    /// deny, anonymous callers get only what the `anonymous` token's
    /// policies grant.
    pub acl: bool,
    /// Append one JSON line per audited write (accessor, operation, target,
    /// result) to this file, besides the `muster::audit` log lines.
    pub audit_file: Option<PathBuf>,
    /// Most health-check probes in flight at once.
    pub check_concurrency: usize,
    /// How long start-up may take before giving up.
    #[serde(with = "humantime_serde_compat")]
    pub startup_timeout: Duration,
    /// Most HTTP connections served at once (watches included); keep it
    /// below the file-descriptor limit (`ulimit -n`).
    pub max_connections: usize,
    /// How long a connection may take to send a request head; idle
    /// keep-alive connections are closed after it too.
    #[serde(with = "humantime_serde_compat")]
    pub http_header_timeout: Duration,
    /// How long a request body may take to arrive.
    #[serde(with = "humantime_serde_compat")]
    pub http_body_timeout: Duration,
    /// Most queries one multiplexed watch (`POST /v1/watch`) may carry;
    /// clients with more lookups open several streams.
    pub watch_max_queries: usize,
    /// Most HTTP connections from one client address (IPv6: one /64) at
    /// once; past it, its new connections are closed. 0: no per-address
    /// cap.
    pub max_connections_per_ip: usize,
    /// Most watches (SSE streams, single or multiplexed) open at once;
    /// past it, 429 `too_many_watches`.
    pub max_watches: usize,
    /// Most watches open at once from one client address. 0: no cap.
    pub max_watches_per_ip: usize,
    /// Most blocking queries (`index` + `wait`) parked at once; past it,
    /// 429 `too_many_blocking_queries`.
    pub max_blocking_queries: usize,
    /// Most blocking queries parked at once from one client address. 0: no
    /// cap.
    pub max_blocking_queries_per_ip: usize,
    /// Most concurrent requests on one HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Requests a second allowed per token, or per client address for
    /// requests without a token; past it, 429 `rate_limited`. 0: off.
    pub rate_limit: u32,
    /// Requests a token or address may send in a burst above `rate_limit`.
    /// 0: as many as `rate_limit`.
    pub rate_limit_burst: u32,
    /// Serve the HTTP API over TLS with this certificate chain (PEM, leaf
    /// first); needs `tls_key`. Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate issued by this CA (PEM) on every HTTP
    /// connection (mTLS); needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
    /// Mutual TLS on the cluster port: this node's certificate chain
    /// (PEM), presented to peers both when they call it and when it calls
    /// them, so it needs the serverAuth and clientAuth key usages (`muster
    /// tls cert create --server` makes such) and every name or IP peers
    /// reach it at. With `cluster_tls_key` and `cluster_tls_ca`, all three
    /// or none. Reloaded on SIGHUP.
    pub cluster_tls_cert: Option<PathBuf>,
    /// The private key of `cluster_tls_cert` (PEM).
    pub cluster_tls_key: Option<PathBuf>,
    /// The CA (PEM) that issued every node's cluster certificate: a peer
    /// whose certificate it did not issue is refused both ways.
    pub cluster_tls_ca: Option<PathBuf>,
    /// Start from the snapshot alone when the log no longer reaches it,
    /// accepting the loss of the writes acknowledged after it. A one-off
    /// decision of an operator: a flag only, never read from a file.
    #[serde(skip)]
    pub force_recover_from_snapshot: bool,
}

impl Default for Config {
    fn default() -> Self {
        let r = RegistryConfig::default();
        let l = muster_http::serve::Limits::default();
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: r.data_dir,
            node_id: r.node_id,
            cluster_addr: SocketAddr::from(([127, 0, 0, 1], 7701)),
            cluster_advertise: None,
            peers: BTreeMap::new(),
            join: false,
            snapshot_logs: r.snapshot_logs,
            snapshot_commands: r.snapshot_commands,
            self_preservation_threshold: r.self_preservation_threshold,
            self_preservation_min_leases: r.self_preservation_min_leases,
            self_preservation_bound: r.self_preservation_bound,
            sweep_interval: r.sweep_interval,
            startup_timeout: r.startup_timeout,
            enable_command_checks: r.enable_command_checks,
            check_concurrency: r.check_concurrency,
            acl: r.acl,
            audit_file: None,
            max_connections: l.max_connections,
            http_header_timeout: l.header_timeout,
            http_body_timeout: l.body_timeout,
            watch_max_queries: l.max_watch_queries,
            max_connections_per_ip: l.max_connections_per_ip,
            max_watches: l.max_watches,
            max_watches_per_ip: l.max_watches_per_ip,
            max_blocking_queries: l.max_blocking_queries,
            max_blocking_queries_per_ip: l.max_blocking_queries_per_ip,
            http2_max_streams: l.http2_max_streams,
            rate_limit: l.rate_limit,
            rate_limit_burst: l.rate_limit_burst,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            cluster_tls_cert: None,
            cluster_tls_key: None,
            cluster_tls_ca: None,
            force_recover_from_snapshot: false,
        }
    }
}

impl Config {
    /// Checks every field; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        self.registry().validate()?;
        if self.join && !self.peers.is_empty() {
            return Err(
                "join and peers exclude each other: peers forms a new cluster, \
                 join waits to be added to a running one"
                    .into(),
            );
        }
        let clustered = self.join || !self.peers.is_empty();
        if clustered {
            self.cluster_advertise()?;
            if let (Some(set), Some(entry)) =
                (&self.cluster_advertise, self.peers.get(&self.node_id))
                && set != entry
            {
                return Err(format!(
                    "cluster_advertise {set} is not this node's entry in peers ({}={entry}): \
                     peers must list every node at the address it advertises",
                    self.node_id
                ));
            }
        }
        if let Some(c) = self.cluster(self.http_addr) {
            c.validate(self.node_id)?;
        }
        self.tls_files()?;
        if self.cluster_tls_files()?.is_some() && !clustered {
            return Err(
                "cluster_tls_cert, cluster_tls_key and cluster_tls_ca secure the cluster \
                 port, which only a node with peers or join has; for the HTTP API use \
                 tls_cert and tls_key"
                    .into(),
            );
        }
        self.http_limits().validate()
    }

    /// The HTTP listener's TLS files, if TLS is on (not read yet).
    pub fn tls_files(&self) -> Result<Option<muster_http::tls::TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(muster_http::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            (None, None) if self.tls_client_ca.is_some() => Err(
                "tls_client_ca needs tls_cert and tls_key: client certificates are only \
                 asked for over TLS"
                    .into(),
            ),
            (None, None) => Ok(None),
            (Some(_), None) => Err("tls_cert needs tls_key (the certificate's private key)".into()),
            (None, Some(_)) => Err("tls_key needs tls_cert (the certificate it belongs to)".into()),
        }
    }

    /// The cluster port's mutual-TLS files, if cluster TLS is on (not
    /// read yet): all three settings or none.
    pub fn cluster_tls_files(&self) -> Result<Option<muster_tls::MutualFiles>, String> {
        match (
            &self.cluster_tls_cert,
            &self.cluster_tls_key,
            &self.cluster_tls_ca,
        ) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(muster_tls::MutualFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None, None) => Ok(None),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    ("cluster_tls_cert", cert.is_none()),
                    ("cluster_tls_key", key.is_none()),
                    ("cluster_tls_ca", ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect();
                Err(format!(
                    "cluster TLS needs cluster_tls_cert, cluster_tls_key and cluster_tls_ca \
                     together (mutual TLS: each node proves itself with its certificate and \
                     checks its peers' against the CA); missing: {}",
                    missing.join(", ")
                ))
            }
        }
    }

    /// The cluster address this node advertises: `cluster_advertise`, or
    /// `cluster_addr`; refused when unspecified (`0.0.0.0`, `::`) or not
    /// `host:port`.
    pub fn cluster_advertise(&self) -> Result<String, String> {
        let (addr, from) = match &self.cluster_advertise {
            Some(a) => (a.clone(), "cluster_advertise"),
            None => (self.cluster_addr.to_string(), "cluster_addr"),
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!(
                "{from} {addr:?} is not host:port (e.g. 10.0.0.1:7701)"
            ));
        };
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return Err(format!("{from} {addr:?}: {port:?} is not a port (1-65535)"));
        }
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        if host.is_empty() || ip.is_ok_and(|ip| ip.is_unspecified()) {
            return Err(match &self.cluster_advertise {
                Some(_) => format!(
                    "cluster_advertise {addr} is no address peers can reach: give this \
                     node's own IP or host name (e.g. 10.0.0.1:7701)"
                ),
                None => format!(
                    "cluster_addr {addr} listens on every interface, so it does not say where \
                     peers reach this node: set cluster_advertise (--cluster-advertise) to \
                     this node's address, e.g. 10.0.0.1:{port}"
                ),
            });
        }
        Ok(addr)
    }

    /// The HTTP listener's limits.
    pub fn http_limits(&self) -> muster_http::serve::Limits {
        muster_http::serve::Limits {
            max_connections: self.max_connections,
            header_timeout: self.http_header_timeout,
            body_timeout: self.http_body_timeout,
            max_watch_queries: self.watch_max_queries,
            max_connections_per_ip: self.max_connections_per_ip,
            max_watches: self.max_watches,
            max_watches_per_ip: self.max_watches_per_ip,
            max_blocking_queries: self.max_blocking_queries,
            max_blocking_queries_per_ip: self.max_blocking_queries_per_ip,
            http2_max_streams: self.http2_max_streams,
            rate_limit: self.rate_limit,
            rate_limit_burst: self.rate_limit_burst,
        }
    }

    /// The cluster's part, if this node is a member of a cluster of
    /// several; `http_addr` is the HTTP address it tells its peers. Its
    /// `tls` is for the caller to set from [`Config::cluster_tls_files`].
    pub fn cluster(&self, http_addr: SocketAddr) -> Option<ClusterConfig> {
        if self.join {
            let advertise = self
                .cluster_advertise()
                .unwrap_or_else(|_| self.cluster_addr.to_string());
            return Some(ClusterConfig {
                peers: [(self.node_id, advertise)].into(),
                http_addr: http_addr.to_string(),
                join: true,
                link_faults: None,
                tls: None,
            });
        }
        (!self.peers.is_empty()).then(|| ClusterConfig {
            peers: self.peers.clone(),
            http_addr: http_addr.to_string(),
            join: false,
            link_faults: None,
            tls: None,
        })
    }

    /// The registry's part.
    pub fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            snapshot_logs: self.snapshot_logs,
            snapshot_commands: self.snapshot_commands,
            self_preservation_threshold: self.self_preservation_threshold,
            self_preservation_min_leases: self.self_preservation_min_leases,
            self_preservation_bound: self.self_preservation_bound,
            sweep_interval: self.sweep_interval,
            enable_command_checks: self.enable_command_checks,
            check_concurrency: self.check_concurrency,
            acl: self.acl,
            startup_timeout: self.startup_timeout,
            force_recover_from_snapshot: self.force_recover_from_snapshot,
        }
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

/// Parses peers as `1=10.0.0.1:7701,2=10.0.0.2:7701` (spaces allowed
/// around entries; an empty string is no peers).
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| format!("peer {entry:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {entry:?}: {id:?} is not a node id"))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer {id} is given twice"));
        }
    }
    Ok(peers)
}

/// Peers in the config file are one string, as on the command line.
mod peers_string {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &BTreeMap<u64, String>, s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = p.iter().map(|(id, a)| format!("{id}={a}")).collect();
        s.serialize_str(&text.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_peers(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_from_the_flag_form_and_refuse_what_is_not() {
        let p = parse_peers("1=127.0.0.1:7701, 2=127.0.0.1:7702,3=h:7703").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "127.0.0.1:7702");
        assert!(parse_peers("").unwrap().is_empty());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1").is_err());
        let cfg = Config {
            node_id: 4,
            peers: p,
            ..Config::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("peers must include this node")
        );
        let text = toml::to_string(&cfg).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.peers, cfg.peers);
    }

    #[test]
    fn cluster_tls_takes_all_three_files_and_a_cluster() {
        let clustered = Config {
            join: true,
            cluster_tls_cert: Some("node.pem".into()),
            ..Config::default()
        };
        let e = clustered.validate().unwrap_err();
        assert!(
            e.contains("missing: cluster_tls_key, cluster_tls_ca"),
            "{e}"
        );
        let all = Config {
            cluster_tls_key: Some("node-key.pem".into()),
            cluster_tls_ca: Some("ca.pem".into()),
            ..clustered
        };
        assert_eq!(all.validate(), Ok(()));
        let alone = Config { join: false, ..all };
        let e = alone.validate().unwrap_err();
        assert!(e.contains("only a node with peers or join"), "{e}");
    }

    #[test]
    fn the_advertised_address_is_a_reachable_one_and_the_peers_entry() {
        let bound_everywhere = Config {
            join: true,
            cluster_addr: "0.0.0.0:7701".parse().unwrap(),
            ..Config::default()
        };
        let e = bound_everywhere.validate().unwrap_err();
        assert!(e.contains("set cluster_advertise"), "{e}");
        let advertised = Config {
            cluster_advertise: Some("10.0.0.1:7701".into()),
            ..bound_everywhere.clone()
        };
        assert_eq!(advertised.validate(), Ok(()));
        let c = advertised.cluster(advertised.http_addr).unwrap();
        assert_eq!(c.peers[&1], "10.0.0.1:7701");
        for bad in [
            "[::]:7701",
            "0.0.0.0:7701",
            "10.0.0.1",
            "10.0.0.1:0",
            ":7701",
        ] {
            let cfg = Config {
                cluster_advertise: Some(bad.into()),
                ..bound_everywhere.clone()
            };
            assert!(cfg.validate().is_err(), "{bad}");
        }
        // With peers, this node's entry is where the others reach it.
        let peers = Config {
            join: false,
            peers: parse_peers("1=10.0.0.1:7701,2=10.0.0.2:7701").unwrap(),
            ..advertised
        };
        assert_eq!(peers.validate(), Ok(()));
        let other = Config {
            cluster_advertise: Some("10.0.0.9:7701".into()),
            ..peers
        };
        let e = other.validate().unwrap_err();
        assert!(e.contains("not this node's entry in peers"), "{e}");
        // A single node has no cluster port to advertise.
        assert_eq!(
            Config {
                cluster_addr: "0.0.0.0:7701".parse().unwrap(),
                ..Config::default()
            }
            .validate(),
            Ok(())
        );
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn the_limits_come_from_the_file_and_reach_the_http_listener() {
        let cfg: Config = toml::from_str(
            "max_connections_per_ip = 7\nmax_watches = 9\nmax_watches_per_ip = 3\n\
             max_blocking_queries = 11\nmax_blocking_queries_per_ip = 0\n\
             http2_max_streams = 5\nrate_limit = 100\nrate_limit_burst = 150\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let l = cfg.http_limits();
        assert_eq!(
            (
                l.max_connections_per_ip,
                l.max_watches,
                l.max_watches_per_ip
            ),
            (7, 9, 3)
        );
        assert_eq!(
            (l.max_blocking_queries, l.max_blocking_queries_per_ip),
            (11, 0)
        );
        assert_eq!(
            (l.http2_max_streams, l.rate_limit, l.rate_limit_burst),
            (5, 100, 150)
        );
        // On by default: the per-address caps; off: the rate limit.
        let d = Config::default().http_limits();
        assert!(d.max_connections_per_ip > 0 && d.max_watches_per_ip > 0);
        assert!(d.max_blocking_queries_per_ip > 0);
        assert_eq!(d.rate_limit, 0);
        for bad in [
            "max_watches = 0",
            "http2_max_streams = 0",
            "rate_limit_burst = 5",
        ] {
            let cfg: Config = toml::from_str(bad).unwrap();
            assert!(cfg.validate().is_err(), "{bad} is refused");
        }
    }
}
