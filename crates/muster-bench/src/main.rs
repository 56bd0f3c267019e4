//! `muster-bench`: drives the flows of PERFORMANCE.md over real HTTP on
//! loopback against muster, a bare-HTTP ceiling and a local etcd, in
//! alternating rounds, and reports medians as a table and as JSON.

mod cluster;
mod etcd;
mod host;
mod load;
mod scenarios;
mod servers;
mod sse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

use scenarios::{Row, Settings, Target};

/// The same allocator as muster's binary (crates/muster/src/main.rs): the
/// ceiling runs in this binary, and its share of muster's cost is only a
/// like-for-like figure if both allocate through mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "muster-bench",
    about = "Load generator for muster, side by side with a bare-HTTP ceiling and etcd",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the same bytes to every request (the ceiling; started by the
    /// harness itself).
    Ceiling {
        #[arg(long)]
        body_file: PathBuf,
        /// Status and headers to answer with (JSON, written by the harness
        /// from muster's answer).
        #[arg(long)]
        head_file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Scenarios to run (default: all): heartbeat, heartbeat-batch, lookup-1, lookup-100,
    /// register, churn, watch-fanout, watch-many, failure-detection, scale.
    scenarios: Vec<String>,
    /// Systems to measure, comma-separated: muster, ceiling, etcd.
    #[arg(long, value_delimiter = ',', default_value = "muster,ceiling,etcd")]
    targets: Vec<String>,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Concurrent keep-alive connections (or gRPC clients for etcd).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Rounds of A/B/A/B: each target runs this many times, interleaved;
    /// the report shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Leases renewed round-robin by `heartbeat`.
    #[arg(long, default_value_t = 1000)]
    leases: usize,
    /// Services one client looks up (and so watches) in `watch-many`.
    #[arg(long, default_value_t = 1000)]
    watch_services: usize,
    /// SSE watchers in `watch-fanout`.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Changes broadcast in `watch-fanout`.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Leases left to expire in `failure-detection`.
    #[arg(long, default_value_t = 10)]
    fd_samples: usize,
    /// Instance counts for `scale`, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    scale: Vec<u64>,
    /// Restarts timed after each `scale` run's `kill -9` (the report gives
    /// their median and every round), each from a dropped page cache where
    /// the kernel allows it (root).
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Nodes per cluster: 1 (the default) runs the single-node scenarios;
    /// 3 (or 5) runs register, heartbeat, lookup-1 and failover against a
    /// muster cluster of that many nodes (and register against an etcd
    /// cluster of as many members), all on loopback.
    #[arg(long, default_value_t = 1)]
    cluster: usize,
    /// In cluster mode, where `register`'s clients send their requests,
    /// comma-separated, one row each: spread (round-robin over every
    /// member, followers forwarding to the leader) and leader.
    #[arg(long, value_delimiter = ',', default_value = "spread,leader")]
    send_to: Vec<String>,
    /// Leader kills timed by `failover` in each round.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// A short run of every scenario, to check that each one works (CI).
    #[arg(long)]
    smoke: bool,
    /// The muster binary (default: `muster` next to this one).
    #[arg(long)]
    muster_bin: Option<PathBuf>,
    /// Core the servers are pinned to (with taskset).
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// Core the load generator pins itself to.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Where the servers' data directories go (muster's and etcd's, in a
    /// fresh directory made here); default: the system's temp dir. Durable
    /// scenarios refuse a tmpfs, where fsync costs nothing.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `scale` copies each killed server's data directory here (as
    /// `scale-<n>` or `scale-unique-<n>`), to profile its restart again and again.
    #[arg(long)]
    keep_data: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Ceiling {
        body_file,
        head_file,
    }) = cli.command
    {
        return match ceiling(body_file, head_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli.run;
    // Pin the load generator by re-running this process under taskset, so
    // one command does all the pinning.
    if !args.no_pin && std::env::var_os("MUSTER_BENCH_PINNED").is_none() && cpus() >= 2 {
        let exe = std::env::current_exe().expect("current exe");
        let status = std::process::Command::new("taskset")
            .arg("-c")
            .arg(args.client_cpu.to_string())
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env("MUSTER_BENCH_PINNED", "1")
            .status();
        return match status {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: cannot run taskset: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn ceiling(body_file: PathBuf, head_file: PathBuf) -> Result<()> {
    let body =
        std::fs::read(&body_file).with_context(|| format!("reading {}", body_file.display()))?;
    let head =
        std::fs::read(&head_file).with_context(|| format!("reading {}", head_file.display()))?;
    let head: servers::CeilingHead = serde_json::from_slice(&head)
        .with_context(|| format!("parsing {}", head_file.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(servers::run_ceiling(head, body.into()))
}

/// The JSON report. `date`, `machine`, `cpu` and `filesystems` hold for every
/// figure in it.
#[derive(Serialize)]
struct Report {
    date: String,
    /// `<cores> x <processor model>`, as in the printed header.
    machine: String,
    /// The processor model, core count and whether virtualised, field by field.
    cpu: host::Machine,
    pinning: String,
    /// The filesystem under each server's data directories (`muster`,
    /// `etcd`): durable figures depend on what an fsync costs there.
    filesystems: BTreeMap<String, host::Filesystem>,
    settings: BTreeMap<String, serde_json::Value>,
    medians: Vec<Row>,
    /// muster against the ceiling and etcd, per throughput scenario (from
    /// the medians).
    comparisons: Vec<Comparison>,
    /// Cluster mode: muster against etcd per place the clients send to,
    /// and a follower's share of the leader's req/s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cluster: Vec<ClusterFigure>,
    runs: Vec<Row>,
}

async fn bench(mut a: RunArgs) -> Result<()> {
    if a.smoke {
        a.duration = 0.5;
        a.runs = 1;
        a.watchers = a.watchers.min(50);
        a.watch_services = a.watch_services.min(50);
        a.changes = 2;
        a.fd_samples = 2;
        a.leases = a.leases.min(100);
        a.scale = vec![2000];
        a.restarts = 1;
        // Cluster mode: one leader kill (and the restart and catch-up after
        // it), and `register` with the clients spread only (the leader's
        // row differs only in the addresses), to stay short in CI.
        a.kills = a.kills.min(1);
        a.send_to.truncate(1);
    }
    if a.cluster == 0 || (a.cluster > 1 && a.cluster.is_multiple_of(2)) {
        bail!(
            "--cluster {} : a cluster has 1 node or an odd number of them",
            a.cluster
        );
    }
    let known = if a.cluster > 1 {
        cluster::SCENARIOS
    } else {
        scenarios::ALL
    };
    let scenarios: Vec<String> = if a.scenarios.is_empty() || a.scenarios == ["all"] {
        known.iter().map(|s| s.to_string()).collect()
    } else {
        a.scenarios.clone()
    };
    for s in &scenarios {
        if !known.contains(&s.as_str()) {
            let mode = if a.cluster > 1 {
                format!("with --cluster {}", a.cluster)
            } else {
                "without --cluster".to_string()
            };
            bail!("unknown scenario {s:?} {mode}; known: {}", known.join(", "));
        }
    }
    let send_to = a
        .send_to
        .iter()
        .map(|s| cluster::SendTo::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let mut targets = Vec::new();
    for t in &a.targets {
        targets.push(match t.as_str() {
            "muster" => Target::Muster,
            "muster-acl" => Target::MusterAcl,
            "muster-tls" => Target::MusterTls,
            "ceiling" => Target::Ceiling,
            "etcd" => Target::Etcd,
            other => bail!(
                "unknown target {other:?}; known: muster, muster-acl, muster-tls, ceiling, etcd"
            ),
        });
    }
    let pinned = !a.no_pin && cpus() >= 1 && std::env::var_os("MUSTER_BENCH_PINNED").is_some();
    let data_root = a.data_root.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&data_root)
        .with_context(|| format!("creating {}", data_root.display()))?;
    let work = tempfile::Builder::new()
        .prefix("muster-bench-")
        .tempdir_in(&data_root)
        .with_context(|| format!("creating a directory in {}", data_root.display()))?;
    let etcd_data = work.path().join("etcd");
    std::fs::create_dir(&etcd_data)?;
    let mut filesystems = BTreeMap::new();
    filesystems.insert("muster".to_string(), host::filesystem_of(work.path())?);
    if targets.contains(&Target::Etcd) {
        filesystems.insert("etcd".to_string(), host::filesystem_of(&etcd_data)?);
    }
    refuse_memory_backed_durability(&scenarios, &filesystems, a.smoke)?;
    let settings = Settings {
        muster_bin: a
            .muster_bin
            .clone()
            .unwrap_or_else(servers::default_muster_bin),
        server_cpu: pinned.then_some(a.server_cpu),
        duration: Duration::from_secs_f64(a.duration),
        connections: a.connections,
        leases: a.leases,
        watchers: a.watchers,
        watch_services: a.watch_services,
        changes: a.changes,
        fd_samples: a.fd_samples,
        scale: a.scale.clone(),
        work: work.path().to_path_buf(),
        etcd_data,
        keep_data: a.keep_data.clone(),
        restarts: a.restarts,
        drop_page_cache: !a.smoke,
        cluster: a.cluster,
        send_to,
        kills: a.kills,
    };
    if !settings.muster_bin.exists() {
        bail!(
            "muster binary not found at {} (build it, or pass --muster-bin)",
            settings.muster_bin.display()
        );
    }
    let pinning = if pinned {
        format!(
            "servers on cpu {}, load generator on cpu {} (taskset)",
            a.server_cpu, a.client_cpu
        )
    } else {
        "not pinned".to_string()
    };
    eprintln!(
        "muster-bench: {}{} scenario(s) x {} target(s) x {} round(s), {:.1}s each, {} connections; {pinning}",
        if a.cluster > 1 {
            format!("clusters of {}: ", a.cluster)
        } else {
            String::new()
        },
        scenarios.len(),
        targets.len(),
        a.runs,
        a.duration,
        a.connections
    );
    let date = date();
    let machine = host::Machine::this();
    let header = header(&date, &machine, &pinning, &filesystems);
    for line in &header {
        eprintln!("{line}");
    }
    let mut all = Vec::new();
    for scenario in &scenarios {
        for run in 0..a.runs {
            eprintln!("  {scenario}: round {}/{}", run + 1, a.runs);
            let rows = scenarios::run(&settings, scenario, &targets, run).await?;
            for r in &rows {
                eprintln!(
                    "    {:<8} {:>10.0} req/s  p50 {:>8}  p99 {:>8}  errors {}{}",
                    r.target,
                    r.summary.rps,
                    fmt_us(r.summary.p50_us),
                    fmt_us(r.summary.p99_us),
                    r.summary.errors,
                    r.summary
                        .first_error
                        .as_deref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                );
            }
            all.extend(rows);
        }
    }
    let medians = medians(&all);
    let comparisons = comparisons(&medians);
    let cluster_figures = cluster_figures(&medians, &all);
    for line in &header {
        println!("{line}");
    }
    print_table(&medians, &comparisons);
    print_shares(&comparisons);
    print_cluster_figures(&cluster_figures);
    if let Some(path) = &a.json {
        let report = Report {
            date,
            machine: machine.to_string(),
            cpu: machine,
            pinning,
            filesystems,
            settings: BTreeMap::from([
                ("duration_s".into(), a.duration.into()),
                ("connections".into(), a.connections.into()),
                ("runs".into(), a.runs.into()),
                ("restarts".into(), a.restarts.into()),
                ("leases".into(), a.leases.into()),
                ("watchers".into(), a.watchers.into()),
                ("smoke".into(), a.smoke.into()),
                ("cluster".into(), a.cluster.into()),
                ("send_to".into(), a.send_to.clone().into()),
                ("kills".into(), a.kills.into()),
            ]),
            medians,
            comparisons,
            cluster: cluster_figures,
            runs: all.clone(),
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let failed: Vec<_> = all.iter().filter(|r| r.summary.errors > 0).collect();
    if !failed.is_empty() {
        for r in &failed {
            eprintln!(
                "error: {} against {}: {} failed requests (first: {})",
                r.scenario,
                r.target,
                r.summary.errors,
                r.summary.first_error.as_deref().unwrap_or("?")
            );
        }
        bail!("{} run(s) had failed requests", failed.len());
    }
    Ok(())
}

/// Fails if a durable scenario (one whose figures include fsyncs) would keep
/// its data on a memory-backed filesystem, where fsync costs nothing. A smoke
/// run only checks that every scenario works, so it goes on with a warning.
fn refuse_memory_backed_durability(
    scenarios: &[String],
    filesystems: &BTreeMap<String, host::Filesystem>,
    smoke: bool,
) -> Result<()> {
    let durable: Vec<&str> = scenarios
        .iter()
        .map(String::as_str)
        .filter(|s| scenarios::DURABLE.contains(s))
        .collect();
    let in_memory: Vec<String> = filesystems
        .iter()
        .filter(|(_, fs)| fs.is_memory_backed())
        .map(|(server, fs)| format!("{server}'s data: {fs}"))
        .collect();
    if durable.is_empty() || in_memory.is_empty() {
        return Ok(());
    }
    if smoke {
        eprintln!(
            "warning: data on a memory-backed filesystem ({}): fsync costs nothing there, \
             so the figures of {} mean nothing; this smoke run only checks that they work",
            in_memory.join("; "),
            durable.join(", ")
        );
        return Ok(());
    }
    bail!(
        "refusing to run {} with {}: fsync costs nothing there, so figures of durable \
         writes would flatter every target. Pass --data-root DIR on a disk-backed \
         filesystem (ext4, xfs, ...), or --smoke only to check that the scenarios work",
        durable.join(", "),
        in_memory.join("; ")
    )
}

/// The lines that say when and on what the figures were measured, printed
/// before the run and above the table.
fn header(
    date: &str,
    machine: &host::Machine,
    pinning: &str,
    filesystems: &BTreeMap<String, host::Filesystem>,
) -> Vec<String> {
    let mut lines = vec![
        format!("date: {date}"),
        format!("machine: {machine}"),
        format!("pinning: {pinning}"),
    ];
    lines.extend(
        filesystems
            .iter()
            .map(|(server, fs)| format!("data ({server}): {fs}")),
    );
    lines
}

/// The median run (by req/s, or by p99 where req/s is not the point) of
/// each (scenario, target).
fn medians(rows: &[Row]) -> Vec<Row> {
    let mut groups: Vec<((String, String), Vec<&Row>)> = Vec::new();
    for r in rows {
        let key = (r.scenario.clone(), r.target.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    groups
        .into_iter()
        .map(|(_, mut v)| {
            if is_latency_only(&v[0].scenario) {
                v.sort_by(|a, b| a.summary.p99_us.total_cmp(&b.summary.p99_us));
            } else {
                v.sort_by(|a, b| a.summary.rps.total_cmp(&b.summary.rps));
            }
            v[v.len() / 2].clone()
        })
        .collect()
}

/// Scenarios judged by latency (fan-out, detection), not by throughput.
fn is_latency_only(scenario: &str) -> bool {
    scenario == "watch-fanout"
        || scenario == "failure-detection"
        || scenario == "watch-many"
        || scenario == "failover"
}

/// One ratio of cluster mode, from the medians and from each round.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct ClusterFigure {
    scenario: String,
    /// What is divided by what, e.g. `muster / etcd (spread)`.
    figure: String,
    /// The ratio of the median rows' req/s.
    median: f64,
    /// The same ratio in each round (rows of the same round).
    rounds: Vec<f64>,
}

/// Cluster mode's ratios: `register` muster over etcd for each place the
/// clients send to, and `heartbeat`/`lookup-1` a follower's req/s as a
/// share of the leader's (in %).
fn cluster_figures(medians: &[Row], all: &[Row]) -> Vec<ClusterFigure> {
    let pairs = [
        (
            "register",
            "muster",
            "etcd",
            "muster / etcd (clients spread over all nodes)",
            1.0,
        ),
        (
            "register",
            "muster@leader",
            "etcd@leader",
            "muster / etcd (clients on the leader)",
            1.0,
        ),
        (
            "heartbeat",
            "muster@follower",
            "muster@leader",
            "follower / leader, %",
            100.0,
        ),
        (
            "lookup-1",
            "muster@follower",
            "muster@leader",
            "follower / leader, %",
            100.0,
        ),
    ];
    let rps = |rows: &[Row], scenario: &str, target: &str, run: Option<usize>| {
        rows.iter()
            .find(|r| {
                r.scenario == scenario
                    && r.target == target
                    && run.is_none_or(|n| r.run == n)
                    && r.extra.contains_key("cluster")
            })
            .map(|r| r.summary.rps)
            .filter(|&x| x > 0.0)
    };
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let mut out = Vec::new();
    for (scenario, num, den, figure, scale) in pairs {
        let Some(median) = rps(medians, scenario, num, None)
            .zip(rps(medians, scenario, den, None))
            .map(|(n, d)| round2(scale * n / d))
        else {
            continue;
        };
        let mut runs: Vec<usize> = all.iter().map(|r| r.run).collect();
        runs.sort_unstable();
        runs.dedup();
        let rounds = runs
            .into_iter()
            .filter_map(|n| {
                rps(all, scenario, num, Some(n))
                    .zip(rps(all, scenario, den, Some(n)))
                    .map(|(a, b)| round2(scale * a / b))
            })
            .collect();
        out.push(ClusterFigure {
            scenario: scenario.to_string(),
            figure: figure.to_string(),
            median,
            rounds,
        });
    }
    out
}

fn print_cluster_figures(figures: &[ClusterFigure]) {
    for f in figures {
        let rounds: Vec<String> = f.rounds.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<18} {}: {:.2} (rounds {})",
            f.scenario,
            f.figure,
            f.median,
            rounds.join(", ")
        );
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.0}µs")
    }
}

/// muster set against the ceiling and etcd in one throughput scenario, from
/// the medians.
#[derive(Debug, Clone, Serialize)]
struct Comparison {
    scenario: String,
    muster_rps: f64,
    ceiling_rps: Option<f64>,
    /// muster answered more requests per second than the ceiling, which does
    /// less per request: the load generator's core, not the server, is the
    /// limit, so a req/s share of the ceiling says nothing about the servers
    /// (and is left out). Compare server CPU per request instead.
    load_generator_bound: bool,
    /// muster's req/s over the ceiling's, in %; none where
    /// `load_generator_bound`.
    share_of_ceiling_rps_pct: Option<f64>,
    /// The ceiling's server CPU per request over muster's, in %: the share
    /// of the ceiling muster reaches where the server core is the limit.
    share_of_ceiling_cpu_pct: Option<f64>,
    /// Server CPU (user + system) per request, µs. In `heartbeat-batch`,
    /// muster's is per request of `RENEW_BATCH` renewals.
    muster_cpu_us_per_req: Option<f64>,
    ceiling_cpu_us_per_req: Option<f64>,
    /// etcd's, in the same scenario (in `heartbeat-batch`: per keep-alive
    /// of the `heartbeat` scenario).
    etcd_cpu_us_per_req: Option<f64>,
    /// etcd's server CPU over muster's, per request (in `heartbeat-batch`,
    /// per renewal): how many times the CPU muster spends etcd spends.
    etcd_cpu_over_muster: Option<f64>,
    /// muster with ACLs on (a token checked on every request): its req/s
    /// as a share of plain muster's, in %, and plain muster's server CPU per
    /// request as a share of its own (the share where the server core is
    /// the limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    acl: Option<Share>,
    /// muster serving HTTPS (keep-alive): the same two shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Share>,
}

/// A variant of muster (ACLs, TLS) against plain muster in one scenario.
#[derive(Debug, Clone, Serialize)]
struct Share {
    rps: f64,
    share_of_muster_rps_pct: f64,
    cpu_us_per_req: Option<f64>,
    share_of_muster_cpu_pct: Option<f64>,
}

fn cpu_per_req(row: &Row) -> Option<f64> {
    row.extra
        .get("server_cpu_us_per_req")
        .and_then(serde_json::Value::as_f64)
        .filter(|&c| c > 0.0)
}

/// Whether muster is the faster of the two in req/s: then the load
/// generator is what limits both.
fn load_generator_bound(muster_rps: f64, ceiling_rps: f64) -> bool {
    muster_rps > ceiling_rps
}

/// One comparison per throughput scenario muster ran in.
fn comparisons(rows: &[Row]) -> Vec<Comparison> {
    let find = |scenario: &str, target: &str| {
        rows.iter()
            .find(|o| o.scenario == scenario && o.target == target)
    };
    rows.iter()
        .filter(|r| r.target == "muster" && !is_latency_only(&r.scenario))
        .map(|m| {
            let ceiling = find(&m.scenario, "ceiling");
            let batch = m.scenario == "heartbeat-batch";
            let etcd = find(if batch { "heartbeat" } else { &m.scenario }, "etcd");
            let ceiling_rps = ceiling.map(|c| c.summary.rps);
            let bound = ceiling_rps.is_some_and(|c| load_generator_bound(m.summary.rps, c));
            let muster_cpu = cpu_per_req(m);
            let ceiling_cpu = ceiling.and_then(cpu_per_req);
            let etcd_cpu = etcd.and_then(cpu_per_req);
            let per_unit = |cpu: f64| {
                if batch {
                    cpu / scenarios::RENEW_BATCH as f64
                } else {
                    cpu
                }
            };
            let round2 = |x: f64| (x * 100.0).round() / 100.0;
            Comparison {
                scenario: m.scenario.clone(),
                muster_rps: m.summary.rps.round(),
                ceiling_rps: ceiling_rps.map(f64::round),
                load_generator_bound: bound,
                share_of_ceiling_rps_pct: ceiling_rps
                    .filter(|_| !bound)
                    .filter(|&c| c > 0.0)
                    .map(|c| round2(100.0 * m.summary.rps / c)),
                share_of_ceiling_cpu_pct: ceiling_cpu
                    .zip(muster_cpu)
                    .map(|(c, m)| round2(100.0 * c / m)),
                muster_cpu_us_per_req: muster_cpu,
                ceiling_cpu_us_per_req: ceiling_cpu,
                etcd_cpu_us_per_req: etcd_cpu,
                etcd_cpu_over_muster: etcd_cpu
                    .zip(muster_cpu)
                    .map(|(e, m)| round2(e / per_unit(m))),
                acl: find(&m.scenario, "muster-acl").map(|v| share(m, v)),
                tls: find(&m.scenario, "muster-tls").map(|v| share(m, v)),
            }
        })
        .collect()
}

/// A variant's figures as shares of plain muster's.
fn share(muster: &Row, variant: &Row) -> Share {
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let cpu = cpu_per_req(variant);
    Share {
        rps: variant.summary.rps.round(),
        share_of_muster_rps_pct: if muster.summary.rps > 0.0 {
            round2(100.0 * variant.summary.rps / muster.summary.rps)
        } else {
            0.0
        },
        cpu_us_per_req: cpu,
        share_of_muster_cpu_pct: cpu_per_req(muster)
            .zip(cpu)
            .map(|(m, v)| round2(100.0 * m / v)),
    }
}

/// The ACL and TLS variants as shares of plain muster, one line each.
fn print_shares(comparisons: &[Comparison]) {
    for c in comparisons {
        for (what, s) in [("with ACLs", &c.acl), ("with TLS", &c.tls)] {
            if let Some(s) = s {
                println!(
                    "{:<18} {what}: {:.0}% of plain muster's req/s; {} by server CPU per request",
                    c.scenario,
                    s.share_of_muster_rps_pct,
                    s.share_of_muster_cpu_pct
                        .map_or("-".to_string(), |p| format!("{p:.0}%"))
                );
            }
        }
    }
}

fn print_table(rows: &[Row], comparisons: &[Comparison]) {
    println!(
        "{:<18} {:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "scenario",
        "target",
        "req/s",
        "p50",
        "p99",
        "p99.9",
        "RSS MiB",
        "srv µs/req",
        "% ceiling",
        "cpu % ceil",
        "x etcd",
        "etcd cpu x"
    );
    let mut any_bound = false;
    for r in rows {
        let find = |t: &str| {
            rows.iter()
                .find(|o| o.scenario == r.scenario && o.target == t)
                .map(|o| o.summary.rps)
        };
        let latency_only = is_latency_only(&r.scenario);
        let cmp = (r.target == "muster")
            .then(|| comparisons.iter().find(|c| c.scenario == r.scenario))
            .flatten();
        let of_ceiling = cmp.and_then(|c| {
            if c.load_generator_bound {
                any_bound = true;
                Some("LG-bound*".to_string())
            } else {
                c.share_of_ceiling_rps_pct.map(|p| format!("{p:.0}%"))
            }
        });
        let cpu_of_ceiling = cmp
            .and_then(|c| c.share_of_ceiling_cpu_pct)
            .map(|p| format!("{p:.0}%"));
        let etcd_cpu = cmp.and_then(|c| c.etcd_cpu_over_muster).map(|x| {
            if r.scenario == "heartbeat-batch" {
                format!("{x:.1}x ren")
            } else {
                format!("{x:.2}x")
            }
        });
        let vs_etcd = if r.target == "muster" && latency_only {
            // Lower is better here: how many times etcd's p99 muster's is.
            let etcd_p99 = rows
                .iter()
                .find(|o| o.scenario == r.scenario && o.target == "etcd")
                .map(|o| o.summary.p99_us);
            etcd_p99.map(|e| format!("{:.2}x p99", e / r.summary.p99_us))
        } else if r.target == "muster" && r.scenario == "heartbeat-batch" {
            // Leases renewed per second against etcd's keep-alives.
            rows.iter()
                .find(|o| o.scenario == "heartbeat" && o.target == "etcd")
                .map(|o| o.summary.rps)
                .map(|e| {
                    let renewals = r.summary.rps * scenarios::RENEW_BATCH as f64;
                    format!("{:.1}x ren", renewals / e)
                })
        } else if r.target == "muster" {
            find("etcd").map(|e| format!("{:.2}x", r.summary.rps / e))
        } else {
            None
        };
        println!(
            "{:<18} {:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            r.scenario,
            r.target,
            if latency_only {
                "-".to_string()
            } else {
                format!("{:.0}", r.summary.rps)
            },
            fmt_us(r.summary.p50_us),
            fmt_us(r.summary.p99_us),
            fmt_us(r.summary.p999_us),
            r.rss_bytes
                .map(|b| format!("{:.1}", b as f64 / (1024.0 * 1024.0)))
                .unwrap_or_else(|| "-".into()),
            cpu_per_req(r)
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            of_ceiling.unwrap_or_else(|| "-".into()),
            cpu_of_ceiling.unwrap_or_else(|| "-".into()),
            vs_etcd.unwrap_or_else(|| "-".into()),
            etcd_cpu.unwrap_or_else(|| "-".into()),
        );
        if !r.extra.is_empty() {
            let extra: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{:<18} {:<8} {}", "", "", extra.join(" "));
        }
    }
    if any_bound {
        println!(
            "* LG-bound: muster answered more req/s than the ceiling, so the load generator's \
             core is the limit and a req/s share of the ceiling would say nothing; compare the \
             server CPU per request (srv µs/req, cpu % ceil, etcd cpu x) instead."
        );
    }
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Summary;

    fn row(scenario: &str, target: &str, rps: f64, cpu: f64) -> Row {
        let mut extra = BTreeMap::new();
        extra.insert("server_cpu_us_per_req".to_string(), cpu.into());
        Row {
            scenario: scenario.into(),
            target: target.into(),
            run: 0,
            summary: Summary {
                rps,
                requests: 1000,
                ..Summary::default()
            },
            rss_bytes: None,
            extra,
        }
    }

    #[test]
    fn muster_faster_than_the_ceiling_is_load_generator_bound_without_a_ratio() {
        let rows = [
            row("lookup-1", "muster", 169_542.0, 5.80),
            row("lookup-1", "ceiling", 165_454.0, 5.17),
            row("lookup-1", "etcd", 15_318.0, 40.0),
            row("register", "muster", 28_980.0, 30.6),
            row("register", "ceiling", 142_677.0, 6.0),
        ];
        let c = comparisons(&rows);
        assert_eq!(c.len(), 2);
        let lookup = &c[0];
        assert!(lookup.load_generator_bound);
        assert_eq!(lookup.share_of_ceiling_rps_pct, None);
        assert_eq!(lookup.share_of_ceiling_cpu_pct, Some(89.14));
        assert_eq!(lookup.etcd_cpu_us_per_req, Some(40.0));
        assert_eq!(lookup.etcd_cpu_over_muster, Some(6.9));
        let register = &c[1];
        assert!(!register.load_generator_bound);
        assert_eq!(register.share_of_ceiling_rps_pct, Some(20.31));
        assert_eq!(register.etcd_cpu_over_muster, None);
    }

    #[test]
    fn durable_scenarios_refuse_tmpfs_unless_smoke() {
        let fs = |t: &str| host::Filesystem {
            path: "/data/muster-bench-1".into(),
            fs_type: t.into(),
            source: t.into(),
            mount_point: "/data".into(),
        };
        let on = |t: &str| BTreeMap::from([("muster".to_string(), fs(t))]);
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for durable in ["register", "churn", "scale", "scale-unique", "watch-fanout"] {
            let err = refuse_memory_backed_durability(&names(&[durable]), &on("tmpfs"), false)
                .expect_err("a durable scenario on tmpfs must be refused");
            let msg = format!("{err:#}");
            assert!(msg.contains(durable) && msg.contains("tmpfs"), "{msg}");
            assert!(msg.contains("--data-root"), "{msg}");
            refuse_memory_backed_durability(&names(&[durable]), &on("tmpfs"), true).unwrap();
            refuse_memory_backed_durability(&names(&[durable]), &on("ext4"), false).unwrap();
        }
        // Nothing durable is measured in lookups and heartbeats.
        refuse_memory_backed_durability(&names(&["lookup-1", "heartbeat"]), &on("tmpfs"), false)
            .unwrap();
    }

    fn cluster_row(scenario: &str, target: &str, run: usize, rps: f64) -> Row {
        let mut r = row(scenario, target, rps, 1.0);
        r.run = run;
        r.extra.insert("cluster".into(), 3.into());
        r
    }

    #[test]
    fn cluster_figures_divide_muster_by_etcd_and_follower_by_leader_per_round() {
        let all = [
            cluster_row("register", "muster", 0, 9_000.0),
            cluster_row("register", "etcd", 0, 3_000.0),
            cluster_row("register", "muster", 1, 8_000.0),
            cluster_row("register", "etcd", 1, 4_000.0),
            cluster_row("heartbeat", "muster@leader", 0, 50_000.0),
            cluster_row("heartbeat", "muster@follower", 0, 40_000.0),
            // Single-node rows of the same names are not cluster figures.
            row("lookup-1", "muster", 60_000.0, 1.0),
        ];
        let medians = [
            all[0].clone(),
            all[3].clone(),
            all[4].clone(),
            all[5].clone(),
        ];
        let f = cluster_figures(&medians, &all);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].scenario, "register");
        assert!(f[0].figure.contains("spread"), "{}", f[0].figure);
        assert_eq!(f[0].median, 2.25);
        assert_eq!(f[0].rounds, [3.0, 2.0]);
        assert_eq!(f[1].scenario, "heartbeat");
        assert_eq!(f[1].median, 80.0);
        assert_eq!(f[1].rounds, [80.0]);
    }

    #[test]
    fn batched_renewals_set_etcd_cpu_against_muster_cpu_per_renewal() {
        let rows = [
            row("heartbeat", "etcd", 42_000.0, 20.0),
            row("heartbeat-batch", "muster", 33_000.0, 50.0),
        ];
        let c = comparisons(&rows);
        assert_eq!(c.len(), 1);
        // 50 µs per request of 100 renewals: 0.5 µs per renewal.
        assert_eq!(c[0].etcd_cpu_over_muster, Some(40.0));
        assert!(!c[0].load_generator_bound);
    }
}
