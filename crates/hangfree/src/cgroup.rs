//! Opt-in: each worker in a cgroup (v2) of its own, killed whole with `cgroup.kill`.
//!
//! A process group cannot hold a descendant that calls `setsid()` (a daemon leaves it);
//! a cgroup can: every descendant stays in it whatever it does with sessions and groups.
//! This needs a writable cgroup v2 hierarchy and Linux ≥ 5.14 (`cgroup.kill`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The cgroup v2 directory of this process, if the v2 hierarchy is mounted.
pub fn own_cgroup() -> io::Result<PathBuf> {
    let cg = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "this process is in no cgroup v2 hierarchy"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    // mountinfo: ... mount-point ... - fstype source options
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 file system is mounted"))?;
    Ok(mount.join(rel.trim().trim_start_matches('/')))
}

/// A cgroup made for one worker; removed when dropped (once empty).
#[derive(Debug)]
pub(crate) struct WorkerCgroup {
    dir: PathBuf,
}

static SERIAL: AtomicU64 = AtomicU64::new(0);

impl WorkerCgroup {
    /// Creates a fresh cgroup under `parent` and moves `pid` into it.
    pub fn create(parent: &Path, pid: i32) -> io::Result<WorkerCgroup> {
        let name = format!("hangfree-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        let dir = parent.join(name);
        std::fs::create_dir(&dir)?;
        let cg = WorkerCgroup { dir };
        std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string())?;
        Ok(cg)
    }

    /// SIGKILLs every process in the cgroup, however it left its process group.
    pub fn kill(&self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        // Killed processes leave asynchronously; wait a little for the cgroup to empty.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            self.kill();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Checks that worker cgroups can be made under `parent` (creating and removing one).
pub(crate) fn check_writable(parent: &Path) -> io::Result<()> {
    let probe = parent.join(format!("hangfree-probe-{}", std::process::id()));
    std::fs::create_dir(&probe)?;
    let has_kill = probe.join("cgroup.kill").exists();
    std::fs::remove_dir(&probe)?;
    if has_kill {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::Unsupported, "cgroup.kill is missing (Linux ≥ 5.14 needed)"))
    }
}
