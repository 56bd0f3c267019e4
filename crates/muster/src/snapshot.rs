//! `muster snapshot save | inspect | restore`: backup files
//! ([`muster_types::backup`]) streamed from and to the registry's
//! `/v1/snapshot` routes, never held whole in memory, and checked here as
//! well as on the server.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::TryStreamExt;
use muster_types::backup::{self, BackupHeader, Verifier};
use muster_types::{ErrorBody, RestoreResult};
use tokio::io::AsyncWriteExt;

use crate::cli::{Global, SnapshotCommand};
use crate::output;

/// Runs one `muster snapshot` command.
pub async fn run(g: &Global, cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save { file, progress } => save(g, &file, progress).await,
        SnapshotCommand::Inspect { file } => inspect(g, &file).await,
        SnapshotCommand::Restore { file, progress } => restore(g, &file, progress).await,
    }
}

fn base(g: &Global) -> anyhow::Result<String> {
    let base = g.addr.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--addr {base:?} must start with http:// or https://");
    }
    Ok(base)
}

/// A client with the CLI's TLS options (`--cacert`, `--client-cert`/`--client-key`) and
/// token (`--token`).
fn http(g: &Global) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3));
    if let Some(ca) = &g.cacert {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        b = b.tls_certs_only(certs);
    }
    if let (Some(cert), Some(key)) = (&g.client_cert, &g.client_key) {
        let mut pem =
            std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?);
        b = b.identity(
            reqwest::Identity::from_pem(&pem)
                .context("the client certificate and key are not a valid PEM pair")?,
        );
    }
    if let Some(token) = &g.token {
        let mut v = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
            .context("--token (MUSTER_TOKEN) is not a valid header value")?;
        v.set_sensitive(true);
        b = b.default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            v,
        )]));
    }
    b.build().context("cannot build the HTTP client")
}

/// The registry's error answer as an error.
async fn refused(base: &str, response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => anyhow!("{} ({}, {status})", body.error.message, body.error.code),
        Err(_) => anyhow!("{base} answered {status}"),
    }
}

fn unreachable(base: &str, e: reqwest::Error) -> anyhow::Error {
    anyhow!(
        "request to {base} failed: {e}. Is `muster agent` running there? (set --addr or MUSTER_ADDR)"
    )
}

/// Progress on stderr: only on a terminal or when asked, at most a few
/// times a second, on one line, which ends with the final figures.
struct Progress {
    on: bool,
    last: Option<Instant>,
    what: String,
    /// The figures of the last update, shown or not.
    latest: Option<(u64, Option<u64>)>,
    /// Where the text goes: stderr, or a test's buffer.
    sink: Box<dyn FnMut(&str) + Send>,
}

impl Progress {
    fn new(asked: bool, what: String) -> Self {
        Progress {
            on: asked || std::io::stderr().is_terminal(),
            last: None,
            what,
            latest: None,
            sink: Box::new(|s| eprint!("{s}")),
        }
    }

    fn update(&mut self, bytes: u64, total: Option<u64>) {
        self.latest = Some((bytes, total));
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.show(bytes, total);
    }

    fn show(&mut self, bytes: u64, total: Option<u64>) {
        let line = match total {
            Some(t) if t > 0 => format!(
                "\r{}: {} of {} ({}%)   ",
                self.what,
                mib(bytes),
                mib(t),
                bytes * 100 / t
            ),
            _ => format!("\r{}: {}   ", self.what, mib(bytes)),
        };
        (self.sink)(&line);
    }

