//! What the figures were measured on: the processor, and the filesystem
//! under the servers' data directories (an fsync on tmpfs costs nothing, so
//! durable figures taken there mean nothing).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

/// The processor the figures were measured on, from `/proc/cpuinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// The processor model (`model name`; other architectures' equivalents
    /// where there is none).
    pub cpu_model: String,
    /// Every core of the machine, not only those this process may run on.
    pub cores: usize,
    /// The kernel runs under a hypervisor (the `hypervisor` cpu flag).
    pub virtualised: bool,
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
        Machine::from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    fn from_cpuinfo(cpuinfo: &str) -> Machine {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == name && !value.trim().is_empty()).then(|| value.trim().to_string())
            })
        };
        // x86 has `model name`; arm64 kernels give only `CPU implementer` and
        // `CPU part` per core, some give `Hardware`, POWER `cpu`.
        let cpu_model = field("model name")
            .or_else(|| field("Hardware"))
            .or_else(|| field("cpu model"))
            .or_else(|| field("cpu"))
            .or_else(|| {
                Some(format!(
                    "CPU implementer {}, part {}",
                    field("CPU implementer")?,
                    field("CPU part")?
                ))
            })
            .unwrap_or_else(|| "unknown cpu".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
            .count()
            .max(1);
        let virtualised =
            field("flags").is_some_and(|f| f.split_whitespace().any(|f| f == "hypervisor"));
        Machine {
            cpu_model,
            cores,
            virtualised,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {}", self.cores, self.cpu_model)?;
        if self.virtualised {
            write!(f, " (virtualised)")?;
        }
        Ok(())
    }
}

/// The filesystem a directory is on, from `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    /// The directory asked about (canonical).
    pub path: PathBuf,
    /// The filesystem type: `ext4`, `xfs`, `tmpfs`, `overlay`, ...
    pub fs_type: String,
    /// What is mounted there (a device, or a name such as `tmpfs`).
    pub source: String,
    /// Where that filesystem is mounted.
    pub mount_point: PathBuf,
}

impl Filesystem {
    /// Whether the filesystem lives in memory, where fsync is free: durable
    /// figures measured on it would flatter every target.
    pub fn is_memory_backed(&self) -> bool {
        matches!(self.fs_type.as_str(), "tmpfs" | "ramfs")
    }
}

impl std::fmt::Display for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is on {} ({} mounted on {})",
            self.path.display(),
            self.fs_type,
            self.source,
            self.mount_point.display()
        )
    }
}

/// The filesystem `dir` is on.
pub fn filesystem_of(dir: &Path) -> Result<Filesystem> {
    let path = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mount_of(&mounts, &path)
        .ok_or_else(|| anyhow!("no mount in /proc/self/mounts holds {}", path.display()))
}

/// The mount of `/proc/self/mounts` (text `mounts`) holding `path`: the one
/// with the longest mount point that is a prefix of `path`, the later line
/// where two have the same mount point (a later mount hides an earlier one).
fn mount_of(mounts: &str, path: &Path) -> Option<Filesystem> {
    let mut best: Option<(usize, Filesystem)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(mount_point), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape(mount_point));
        if !path.starts_with(&mount_point) {
            continue;
        }
        let depth = mount_point.components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((
                depth,
                Filesystem {
                    path: path.to_path_buf(),
                    fs_type: fs_type.to_string(),
                    source: unescape(source),
                    mount_point,
                },
            ));
        }
    }
    best.map(|(_, fs)| fs)
}

/// Undoes the octal escapes of `/proc/self/mounts` (`\040` for a space,
/// `\011` tab, `\012` newline, `\134` backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes dirty pages out and drops the kernel's page cache, so the next
/// start reads its data (and its binary) from the disk. Needs root and a
/// kernel that lets this container do it; the error says why not.
pub fn drop_page_cache() -> Result<(), String> {
    let synced = std::process::Command::new("sync")
        .status()
        .map_err(|e| format!("cannot run sync: {e}"))?;
    if !synced.success() {
        return Err(format!("sync failed: {synced}"));
    }
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
proc /proc proc rw,relatime 0 0
/dev/vda / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
/dev/vdb /tmp/disk\\040space xfs rw 0 0
tmpfs /dev/shm tmpfs rw 0 0
/dev/vdc /srv ext4 rw 0 0
/dev/vdd /srv btrfs rw 0 0
";

    fn fs_of(path: &str) -> (String, String, String) {
        let fs = mount_of(MOUNTS, Path::new(path)).expect("a mount");
        (
            fs.fs_type.clone(),
            fs.source.clone(),
            fs.mount_point.display().to_string(),
        )
    }

    #[test]
    fn the_longest_mount_point_holding_the_path_wins() {
        assert_eq!(
            fs_of("/work/data"),
            ("ext4".into(), "/dev/vda".into(), "/".into())
        );
        assert_eq!(
            fs_of("/tmp/muster-bench-1"),
            ("tmpfs".into(), "tmpfs".into(), "/tmp".into())
        );
        // Whole components only: /tmpx is not under /tmp.
        assert_eq!(fs_of("/tmpx/a").0, "ext4");
        assert_eq!(
            fs_of("/tmp/disk space/a"),
            ("xfs".into(), "/dev/vdb".into(), "/tmp/disk space".into())
        );
        // Mounted over: the later mount is the one in use.
        assert_eq!(fs_of("/srv/x").0, "btrfs");
    }

    #[test]
    fn tmpfs_and_ramfs_are_memory_backed() {
        let fs = |t: &str| Filesystem {
            path: "/x".into(),
            fs_type: t.into(),
            source: "s".into(),
            mount_point: "/".into(),
        };
        assert!(fs("tmpfs").is_memory_backed());
        assert!(fs("ramfs").is_memory_backed());
        assert!(!fs("ext4").is_memory_backed());
        assert!(!fs("overlay").is_memory_backed());
    }

    #[test]
    fn mount_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn the_processor_model_is_read_from_cpuinfo() {
        let x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                   flags\t\t: fpu sse2 hypervisor lm\n\n\
                   processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                   flags\t\t: fpu sse2 hypervisor lm\n";
        let m = Machine::from_cpuinfo(x86);
        assert_eq!(m.cpu_model, "Intel(R) Xeon(R) Processor");
        assert_eq!(m.cores, 2);
        assert!(m.virtualised);
        assert_eq!(
            m.to_string(),
            "2 x Intel(R) Xeon(R) Processor (virtualised)"
        );
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n\
                   CPU implementer\t: 0x41\nCPU part\t: 0xd0c\n";
        let m = Machine::from_cpuinfo(arm);
        assert_eq!(m.cpu_model, "CPU implementer 0x41, part 0xd0c");
        assert_eq!(m.cores, 1);
        assert!(!m.virtualised);
        assert_eq!(Machine::from_cpuinfo("").cpu_model, "unknown cpu");
    }

    #[test]
    fn the_running_systems_temp_dir_has_a_filesystem() {
        let fs = filesystem_of(&std::env::temp_dir()).unwrap();
        assert!(!fs.fs_type.is_empty());
    }
}
