//! Starting, killing and restarting a real `fleetmq` process.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::metrics::{self, Metrics};

/// How long a node may take to accept TCP connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What to start a node with. Everything is optional: `BrokerOptions::default()`
/// is a single node with the binary's defaults on fresh loopback ports and a
/// fresh data directory.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// TOML text written to a file and passed with `--config`.
    pub config: Option<String>,
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// `--storage sled|memory`; the binary's default (sled) when `None`.
    pub storage: Option<String>,
    /// More arguments after `serve`.
    pub extra_args: Vec<String>,
    /// `--node-id`; 1 when `None`.
    pub node_id: Option<u64>,
    /// The MQTT listener; a free loopback port when `None`. A node whose ports were
    /// all chosen by the caller (e.g. a cluster node named in the others' `--peers`)
    /// is never moved to other ports.
    pub mqtt_addr: Option<SocketAddr>,
    /// The admin HTTP listener; a free loopback port when `None`.
    pub admin_addr: Option<SocketAddr>,
    /// The gRPC listener; a free loopback port when `None`.
    pub grpc_addr: Option<SocketAddr>,
}

impl BrokerOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The TOML configuration file's text, e.g. `"[mqtt]\nmax_keep_alive = 5\n"`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// Shorthand for a config holding only `[mqtt]` keys: `mqtt_config("max_keep_alive = 5")`.
    pub fn mqtt_config(self, keys: &str) -> Self {
        self.config(&format!("[mqtt]\n{keys}\n"))
    }

    pub fn storage(mut self, engine: &str) -> Self {
        self.storage = Some(engine.to_string());
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// `--node-id id` instead of 1.
    pub fn node_id(mut self, id: u64) -> Self {
        self.node_id = Some(id);
        self
    }

    /// Listen on these addresses instead of free ports chosen at start.
    pub fn addrs(mut self, mqtt: SocketAddr, admin: SocketAddr, grpc: SocketAddr) -> Self {
        self.mqtt_addr = Some(mqtt);
        self.admin_addr = Some(admin);
        self.grpc_addr = Some(grpc);
        self
    }

    /// Appends arguments after `serve`, e.g. `.args(["--peers", "1=127.0.0.1:7000"])`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    fn has_fixed_addrs(&self) -> bool {
        self.mqtt_addr.is_some() || self.admin_addr.is_some() || self.grpc_addr.is_some()
    }
}

/// A running `fleetmq serve` process on loopback ports. Killed when dropped; if the
/// test is panicking, the tail of its log is printed and its directory kept.
pub struct BrokerProcess {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    opts: BrokerOptions,
    /// The MQTT TCP listener.
    pub mqtt_addr: SocketAddr,
    /// The admin HTTP listener (/healthz, /metrics).
    pub admin_addr: SocketAddr,
    /// The gRPC listener for peers.
    pub grpc_addr: SocketAddr,
}

/// The `fleetmq` binary: `$FLEETMQ_BIN`, else `<target>/debug/fleetmq` next to the
/// `deps/` folder the test executable runs from.
pub fn broker_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLEETMQ_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let name = format!("fleetmq{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(profile_dir) = dir.parent() {
                candidates.push(profile_dir.join(&name));
            }
        }
        candidates.push(dir.join(&name));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the fleetmq binary was not found (looked at {candidates:?}); \
         run `cargo build -p fleetmq` first, or set FLEETMQ_BIN"
    );
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

