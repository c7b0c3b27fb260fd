//! The brokers compared side by side (issue 6): FleetMQ as one node with its defaults,
//! Mosquitto from the Debian package, rumqttd from crates.io. Each runs as its own
//! process on a loopback port with a configuration written here, so that the same
//! scenario drives all three and reads their CPU and memory from /proc.
//!
//! `scripts/bench-side-by-side.sh` installs the peers: `apt-get install mosquitto`,
//! `cargo install rumqttd --version 0.20.0` into `~/.cache/fleetmq/rumqttd-0.20.0`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// Which brokers a side-by-side scenario runs, in how many rounds, and the source
/// addresses its clients use: the options every side-by-side scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Lineup {
    /// Brokers to compare, in the order of each round.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fleetmq,mosquitto,rumqttd"
    )]
    pub brokers: Vec<String>,
    /// Rounds (each broker once per round).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Loopback source addresses the clients spread over (127.0.0.2 on).
    #[arg(long, default_value_t = 4)]
    pub source_ips: u8,
}

impl Lineup {
    /// One broker and one round: for the tests.
    #[cfg(test)]
    pub fn fleetmq_once(source_ips: u8) -> Lineup {
        Lineup {
            brokers: vec!["fleetmq".into()],
            runs: 1,
            source_ips,
        }
    }

    pub fn kinds(&self) -> anyhow::Result<Vec<PeerKind>> {
        self.brokers
            .iter()
            .map(|b| PeerKind::parse(b).map_err(anyhow::Error::msg))
            .collect()
    }

    /// What the results record of the lineup: the options and each broker's version.
    pub fn params(&self, kinds: &[PeerKind], bins: &PeerBinaries) -> serde_json::Value {
        let versions: serde_json::Map<String, serde_json::Value> = kinds
            .iter()
            .map(|k| (k.name().to_string(), serde_json::json!(bins.version(*k))))
            .collect();
        serde_json::json!({
            "runs": self.runs,
            "source_ips": self.source_ips,
            "brokers": self.brokers,
            "versions": versions,
        })
    }
}

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Fleetmq,
    Mosquitto,
    Rumqttd,
}

