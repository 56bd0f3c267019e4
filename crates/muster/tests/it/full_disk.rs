//! A real full disk: the data directory on a small tmpfs, filled to ENOSPC
//! while the agent runs, then freed. Writes are refused with a typed 507,
//! reads go on, `/healthz` says so, and once space is back the agent stops
//! with status 75 for its supervisor; restarted on the same data, every
//! acknowledged write is there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{CATCH_UP, Cluster, Writers, wait_holds};
use crate::harness::{Agent, http};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason printed) where this machine cannot mount.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    // Bounded: a tmpfs of a few MiB fills long before 1 GiB.
    for _ in 0..16_384 {
        if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
            return;
        }
    }
    panic!("the file system did not fill up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_restarts_once_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&mnt, "16m") else {
        return;
    };
    let data = mnt.join("data");
    let mut agent = Agent::spawn(&data);
    let client = http();
    let base = agent.base.clone();
    let put = |id: String| {
        client
            .put(format!("{base}/v1/services/pay/instances/{id}"))
            .json(&json!({"address": "10.0.0.1", "port": 80, "ttl": "30s"}))
            .send()
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        let r = put(format!("p{i}")).await.unwrap();
        assert_eq!(r.status(), 200);
        acked.push(format!("p{i}"));
    }

    fill(&mnt.join("filler"));
    // Writes go on until the store finds the disk full (redb may have room
    // in pages it already has), then each gets the typed 507.
    let mut refused = None;
    for i in 20..20_000 {
        let r = put(format!("p{i}")).await.unwrap();
        match r.status().as_u16() {
            200 => acked.push(format!("p{i}")),
            _ => {
                refused = Some((r.status().as_u16(), r.json::<Value>().await.unwrap()));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a write was refused on a full disk");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "storage_full", "{body}");
    let r = put("after".into()).await.unwrap();
    assert_eq!(r.status(), 507);

    // Reads go on; health tells the truth; a heartbeat says why it fails.
    let v = agent.get_json("/v1/services/pay/instances").await;
    assert!(v["instances"].as_array().unwrap().len() >= acked.len());
    let h = client.get(agent.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 507);
    let hb = client
        .put(agent.url("/v1/services/pay/instances/p0/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(hb.status(), 507);

    // Space is freed: the agent stops by itself, for its supervisor.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let status = agent
        .exit_status(Duration::from_secs(30))
        .await
        .expect("the agent did not stop once space was freed");
    assert_eq!(status.code(), Some(75), "{status:?}");

    // Restarted on the same data: every acknowledged write, and writable.
    drop(agent);
    let agent = Agent::spawn(&data);
    let base = agent.base.clone();
    let put = |id: String| {
        client
            .put(format!("{base}/v1/services/pay/instances/{id}"))
            .json(&json!({"address": "10.0.0.1", "port": 80, "ttl": "30s"}))
            .send()
    };
    let v = agent.get_json("/v1/services/pay/instances").await;
    let have: Vec<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert!(have.contains(&id.as_str()), "acknowledged {id} is gone");
    }
    assert_eq!(put("again".into()).await.unwrap().status(), 200);
    assert_eq!(
        client
            .get(agent.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// The leader's disk fills up under writes that clients send through the
/// two followers. Its raft stops; the followers elect a leader without it
/// and the writes go on. A write forwarded to it meanwhile is sent again
/// to the new leader, or answered 503 `outcome_unknown` if it was under
/// way when the store failed (it may be on the followers): never the old
/// leader's own failure as a 500, as it was. Once space is freed, it stops
/// with status 75 and, restarted, catches up with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_leader_hands_leadership_over_and_writes_go_on() {
    let mut c = Cluster::new(3);
    let Some(_tmpfs) = Tmpfs::mount(c.dirs[0].path(), "24m") else {
        return;
    };
    for id in [1, 2, 3] {
        c.start(id);
    }
    let leader = c.leader(None).await;
    if leader != 1 {
        let r = http()
            .post(c.agent(leader).url("/v1/cluster/transfer-leader"))
            .json(&json!({"to": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    assert_eq!(c.leader(None).await, 1, "leadership did not move to node 1");

    let writers = Writers::start(
        vec![c.agent(2).base.clone(), c.agent(3).base.clone()],
        "disk",
    );
    writers.wait_for(200, "writes through the followers").await;

    // The leader's disk fills; its own writes find it full.
    fill(&c.dirs[0].path().join("filler"));
    let client = http();
    let mut full = false;
    for i in 0..20_000 {
        let r = client
            .put(
                c.agent(1)
                    .url(&format!("/v1/services/disk/instances/own-{i}")),
            )
            .json(&json!({"address": "10.0.0.1", "port": 80}))
            .send()
            .await
            .unwrap();
        if r.status() == 507 {
            full = true;
            break;
        }
    }
    assert!(full, "the leader never found its disk full");
    // Writes acknowledged from now on were committed by another leader.
    writers
        .wait_for(
            writers.count() + 300,
            "writes after the leader's disk filled",
        )
        .await;
    let refused = writers.refused();
    let acked = writers.stop().await;
    println!("refused: {refused:?}");
    for ((status, code), n) in &refused {
        assert!(
            *status == 503 && ["outcome_unknown", "not_leader"].contains(&code.as_str()),
            "{n} writes through a follower were answered {status} {code}"
        );
    }

    // Space is freed: the old leader stops for its supervisor, and once
    // started again holds every acknowledged write.
    std::fs::remove_file(c.dirs[0].path().join("filler")).unwrap();
    let status = c
        .exited(1, Duration::from_secs(30))
        .await
        .expect("node 1 did not stop once space was freed");
    assert_eq!(status.code(), Some(75), "{status:?}");
    c.start(1);
    wait_holds(c.agent(1), "disk", &acked, CATCH_UP, "node 1, restarted").await;
}