    /// Ends the line with where the work ended (a fast one shows only this).
    fn done(&mut self) {
        if let (true, Some((bytes, total))) = (self.on, self.latest) {
            self.show(bytes, total);
            (self.sink)("\n");
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn describe(h: &BackupHeader) -> String {
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(h.created_at_ms),
    );
    format!(
        "index {}, term {}, saved {when} by node {}: {} services, {} instances, {} leases",
        h.index, h.term, h.node_id, h.services, h.instances, h.leases
    )
}

/// A temporary file beside `file`, renamed over it once whole.
fn temporary(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    file.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

async fn save(g: &Global, file: &Path, progress: bool) -> anyhow::Result<()> {
    let base = base(g)?;
    let response = http(g)?
        .get(format!("{base}/v1/snapshot"))
        .send()
        .await
        .map_err(|e| unreachable(&base, e))?;
    if !response.status().is_success() {
        return Err(refused(&base, response).await);
    }
    let instances = response
        .headers()
        .get("x-muster-backup-instances")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let tmp = temporary(file);
    let result = async {
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut verifier = Verifier::new();
        let mut progress = Progress::new(progress, format!("saving {instances} instances"));
        let mut body = response.bytes_stream();
        while let Some(piece) = body
            .try_next()
            .await
            .with_context(|| format!("the backup from {base} broke off"))?
        {
            verifier.update(&piece);
            out.write_all(&piece)
                .await
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            progress.update(verifier.len(), None);
        }
        progress.done();
        verifier
            .finish()
            .map_err(|e| anyhow!("the backup from {base} is not whole: {e}"))?;
        out.sync_all()
            .await
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(out);
        let mut start = std::fs::File::open(&tmp)?;
        let (header, _) = backup::read_header(&mut start)?;
        tokio::fs::rename(&tmp, file)
            .await
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()))?;
        Ok::<_, anyhow::Error>((header, verifier.len()))
    }
    .await;
    match result {
        Ok((header, bytes)) => {
            if g.json {
                output::json(&header);
            } else {
                println!(
                    "saved {} ({}): {}",
                    file.display(),
                    mib(bytes),
                    describe(&header)
                );
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads `file` whole, checking its checksum, on a blocking thread.
async fn check(file: &Path, progress: Option<Progress>) -> anyhow::Result<(BackupHeader, u64)> {
    let path = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let total = f.metadata()?.len();
        let mut progress = progress;
        let header = backup::verify(&mut std::io::BufReader::new(f), |n| {
            if let Some(p) = progress.as_mut() {
                p.update(n, Some(total));
            }
        })
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if let Some(mut p) = progress {
            p.done();
        }
        Ok((header, total))
    })
    .await?
}

async fn inspect(g: &Global, file: &Path) -> anyhow::Result<()> {
    let (header, bytes) = check(file, None).await?;
    if g.json {
        output::json(&header);
    } else {
        println!("{} ({}, checksum ok)", file.display(), mib(bytes));
        println!("  {}", describe(&header));
    }
    Ok(())
}

async fn restore(g: &Global, file: &Path, progress: bool) -> anyhow::Result<()> {
    let base = base(g)?;
    // Checked here first: a bad file is refused before a byte is sent.
    let (header, total) = check(file, Some(Progress::new(progress, "checking".into()))).await?;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    // Shared with the body stream, which reports what it sent.
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(
        progress,
        format!("restoring {} instances", header.instances),
    )));
    let mut sent = 0u64;
    let sending = std::sync::Arc::clone(&shown);
    let body =
        tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect_ok(move |piece| {
            sent += piece.len() as u64;
            sending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .update(sent, Some(total));
        });
    let response = http(g)?
        .post(format!("{base}/v1/snapshot/restore"))
        .header("content-type", "application/octet-stream")
        .header("content-length", total)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    shown
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .done();
    let response = response.map_err(|e| unreachable(&base, e))?;
    if !response.status().is_success() {
        return Err(refused(&base, response).await);
    }
    let result: RestoreResult = response
        .json()
        .await
        .with_context(|| format!("{base} answered the restore with something unreadable"))?;
    if g.json {
        output::json(&result);
    } else {
        println!(
            "restored {} at index {}: {} instances, {} leases (backup: {})",
            file.display(),
            result.index,
            result.instances,
            result.leases,
            describe(&result.backup)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::Progress;

    #[test]
    fn progress_ends_its_line_with_the_final_figures() {
        let text = Arc::new(Mutex::new(String::new()));
        let mut p = Progress::new(true, "checking".into());
        let t = Arc::clone(&text);
        p.sink = Box::new(move |s| t.lock().unwrap().push_str(s));
        // Three updates within the throttle: only the first is shown as
        // it comes; the line still ends at 100 %.
        p.update(1 << 20, Some(4 << 20));
        p.update(2 << 20, Some(4 << 20));
        p.update(4 << 20, Some(4 << 20));
        p.done();
        let text = text.lock().unwrap().clone();
        let last = text.trim_end_matches('\n').rsplit('\r').next().unwrap();
        assert_eq!(
            last.trim_end(),
            "checking: 4.0 MiB of 4.0 MiB (100%)",
            "{text:?}"
        );
        assert!(text.ends_with('\n'));
        assert!(!text.contains("(50%)"), "throttled: {text:?}");

        // Not asked for and not on a terminal (as here): nothing at all.
        let quiet = Arc::new(Mutex::new(String::new()));
        let mut p = Progress::new(false, "saving".into());
        p.on = false;
        let q = Arc::clone(&quiet);
        p.sink = Box::new(move |s| q.lock().unwrap().push_str(s));
        p.update(1, None);
        p.done();
        assert!(quiet.lock().unwrap().is_empty());
    }
}