impl PeerKind {
    pub fn parse(name: &str) -> Result<PeerKind, String> {
        match name {
            "fleetmq" => Ok(PeerKind::Fleetmq),
            "mosquitto" => Ok(PeerKind::Mosquitto),
            "rumqttd" => Ok(PeerKind::Rumqttd),
            other => Err(format!(
                "{other:?} is not a broker here: fleetmq, mosquitto or rumqttd"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Fleetmq => "fleetmq",
            PeerKind::Mosquitto => "mosquitto",
            PeerKind::Rumqttd => "rumqttd",
        }
    }
}

/// One broker's run in one round of a side-by-side scenario.
pub trait RoundRun {
    fn broker(&self) -> &str;
    fn round(&self) -> usize;
}

/// FleetMQ's runs, each with `peer`'s run of the same round: ratios are taken within a
/// round, where both brokers met the same machine.
pub fn same_round_pairs<R: RoundRun>(runs: &[R], peer: PeerKind) -> Vec<(&R, &R)> {
    runs.iter()
        .filter(|r| r.broker() == PeerKind::Fleetmq.name())
        .filter_map(|mine| {
            runs.iter()
                .find(|p| p.broker() == peer.name() && p.round() == mine.round())
                .map(|theirs| (mine, theirs))
        })
        .collect()
}

/// Ends a side-by-side summary: the markdown table (a header of `columns`, then `rows`)
/// indented into the printed text, where `scripts/bench-side-by-side.sh` picks it up,
/// and FleetMQ's `ratios` over each peer and the rows into the JSON.
pub fn close_summary(
    mut summary: serde_json::Map<String, serde_json::Value>,
    ratios: serde_json::Map<String, serde_json::Value>,
    columns: &[&str],
    rows: &str,
    text: &mut String,
) -> serde_json::Value {
    text.push_str(&format!(
        "  | {} |\n  |{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    ));
    for row in rows.lines() {
        text.push_str(&format!("  {row}\n"));
    }
    summary.insert("fleetmq_over".into(), serde_json::Value::Object(ratios));
    summary.insert("markdown_rows".into(), serde_json::json!(rows));
    serde_json::Value::Object(summary)
}

/// Where each broker's binary is.
#[derive(Debug, Clone)]
pub struct PeerBinaries {
    pub fleetmq: PathBuf,
    pub mosquitto: PathBuf,
    pub rumqttd: PathBuf,
}

impl PeerBinaries {
    /// Mosquitto from the Debian package, rumqttd where the side-by-side script puts it.
    pub fn standard(fleetmq: PathBuf) -> PeerBinaries {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        PeerBinaries {
            fleetmq,
            mosquitto: PathBuf::from("/usr/sbin/mosquitto"),
            rumqttd: home.join(".cache/fleetmq/rumqttd-0.20.0/bin/rumqttd"),
        }
    }

    fn of(&self, kind: PeerKind) -> &Path {
        match kind {
            PeerKind::Fleetmq => &self.fleetmq,
            PeerKind::Mosquitto => &self.mosquitto,
            PeerKind::Rumqttd => &self.rumqttd,
        }
    }

    /// The broker's version as it reports it, for the record.
    pub fn version(&self, kind: PeerKind) -> String {
        let flag = match kind {
            PeerKind::Mosquitto => "-h",
            _ => "--version",
        };
        Command::new(self.of(kind))
            .arg(flag)
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines().next().map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    }
}

/// One running broker.
pub struct PeerBroker {
    pub kind: PeerKind,
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PeerBroker {
    /// Starts `kind` on a free loopback port in a fresh directory and waits until
    /// it accepts TCP connections.
    pub fn start(kind: PeerKind, bins: &PeerBinaries, work_dir: &Path) -> anyhow::Result<Self> {
        let bin = bins.of(kind);
        if !bin.exists() {
            bail!(
                "{} not found at {} (scripts/bench-side-by-side.sh installs it)",
                kind.name(),
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-{}-", kind.name()))
            .tempdir_in(work_dir)
            .context("create the broker's directory")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new(bin);
        match kind {
            PeerKind::Fleetmq => {
                let admin = free_port()?;
                let grpc = free_port()?;
                std::fs::write(
                    dir.path().join("fleetmq.toml"),
                    "[mqtt]\nmax_connections = 1000000\n",
                )?;
                command
                    .arg("serve")
                    .arg("--config")
                    .arg(dir.path().join("fleetmq.toml"))
                    .arg("--data-dir")
                    .arg(dir.path().join("data"))
                    .arg("--mqtt-listen")
                    .arg(addr.to_string())
                    .arg("--admin-listen")
                    .arg(format!("127.0.0.1:{admin}"))
                    .arg("--grpc-listen")
                    .arg(format!("127.0.0.1:{grpc}"))
                    .env("FLEETMQ_LOG", "warn");
            }
            PeerKind::Mosquitto => {
                let config = dir.path().join("mosquitto.conf");
                std::fs::write(
                    &config,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n\
                         persistence false\nlog_dest stderr\nlog_type error\n"
                    ),
                )?;
                command.arg("-c").arg(&config);
            }
            PeerKind::Rumqttd => {
                let config = dir.path().join("rumqttd.toml");
                // As its own example, with room for the connections and no delay
                // between accepts (its default paces them at 1 ms).
                std::fs::write(
                    &config,
                    format!(
                        "id = 0\n[router]\nid = 0\nmax_connections = 1000000\n\
                         max_outgoing_packet_count = 200\nmax_segment_size = 104857600\n\
                         max_segment_count = 10\n\
                         [v4.1]\nname = \"v4-1\"\nlisten = \"{addr}\"\nnext_connection_delay_ms = 0\n\
                         [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n\
                         max_inflight_count = 100\ndynamic_filters = true\n"
                    ),
                )?;
                command.arg("-c").arg(&config);
            }
        }
        let log = std::fs::File::create(dir.path().join("broker.log"))?;
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut broker = PeerBroker {
            kind,
            addr,
            child,
            _dir: dir,
        };
        broker.wait_listening(Duration::from_secs(30))?;
        Ok(broker)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited at start: {status}", self.kind.name());
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(anyhow!(
            "{} did not listen on {} within {timeout:?}",
            self.kind.name(),
            self.addr
        ))
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PeerBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
