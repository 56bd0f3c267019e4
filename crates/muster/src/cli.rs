//! Command-line definitions. Every flag of `agent` can also come from the
//! environment (`MUSTER_*`) or the TOML file given with `--config`; flags win
//! over the environment, which wins over the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// muster: a fast, durable service registry.
///
/// Start a registry with `muster agent`, then register and discover
/// instances with the other commands (or plain HTTP: see /v1/openapi.json).
#[derive(Debug, Parser)]
#[command(name = "muster", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of the client commands.
#[derive(Debug, Args)]
pub struct Global {
    /// Registry address for client commands.
    #[arg(
        long,
        global = true,
        env = "MUSTER_ADDR",
        default_value = "http://127.0.0.1:7700"
    )]
    pub addr: String,
    /// Namespace for client commands.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "MUSTER_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// ACL token (its secret) for a registry run with --acl, sent as `Authorization: Bearer`.
    /// Prefer the environment variable: a flag shows in the process list.
    #[arg(long, global = true, env = "MUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust only this CA (PEM) for an https:// --addr, e.g. the one made by
    /// `muster tls ca create`.
    #[arg(long, global = true, env = "MUSTER_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for a registry that requires one; with --client-key.
    #[arg(
        long,
        global = true,
        env = "MUSTER_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "MUSTER_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry (single node, durable store under --data-dir).
    ///
    /// Example: `muster agent` serves on 127.0.0.1:7700 with data in ./muster-data;
    /// `muster agent --dev` uses a throw-away store.
    Agent(Box<AgentArgs>),
    /// Register (or replace) an instance.
    ///
    /// Example: `muster register payments pay-1 --address 10.0.0.5 --port 8080 --tag v2 --ttl 30s`
    Register(RegisterArgs),
    /// Deregister an instance.
    ///
    /// Example: `muster deregister payments pay-1`
    Deregister {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// List services with instance counts by health.
    Services,
    /// Discover instances of a service.
    ///
    /// Example: `muster instances payments --tag v2 --version '^1.4' --zone eu-1a`
    Instances {
        /// Service name.
        service: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show one instance with its checks: status, output and last run.
    ///
    /// Example: `muster instance payments pay-1`
    Instance {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Print changes to a service as they happen (Ctrl-C to stop).
    ///
    /// Example: `muster watch payments`
    Watch {
        /// Service name.
        service: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// The cluster as the node at --addr sees it.
    ///
    /// Example: `muster cluster members`
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Development certificates: a CA, then server and client certificates it signs
    /// (files in the current directory, or --dir). Works offline; no registry is asked.
    ///
    /// Example: `muster tls ca create && muster tls cert create --server`, then
    /// `muster agent --tls-cert muster-server.pem --tls-key muster-server-key.pem` and
    /// `muster --addr https://127.0.0.1:7700 --cacert muster-ca.pem services`.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// ACL tokens and policies, for a registry run with --acl.
    ///
    /// Example: `muster acl bootstrap`, then `muster acl policy create payments-write
    /// --write payments` and `muster acl token create --policy payments-write`
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Back up the whole registry to a file, look into a backup, restore one.
    ///
    /// Example: `muster snapshot save backup.msnap`, then
    /// `muster snapshot restore backup.msnap` (into a running cluster, or a fresh one
    /// started for it)
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

/// `muster acl` subcommands.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Makes the first management token, once ever, and prints its secret (shown only now:
    /// keep it safe, e.g. in a secret store; export it as MUSTER_TOKEN to use it).
    Bootstrap,
    /// Tokens: create, list, show, update, revoke.
    Token {
        #[command(subcommand)]
        command: AclTokenCommand,
    },
    /// Policies: create (or replace), list, show, delete.
    Policy {
        #[command(subcommand)]
        command: AclPolicyCommand,
    },
}

/// `muster acl token` subcommands.
#[derive(Debug, Subcommand)]
pub enum AclTokenCommand {
    /// Creates a token and prints its secret (shown only now).
    ///
    /// Example: `muster acl token create --policy payments-write --description "payments pods"`
    Create {
        /// Policy the token carries (repeatable; each must exist).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Make it stop working after this long (`1h`, `90d`).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Every token (accessor, policies, expiry; never a secret).
    List,
    /// One token by accessor, or the one in use (`self`).
    Show {
        /// Accessor, `anonymous`, or `self`.
        accessor: String,
    },
    /// Sets a token's policies and description. `anonymous` is what callers without a token
    /// get: `muster acl token update anonymous --policy public-read`.
    Update {
        /// Accessor or `anonymous`.
        accessor: String,
        /// Policy the token carries (repeatable; replaces the list).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revokes a token: every node refuses it once the revoke is applied.
    Revoke {
        /// Accessor.
        accessor: String,
    },
}

/// `muster acl policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum AclPolicyCommand {
    /// Creates or replaces a policy. A service pattern is a name, or a prefix ending in `*`,
    /// optionally `namespace/pattern` (else --namespace applies; `*` is every namespace).
    ///
    /// Example: `muster acl policy create payments-write --write payments --read 'pay*'`
    Create {
        /// Policy name.
        name: String,
        /// Grant read on these services (repeatable).
        #[arg(long)]
        read: Vec<String>,
        /// Grant write (and read) on these services (repeatable).
        #[arg(long)]
        write: Vec<String>,
        /// Deny these services, whatever less specific rules grant (repeatable).
        #[arg(long)]
        deny: Vec<String>,
        /// Grant the operator right: cluster membership and status, snapshots.
        #[arg(long)]
        operator: bool,
        /// Grant the acl right: manage tokens and policies.
        #[arg(long)]
        acl: bool,
        /// What the policy is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every policy.
    List,
    /// One policy.
    Show {
        /// Policy name.
        name: String,
    },
    /// Deletes a policy; tokens naming it lose what it granted.
    Delete {
        /// Policy name.
        name: String,
    },
}

/// `muster snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Saves a consistent point-in-time backup of the registry at --addr (any node) to FILE:
    /// written to a temporary file, checked, then renamed, so FILE is never left half
    /// written.
    ///
    /// Example: `muster snapshot save backup.msnap`
    Save {
        /// The backup file to write.
        file: PathBuf,
        /// Show progress on stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Shows what a backup holds (index, term, time, counts) and checks its checksum.
    ///
    /// Example: `muster snapshot inspect backup.msnap`
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
    /// Replaces the state of the whole cluster at --addr (any node) with a backup, through
    /// the log: every node ends with the same state. A corrupt or truncated file is refused
    /// and changes nothing. Restored leases start a fresh TTL.
    ///
    /// Example: `muster snapshot restore backup.msnap`
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Show progress on stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
}

/// `muster tls` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// The certificate authority: `muster tls ca create`.
    Ca {
        #[command(subcommand)]
        command: TlsCaCommand,
    },
    /// Certificates signed by the CA: `muster tls cert create --server|--client`.
    Cert {
        #[command(subcommand)]
        command: TlsCertCommand,
    },
}

/// `muster tls ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCaCommand {
    /// Creates a CA: muster-ca.pem (give it to clients and agents) and muster-ca-key.pem
    /// (keep it private; it signs certificates). Refuses to overwrite either.
    Create(TlsCaArgs),
}

/// `muster tls cert` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCertCommand {
    /// Creates a certificate and key signed by the CA: muster-server.pem and
    /// muster-server-key.pem (or muster-client*.pem, or NAME.pem with --name).
    Create(TlsCertArgs),
}

/// Flags of `muster tls ca create`.
#[derive(Debug, Args)]
pub struct TlsCaArgs {
    /// Directory to write the files to.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 1825)]
    pub days: u32,
}

/// Flags of `muster tls cert create`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["server", "client"])))]
pub struct TlsCertArgs {
    /// A server certificate, for `muster agent --tls-cert` and `--cluster-tls-cert` (it carries
    /// serverAuth and clientAuth: a cluster node is both, as Consul server and etcd peer
    /// certificates are).
    #[arg(long)]
    pub server: bool,
    /// A client certificate, for `--client-cert` when the agent requires one.
    #[arg(long)]
    pub client: bool,
    /// Base name of the files [default: muster-server or muster-client].
    #[arg(long)]
    pub name: Option<String>,
    /// DNS names the server answers to (repeatable) [default: localhost].
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// IP addresses the server answers on (repeatable) [default: 127.0.0.1 and ::1].
    #[arg(long = "ip")]
    pub ip: Vec<std::net::IpAddr>,
    /// The CA certificate.
    #[arg(long, default_value = "muster-ca.pem")]
    pub ca: PathBuf,
    /// The CA's private key.
    #[arg(long, default_value = "muster-ca-key.pem")]
    pub ca_key: PathBuf,
    /// Directory to write the files to.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// `muster cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every member: id, role, cluster and HTTP addresses, match index and
    /// last contact (known on the leader; ask it for the whole picture).
    Members,
    /// Adds node ID, started with `--join --node-id ID --cluster-addr ADDR`: it joins as a
    /// learner and becomes a voter once it holds the log. A removed id is refused for good.
    ///
    /// Example: `muster cluster join 4 10.0.0.4:7701`
    Join {
        /// The new node's id (never one removed before).
        id: u64,
        /// Its cluster RPC address (its --cluster-addr).
        cluster_addr: String,
    },
    /// Removes node ID (then stop it); its id is never accepted again. The leader cannot
    /// remove itself: transfer leadership first.
    ///
    /// Example: `muster cluster leave 3`
    Leave {
        /// The node id.
        id: u64,
    },
    /// Moves leadership to voter ID, or to the most up-to-date other voter; writes pause for
    /// about the election timeout (1-2 s).
    ///
    /// Example: `muster cluster transfer-leader 2`
    TransferLeader {
        /// The voter to lead.
        id: Option<u64>,
    },
}

/// Flags of `muster agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file (keys as in the Config docs, e.g. `http_addr = "127.0.0.1:7700"`).
    #[arg(long, env = "MUSTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:7700].
    #[arg(long, env = "MUSTER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory of the durable store [default: ./muster-data].
    #[arg(long, env = "MUSTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use a throw-away store in a temporary directory, deleted on exit.
    #[arg(long, conflicts_with = "data_dir")]
    pub dev: bool,
    /// This node's id [default: 1].
    #[arg(long, env = "MUSTER_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address of the cluster RPC listener, bound only with --peers or --join [default: 127.0.0.1:7701].
    #[arg(long, env = "MUSTER_CLUSTER_ADDR")]
    pub cluster_addr: Option<std::net::SocketAddr>,
    /// The cluster address this node tells its peers, when it is not --cluster-addr (bound to
    /// 0.0.0.0, or behind NAT), e.g. 10.0.0.1:7701; never 0.0.0.0. With --peers, this node's
    /// entry there.
    #[arg(long, env = "MUSTER_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// The cluster's voters, this node included: `1=10.0.0.1:7701,2=10.0.0.2:7701,3=10.0.0.3:7701`.
    /// The same on every node; start them in any order, the cluster forms once a majority runs.
    /// Without it, a cluster of one.
    #[arg(long, env = "MUSTER_PEERS")]
    pub peers: Option<String>,
    /// Join a running cluster instead of --peers: serve cluster RPC at --cluster-addr and wait
    /// to be added with `muster cluster join <node-id> <cluster-addr>` against any member.
    #[arg(long, env = "MUSTER_JOIN", conflicts_with = "peers")]
    pub join: bool,
    /// Share of leases that may fall silent at once before expiry pauses [default: 0.85].
    #[arg(long, env = "MUSTER_SELF_PRESERVATION_THRESHOLD")]
    pub self_preservation_threshold: Option<f64>,
    /// Allow health checks that run commands on this host (`args` checks).
    #[arg(long, env = "MUSTER_ENABLE_COMMAND_CHECKS")]
    pub enable_command_checks: bool,
    /// Enforce ACL tokens: default deny; `muster acl bootstrap` makes the first management token.
    #[arg(long, env = "MUSTER_ACL")]
    pub acl: bool,
    /// Append one JSON line per audited write (accessor, operation, target, result) to this file.
    #[arg(long, env = "MUSTER_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,
    /// Serve the HTTP API over TLS with this certificate chain (PEM); with --tls-key.
    /// Reloaded on SIGHUP.
    #[arg(long, env = "MUSTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MUSTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM) on every HTTP connection.
    #[arg(long, env = "MUSTER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Mutual TLS on the cluster port: this node's certificate (PEM), presented to peers both
    /// ways (`muster tls cert create --server --ip <its address>` makes one). With
    /// --cluster-tls-key and --cluster-tls-ca. Reloaded on SIGHUP.
    #[arg(long, env = "MUSTER_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// The private key of --cluster-tls-cert (PEM).
    #[arg(long, env = "MUSTER_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,
    /// The CA (PEM) every node's cluster certificate must come from; peers with another are
    /// refused.
    #[arg(long, env = "MUSTER_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// Start even though the log no longer reaches the snapshot (deleted,
    /// emptied or older), accepting the loss of every write acknowledged
    /// after the snapshot. Only when muster refused to start and said so.
    #[arg(long)]
    pub force_recover_from_snapshot: bool,
    /// Limits against abuse (connections, watches, blocking queries, rate).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Log format.
    #[arg(long, env = "MUSTER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Flags of `muster agent` that set its limits against abuse; each
/// overrides the config key of the same name (with `_` for `-`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Most HTTP connections at once [default: 16384].
    #[arg(long, env = "MUSTER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most HTTP connections from one client address (IPv6: a /64); 0 = no cap [default: 512].
    #[arg(long, env = "MUSTER_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Most watches open at once [default: 16384].
    #[arg(long, env = "MUSTER_MAX_WATCHES")]
    pub max_watches: Option<usize>,
    /// Most watches open from one client address; 0 = no cap [default: 512].
    #[arg(long, env = "MUSTER_MAX_WATCHES_PER_IP")]
    pub max_watches_per_ip: Option<usize>,
    /// Most blocking queries parked at once [default: 16384].
    #[arg(long, env = "MUSTER_MAX_BLOCKING_QUERIES")]
    pub max_blocking_queries: Option<usize>,
    /// Most blocking queries parked from one client address; 0 = no cap [default: 512].
    #[arg(long, env = "MUSTER_MAX_BLOCKING_QUERIES_PER_IP")]
    pub max_blocking_queries_per_ip: Option<usize>,
    /// Most concurrent requests on one HTTP/2 connection [default: 256].
    #[arg(long, env = "MUSTER_HTTP2_MAX_STREAMS")]
    pub http2_max_streams: Option<u32>,
    /// Requests a second per token (per client address without one); 0 = off [default: 0].
    #[arg(long, env = "MUSTER_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Requests a token or address may send in a burst; 0 = as many as --rate-limit [default: 0].
    #[arg(long, env = "MUSTER_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Time a client has to send a request head (slowloris, idle keep-alive), e.g. `30s`.
    #[arg(long, env = "MUSTER_HTTP_HEADER_TIMEOUT", value_parser = muster_types::parse_duration)]
    pub http_header_timeout: Option<std::time::Duration>,
    /// Time a client has to send a request body, e.g. `30s`.
    #[arg(long, env = "MUSTER_HTTP_BODY_TIMEOUT", value_parser = muster_types::parse_duration)]
    pub http_body_timeout: Option<std::time::Duration>,
}

impl LimitArgs {
    /// Overrides what the file and the defaults set.
    pub fn apply(&self, cfg: &mut muster_agent::Config) {
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut cfg.max_connections, self.max_connections);
        set(&mut cfg.max_connections_per_ip, self.max_connections_per_ip);
        set(&mut cfg.max_watches, self.max_watches);
        set(&mut cfg.max_watches_per_ip, self.max_watches_per_ip);
        set(&mut cfg.max_blocking_queries, self.max_blocking_queries);
        set(
            &mut cfg.max_blocking_queries_per_ip,
            self.max_blocking_queries_per_ip,
        );
        if let Some(v) = self.http2_max_streams {
            cfg.http2_max_streams = v;
        }
        if let Some(v) = self.rate_limit {
            cfg.rate_limit = v;
        }
        if let Some(v) = self.rate_limit_burst {
            cfg.rate_limit_burst = v;
        }
        if let Some(v) = self.http_header_timeout {
            cfg.http_header_timeout = v;
        }
        if let Some(v) = self.http_body_timeout {
            cfg.http_body_timeout = v;
        }
    }
}

