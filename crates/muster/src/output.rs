//! Human-readable tables and lines for the client commands.

use muster_types::{Instance, ServicesResponse, WatchEvent};

/// Prints any value as one line of JSON.
pub fn json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string(v).expect("wire types serialise")
    );
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// The services table.
pub fn services(s: &ServicesResponse) {
    if s.services.is_empty() {
        println!("no services in namespace {:?}", s.namespace);
        return;
    }
    table(
        &["SERVICE", "INSTANCES", "PASSING", "WARNING", "CRITICAL"],
        s.services
            .iter()
            .map(|x| {
                vec![
                    x.name.clone(),
                    x.instances.to_string(),
                    x.passing.to_string(),
                    x.warning.to_string(),
                    x.critical.to_string(),
                ]
            })
            .collect(),
    );
}

fn tags(i: &Instance) -> String {
    i.tags
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The instances table.
pub fn instances(list: &[Instance]) {
    if list.is_empty() {
        println!("no matching instances");
        return;
    }
    table(
        &[
            "ID", "ADDRESS", "HEALTH", "CHECKS", "VERSION", "ZONE", "WEIGHT", "TAGS", "LEASE",
        ],
        list.iter()
            .map(|i| {
                vec![
                    i.id.to_string(),
                    format!("{}:{}", i.address, i.port),
                    i.health.as_str().to_string(),
                    checks_summary(i),
                    i.version.as_deref().unwrap_or("-").to_string(),
                    i.zone.as_deref().unwrap_or("-").to_string(),
                    i.weight.to_string(),
                    tags(i),
                    i.lease.as_deref().unwrap_or("-").to_string(),
                ]
            })
            .collect(),
    );
}

/// One watch event as a line.
pub fn event(e: &WatchEvent) {
    match e {
        WatchEvent::Snapshot { index, instances } => {
            println!("[{index}] snapshot: {} instance(s)", instances.len());
            for i in instances {
                println!(
                    "[{index}]   {} {}:{} {} [{}]",
                    i.id,
                    i.address,
                    i.port,
                    i.health.as_str(),
                    tags(i)
                );
            }
        }
        WatchEvent::Upsert { index, instance: i } => {
            println!(
                "[{index}] upsert {} {}:{} {} [{}]",
                i.id,
                i.address,
                i.port,
                i.health.as_str(),
                tags(i)
            )
        }
        WatchEvent::Delete { index, id } => println!("[{index}] delete {id}"),
        WatchEvent::Current { index } => println!("[{index}] up to date"),
    }
}

fn checks_summary(i: &Instance) -> String {
    if i.maintenance.is_some() {
        return "maintenance".into();
    }
    if i.checks.is_empty() {
        return "-".into();
    }
    let passing = i
        .checks
        .iter()
        .filter(|c| c.status == muster_types::Health::Passing)
        .count();
    format!("{passing}/{} passing", i.checks.len())
}

/// One instance in detail, with each check's status, output and last run.
pub fn instance_detail(i: &Instance) {
    println!(
        "{}/{} at {}:{}  health {}",
        i.service,
        i.id,
        i.address,
        i.port,
        i.health.as_str()
    );
    if let Some(r) = &i.maintenance {
        println!("maintenance: {r}");
    }
    for c in &i.checks {
        let last = c
            .last_run_ms
            .map_or("never".to_string(), |ms| format!("{ms} (unix ms)"));
        println!(
            "  check {} [{}] {}  last run {last}",
            c.id,
            c.kind.name(),
            c.status.as_str()
        );
        let out = c.last_output.as_deref().unwrap_or(&c.output);
        for line in out.lines().take(5) {
            println!("    {line}");
        }
    }
}

/// `muster cluster members`: one line per member.
pub fn members(c: &muster_types::ClusterInfo) {
    if c.nodes.is_empty() {
        println!(
            "node {} is a cluster of one (started without --peers); leader {}",
            c.node_id,
            c.leader.map_or("unknown".to_string(), |l| l.to_string())
        );
        return;
    }
    let dash = || "-".to_string();
    let rows: Vec<[String; 7]> = c
        .nodes
        .iter()
        .map(|n| {
            [
                n.id.to_string(),
                format!("{:?}", n.role).to_lowercase(),
                n.cluster_addr.clone(),
                n.http_addr.clone().unwrap_or_else(dash),
                n.match_index.map_or_else(dash, |m| m.to_string()),
                n.last_contact_ms.map_or_else(dash, |ms| format!("{ms}ms")),
                match n.reachable {
                    Some(true) => "yes".to_string(),
                    Some(false) => "NO".to_string(),
                    None => dash(),
                },
            ]
        })
        .collect();
    let head = [
        "ID",
        "ROLE",
        "CLUSTER ADDR",
        "HTTP ADDR",
        "MATCH",
        "LAST CONTACT",
        "REACHABLE",
    ];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..7).map(width).collect();
    let line = |cells: [&str; 7]| {
        let out: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(head);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]);
    }
    println!(
        "(as node {} sees it; commit index {})",
        c.node_id, c.commit_index
    );
}

/// A policy, one rule per line.
pub fn policy(p: &muster_types::acl::Policy) {
    println!("policy {}", p.name);
    if !p.description.is_empty() {
        println!("  {}", p.description);
    }
    for r in &p.services {
        println!(
            "  {:<5}  {}/{}",
            r.access.to_string(),
            r.namespace,
            r.service
        );
    }
    if p.operator {
        println!("  operator");
    }
    if p.acl {
        println!("  acl");
    }
}
