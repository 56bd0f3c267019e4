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
    i.tags.iter().cloned().collect::<Vec<_>>().join(",")
}

/// The instances table.
pub fn instances(list: &[Instance]) {
    if list.is_empty() {
        println!("no matching instances");
        return;
    }
    table(
        &[
            "ID", "ADDRESS", "HEALTH", "VERSION", "ZONE", "WEIGHT", "TAGS", "LEASE",
        ],
        list.iter()
            .map(|i| {
                vec![
                    i.id.clone(),
                    format!("{}:{}", i.address, i.port),
                    i.health.as_str().to_string(),
                    i.version.clone().unwrap_or_else(|| "-".into()),
                    i.zone.clone().unwrap_or_else(|| "-".into()),
                    i.weight.to_string(),
                    tags(i),
                    i.lease.clone().unwrap_or_else(|| "-".into()),
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
    }
}