impl BrokerProcess {
    /// Starts a node and waits until its MQTT and admin ports accept TCP. Panics with
    /// the node's log when it does not come up.
    pub fn start(opts: BrokerOptions) -> BrokerProcess {
        let mut broker = BrokerProcess::prepare(opts).unwrap_or_else(|e| panic!("{e}"));
        // Another test may grab a port between our probe and the node's bind: retry
        // with fresh ports when that is why the node stopped (unless the caller chose
        // the ports).
        for attempt in 0.. {
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(e) => {
                    let log = broker.log_tail(60);
                    let port_clash = log.contains("in use") || log.contains("AddrInUse");
                    if port_clash && attempt < 4 && !broker.opts.has_fixed_addrs() {
                        broker.kill9();
                        broker.mqtt_addr = free_addr();
                        broker.admin_addr = free_addr();
                        broker.grpc_addr = free_addr();
                        continue;
                    }
                    panic!(
                        "fleetmq did not start: {e}\nlog {}:\n{log}",
                        broker.log_path.display()
                    );
                }
            }
        }
        unreachable!()
    }

    /// Spawns a node without waiting for it: for nodes that must start together
    /// (a cluster's first node waits for a quorum). Wait with
    /// [`wait_listening`](Self::wait_listening). Never retries on other ports.
    pub fn launch(opts: BrokerOptions) -> Result<BrokerProcess, String> {
        let mut broker = BrokerProcess::prepare(opts)?;
        broker.spawn()?;
        Ok(broker)
    }

    /// A fresh directory, the config file and the addresses; nothing runs yet.
    fn prepare(opts: BrokerOptions) -> Result<BrokerProcess, String> {
        let dir = tempfile::Builder::new()
            .prefix("fleetmq-test-")
            .tempdir()
            .map_err(|e| format!("create a temporary directory: {e}"))?;
        let dir_path = dir.path().to_path_buf();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir_path.join("data"));
        let log_path = dir_path.join("fleetmq.log");
        let config_path = match opts.config.as_ref() {
            Some(text) => {
                let path = dir_path.join("fleetmq.toml");
                fs::write(&path, text).map_err(|e| format!("write the config file: {e}"))?;
                Some(path)
            }
            None => None,
        };
        Ok(BrokerProcess {
            child: None,
            dir: Some(dir),
            dir_path,
            data_dir,
            log_path,
            config_path,
            mqtt_addr: opts.mqtt_addr.unwrap_or_else(free_addr),
            admin_addr: opts.admin_addr.unwrap_or_else(free_addr),
            grpc_addr: opts.grpc_addr.unwrap_or_else(free_addr),
            opts,
        })
    }

    /// Spawns the process again (same data directory, ports and configuration)
    /// without waiting; kills it first if it runs.
    pub fn respawn(&mut self) -> Result<(), String> {
        self.kill9();
        self.spawn()
    }

    /// Starts a node with the binary's defaults.
    pub fn start_default() -> BrokerProcess {
        Self::start(BrokerOptions::default())
    }

    /// Starts a node whose config file holds only the given `[mqtt]` keys.
    pub fn start_with_mqtt_config(keys: &str) -> BrokerProcess {
        Self::start(BrokerOptions::new().mqtt_config(keys))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.spawn()?;
        self.wait_listening(START_TIMEOUT)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = broker_binary();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open log {}: {e}", self.log_path.display()))?;
        let log_out = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        let node_id = self.opts.node_id.unwrap_or(1).to_string();
        cmd.arg("serve")
            .arg("--node-id")
            .arg(node_id)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--mqtt-listen")
            .arg(self.mqtt_addr.to_string())
            .arg("--admin-listen")
            .arg(self.admin_addr.to_string())
            .arg("--grpc-listen")
            .arg(self.grpc_addr.to_string());
        if let Some(path) = &self.config_path {
            cmd.arg("--config").arg(path);
        }
        if let Some(engine) = &self.opts.storage {
            cmd.arg("--storage").arg(engine);
        }
        cmd.args(&self.opts.extra_args);
        // FLEETMQ_* variables override flags: a developer's environment must not
        // move the node to other ports or directories.
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str() {
                if k.starts_with("FLEETMQ_") && k != "FLEETMQ_LOG" {
                    cmd.env_remove(k);
                }
            }
        }
        // Plain text in the log file: it is read by people and by `log_tail`.
        cmd.env("NO_COLOR", "1");
        cmd.stdin(Stdio::null()).stdout(log_out).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits (up to `timeout`) until the MQTT and admin ports accept TCP; `Err` when
    /// the process exits or the time is up.
    pub fn wait_listening(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut mqtt_up = false;
        let mut admin_up = false;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("the process exited early with {status}"));
                }
            }
            if !mqtt_up {
                mqtt_up =
                    TcpStream::connect_timeout(&self.mqtt_addr, Duration::from_millis(200)).is_ok();
            }
            if !admin_up {
                admin_up = TcpStream::connect_timeout(&self.admin_addr, Duration::from_millis(200))
                    .is_ok();
            }
            if mqtt_up && admin_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after {timeout:?} (mqtt {} up: {mqtt_up}, admin {} up: {admin_up})",
                    self.mqtt_addr, self.admin_addr
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1` as a host string for clients.
    pub fn host(&self) -> String {
        self.mqtt_addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.mqtt_addr.port()
    }

    /// The node's temporary directory: its log, config file and (by default) data.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// True while the process runs.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics (with the log) unless the process is still running.
    pub fn must_be_alive(&mut self) {
        if !self.is_alive() {
            panic!(
                "fleetmq is no longer running\nlog {}:\n{}",
                self.log_path.display(),
                self.log_tail(80)
            );
        }
    }

    /// `--node-id` of this node.
    pub fn node_id(&self) -> u64 {
        self.opts.node_id.unwrap_or(1)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for the process to exit on its own (after a drain
    /// request, say) and reaps it; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (a graceful shutdown), then waits up to `timeout` for the exit;
    /// SIGKILL after that. Returns whether the process exited on its own.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + timeout;
        while sent && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, ...) to the process; true
    /// if it runs and `kill` succeeded.
    pub fn signal(&self, signal: &str) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGSTOP: the process stops where it is, its sockets stay open and unanswered
    /// (a stalled VM, a long GC pause, a swapped-out host) until [`resume`](Self::resume).
    pub fn pause(&self) {
        assert!(self.signal("STOP"), "could not SIGSTOP {}", self.describe());
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        assert!(self.signal("CONT"), "could not SIGCONT {}", self.describe());
    }

    fn describe(&self) -> String {
        format!("node {} (pid {:?})", self.node_id(), self.pid())
    }

    /// SIGKILL, then reap the process. No graceful shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, then starts it again on the same data
    /// directory, ports and configuration, and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    // The old listener's port can take a moment to be free again.
                    if Instant::now() < deadline {
                        self.kill9();
                        std::thread::sleep(Duration::from_millis(300));
                        continue;
                    }
                    panic!(
                        "fleetmq did not restart: {e}\nlog {}:\n{}",
                        self.log_path.display(),
                        self.log_tail(80)
                    );
                }
            }
        }
    }

    /// The last `lines` lines of the node's log (all its runs).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        all[start..].join("\n")
    }

    /// `GET /metrics`, parsed. Panics when the admin endpoint does not answer 200.
    pub fn metrics(&self) -> Metrics {
        match metrics::fetch_metrics(self.admin_addr) {
            Ok(m) => m,
            Err(e) => panic!(
                "GET /metrics on {} failed: {e:#}\nlog:\n{}",
                self.admin_addr,
                self.log_tail(40)
            ),
        }
    }

    /// The sum of the samples of `name` whose labels include `labels`; 0 when there is none.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().value(name, labels).unwrap_or(0.0)
    }

    /// Waits (up to `timeout`) until `metric(name, labels) >= at_least`, and returns
    /// the value; panics with the metric text otherwise.
    pub fn must_metric_at_least(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        timeout: Duration,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            let v = m.value(name, labels).unwrap_or(0.0);
            if v >= at_least {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "metric {name}{labels:?} is {v}, expected >= {at_least} within {timeout:?}\n\
                     matching lines:\n{}",
                    m.lines_for(name)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` on the admin listener: (status, body).
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        metrics::http_get(self.admin_addr, path)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- fleetmq log {} (last 80 lines) ----\n{}\n---- end of log ----",
                self.log_path.display(),
                self.log_tail(80)
            );
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("kept the node's directory {}", kept.display());
            }
        }
    }
}