/// Flags of `muster register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Service name.
    pub service: String,
    /// Instance id (unique within the service).
    pub id: String,
    /// IP address or host name the instance serves on.
    #[arg(long)]
    pub address: String,
    /// Port the instance serves on.
    #[arg(long)]
    pub port: u32,
    /// Tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Metadata as key=value (repeatable).
    #[arg(long = "meta", value_parser = parse_kv)]
    pub meta: Vec<(String, String)>,
    /// Version, e.g. 1.4.2.
    #[arg(long)]
    pub version: Option<String>,
    /// Zone, e.g. eu-1a.
    #[arg(long)]
    pub zone: Option<String>,
    /// Load-balancing weight (1 to 10000, default 100).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Give the instance its own lease with this TTL (e.g. 30s); it must then be heartbeated.
    #[arg(long, conflicts_with = "lease")]
    pub ttl: Option<String>,
    /// Attach the instance to an existing lease.
    #[arg(long)]
    pub lease: Option<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} must look like key=value"))
}

/// Discovery filters.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Required tag (repeatable; all must match).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Required metadata key:value (repeatable).
    #[arg(long = "meta")]
    pub meta: Vec<String>,
    /// Semver range, e.g. '^1.4' or '>=2,<3'.
    #[arg(long)]
    pub version: Option<String>,
    /// Zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Include instances whatever their health.
    #[arg(long)]
    pub all: bool,
}

impl FilterArgs {
    /// As query-string pairs.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        p.extend(self.tags.iter().map(|t| ("tag", t.clone())));
        p.extend(self.meta.iter().map(|m| ("meta", m.clone())));
        if let Some(v) = &self.version {
            p.push(("version", v.clone()));
        }
        if let Some(z) = &self.zone {
            p.push(("zone", z.clone()));
        }
        if self.all {
            p.push(("health", "any".into()));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn filters_become_query_pairs() {
        let cli = Cli::try_parse_from([
            "muster",
            "instances",
            "pay",
            "--tag",
            "a",
            "--tag",
            "b",
            "--version",
            "^1.4",
            "--all",
        ])
        .unwrap();
        let Command::Instances { filter, .. } = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(
            filter.pairs(),
            vec![
                ("tag", "a".into()),
                ("tag", "b".into()),
                ("version", "^1.4".into()),
                ("health", "any".into())
            ]
        );
    }
}
