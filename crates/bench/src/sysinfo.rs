//! What Linux tells about the machine and the broker processes (`/proc`), and the
//! load gate run before each measurement.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User plus system CPU time of `pid` so far, in clock ticks; `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' start
    // with field 3, the state, so utime (14) and stime (15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of `pid`: (current `VmRSS`, peak `VmHWM`) in bytes.
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    Some((kb("VmRSS:")? * 1024, kb("VmHWM:")? * 1024))
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// How the load gate before a measurement went.
#[derive(Debug, Clone, Serialize)]
pub struct LoadGate {
    /// The 1-minute load when the gate was reached.
    pub load1_at_gate: f64,
    /// The 1-minute load when the measurement started.
    pub load1_at_start: f64,
    /// Seconds waited for the load to drop.
    pub waited_s: f64,
    /// False when the load was still above the limit after the longest wait.
    pub under_limit: bool,
}

/// Waits (up to `max_wait`) until the 1-minute load is at most `limit`; says how it
/// went. The measurement goes ahead either way: the result records the load.
pub async fn wait_for_load(limit: f64, max_wait: Duration) -> LoadGate {
    let start = Instant::now();
    let first = loadavg().map_or(f64::NAN, |l| l[0]);
    let mut now = first;
    if now > limit && !max_wait.is_zero() {
        note(&format!(
            "1-minute load is {now:.2} (> {limit}); waiting up to {}s for it to drop",
            max_wait.as_secs()
        ));
    }
    while now > limit && start.elapsed() < max_wait {
        tokio::time::sleep(Duration::from_secs(5)).await;
        now = loadavg().map_or(f64::NAN, |l| l[0]);
    }
    LoadGate {
        load1_at_gate: first,
        load1_at_start: now,
        waited_s: start.elapsed().as_secs_f64(),
        under_limit: now <= limit,
    }
}

/// TCP sockets in TIME_WAIT on this machine (`/proc/net/sockstat`).
pub fn time_wait_sockets() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut fields = tcp.split_whitespace();
    while let Some(name) = fields.next() {
        if name == "tw" {
            return fields.next()?.parse().ok();
        }
    }
    None
}

/// Waits (up to `max_wait`) until at most `limit` TCP sockets are in TIME_WAIT; the
/// count when it stopped waiting. A storm's clients close their N connections first,
/// so each of those holds its (source address, port) for 60 s. Storms started
/// meanwhile ran slow: back to back, storms of 15,000 kept 690 to 4,063 connections a
/// second instead of 6,400 (FleetMQ, 1af48f3), most likely because their sockets bind
/// among the ports left (28,232 per source address here).
pub async fn wait_for_time_wait(limit: u64, max_wait: Duration) -> Option<u64> {
    let start = Instant::now();
    let mut now = time_wait_sockets()?;
    if now > limit {
        note(&format!(
            "{now} TCP sockets in TIME_WAIT (> {limit}); waiting up to {}s for them to expire",
            max_wait.as_secs()
        ));
    }
    while now > limit && start.elapsed() < max_wait {
        tokio::time::sleep(Duration::from_secs(1)).await;
        now = time_wait_sockets()?;
    }
    Some(now)
}

/// A progress line on stderr (stdout carries the summary).
pub fn note(msg: &str) {
    eprintln!("[fleetmq-bench] {msg}");
}

/// The machine a result was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    /// Where the nodes' data directories are.
    pub work_dir: PathBuf,
    /// The filesystem holding `work_dir`: "device fstype mountpoint".
    pub work_dir_fs: String,
    pub fleetmq_bin: PathBuf,
    /// `fleetmq --version`.
    pub fleetmq_version: String,
    /// The profile the binary was built with, guessed from its path (`release` or
    /// `debug` folder).
    pub fleetmq_profile: String,
    /// When the binary was last written (seconds since the Unix epoch): it is built
    /// from the working tree, which may be ahead of `fleetmq_revision`.
    pub fleetmq_bin_modified_unix: u64,
    /// `git rev-parse --short HEAD` of the workspace the bench was built from, when
    /// the bench runs.
    pub fleetmq_revision: String,
    /// Whether this bench binary has debug assertions (a debug build).
    pub bench_debug_build: bool,
}

impl Machine {
    pub fn describe(fleetmq_bin: &Path, work_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
        let fleetmq_version = Command::new(fleetmq_bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map_or_else(|| "unknown".to_string(), |s| s.trim().to_string());
        let path_text = fleetmq_bin.to_string_lossy();
        let fleetmq_profile = if path_text.contains("/release/") {
            "release"
        } else if path_text.contains("/debug/") {
            "debug"
        } else {
            "unknown"
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_gib: mem_kb / (1024.0 * 1024.0),
            kernel,
            work_dir: work_dir.to_path_buf(),
            work_dir_fs: filesystem_of(work_dir),
            fleetmq_bin: fleetmq_bin.to_path_buf(),
            fleetmq_version,
            fleetmq_profile: fleetmq_profile.to_string(),
            fleetmq_bin_modified_unix: std::fs::metadata(fleetmq_bin)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            fleetmq_revision: revision(),
            bench_debug_build: cfg!(debug_assertions),
        }
    }
}

/// The mount in `/proc/mounts` with the longest mount point that holds `dir`.
fn filesystem_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, mount, fstype) = (f.first()?, f.get(1)?, f.get(2)?);
            dir.starts_with(mount)
                .then(|| (mount.len(), format!("{dev} {fstype} {mount}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_string(), |(_, s)| s)
}

/// The short git revision of the workspace this bench was built from.
fn revision() -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new("git")
        .arg("-C")
        .arg(&workspace)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_string(), |s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_and_rss() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        let (rss, hwm) = rss_bytes(pid).expect("rss");
        assert!(rss > 0 && hwm >= rss);
        assert!(loadavg().is_some());
    }
}
