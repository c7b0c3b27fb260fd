//! The node's configuration: one versioned TOML schema with documented defaults
//! (`fleetmq.example.toml`), overridden by flags and `FLEETMQ_*` variables, and a
//! `validate()` whose errors name the key at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetmq_auth::{AclConfig, AclRules, Authenticator, JwtConfig, JwtVerifier, PasswordSource};
use fleetmq_broker::persist;
use fleetmq_broker::{BrokerConfig, QueueFullPolicy};
use fleetmq_kafka::KafkaConfig;
use serde::Deserialize;

use crate::drain::DrainPlan;
use crate::listener::{ListenerSpec, TlsSettings, Transport};
pub use crate::overrides::Override;

/// The schema version this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// More runtime threads than this is a typo, not a tuning.
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

/// The shortest bearer token accepted: guessing must be hopeless.
const MIN_API_TOKEN: usize = 16;

fn read_api_token(path: &Path) -> Result<Arc<str>, ConfigError> {
    const KEY: &str = "admin.api_token_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(KEY, format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < MIN_API_TOKEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            KEY,
            format!(
                "{} must hold one token of at least {MIN_API_TOKEN} characters without spaces",
                path.display()
            ),
        ));
    }
    Ok(Arc::from(token))
}

pub(crate) fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub version: u32,
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Threads of the async runtime; 0: one per core.
    pub worker_threads: usize,
    pub mqtt: MqttConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    pub storage: StorageConfig,
    /// `[kafka]`: the Kafka bridge; absent means no bridge.
    pub kafka: Option<KafkaConfig>,
    /// `[[listeners]]`: MQTT listeners besides `mqtt.listen` (TLS, WebSocket, ...).
    pub listeners: Vec<ListenerConfig>,
    /// `[auth]`: who may connect.
    pub auth: AuthConfig,
    /// `[acl]`: what clients may publish and subscribe to.
    pub acl: AclConfig,
    /// `[drain]`: how the node leaves on SIGTERM or a drain request.
    pub drain: DrainConfig,
}

/// `[drain]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Clients told to move per second, so that they do not all reconnect to the
    /// other nodes in the same moment.
    pub rate: u32,
    /// The longest, in seconds, the node takes to tell all its clients, whatever
    /// `rate` would take.
    pub spread: u64,
    /// Seconds the whole drain may take before the remaining connections are closed.
    pub timeout: u64,
    /// Sent to MQTT 5 clients as the Server Reference of DISCONNECT 0x9C (use
    /// another server); empty: DISCONNECT 0x8B (server shutting down).
    pub server_reference: String,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            rate: 2000,
            spread: 10,
            timeout: 30,
            server_reference: String::new(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether clients without credentials may connect.
    pub allow_anonymous: bool,
    /// `username:argon2-hash` lines, as `fleetmq passwd` writes them.
    pub password_file: Option<PathBuf>,
    /// `[auth.jwt]`: tokens as passwords.
    pub jwt: Option<JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            password_file: None,
            jwt: None,
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Names the listener in logs and metrics.
    pub name: String,
    /// `tcp`, `tls`, `ws` (MQTT over WebSocket) or `wss` (over secure WebSocket).
    pub kind: String,
    pub listen: String,
    /// Require a PROXY protocol (v1 or v2) header from a load balancer.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `ws` and `wss`: the HTTP path of the upgrade (default `/mqtt`).
    pub ws_path: Option<String>,
    /// `tls` and `wss`: certificates.
    pub tls: Option<TlsConfig>,
    /// New connections a second; default `mqtt.max_connect_rate`.
    pub max_connect_rate: Option<u32>,
}

/// A listener's `tls` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the CAs whose client certificates are accepted (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate (needs `client_ca_file`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// The client certificate's common name is the MQTT username; the CONNECT's is
    /// ignored (needs `client_ca_file`).
    #[serde(default)]
    pub cn_as_username: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The plain TCP listener, named `mqtt`; empty: none.
    pub listen: String,
    /// Require a PROXY protocol header on `listen`.
    pub proxy_protocol: bool,
    pub max_packet_size: u32,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub max_keep_alive: u16,
    pub max_session_expiry_interval: u32,
    pub max_queued_messages: usize,
    pub queue_full_policy: String,
    pub topic_alias_maximum: u16,
    pub max_topic_levels: usize,
    pub retain_available: bool,
    pub sys_interval: u64,
    pub connect_timeout: u64,
    pub max_connections: usize,
    /// Connections each listener's kernel queue holds before they are accepted (the
    /// kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// New connections a second each listener takes (its own `max_connect_rate`
    /// overrides); 0: no limit.
    pub max_connect_rate: u32,
    /// PUBLISH packets a second one client may send; 0: no limit.
    pub max_publish_rate: u32,
    /// Bytes of PUBLISH (topic and payload) a second one client may send; 0: no limit.
    pub max_publish_bytes_rate: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
    /// A file holding the bearer token `/api/v1` requires. Without it the API answers
    /// requests from the loopback interface only.
    pub api_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub grpc_listen: String,
    /// "id=host:port" entries.
    pub peers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub engine: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            worker_threads: 0,
            mqtt: MqttConfig::default(),
            admin: AdminConfig::default(),
            cluster: ClusterConfig::default(),
            storage: StorageConfig::default(),
            kafka: None,
            listeners: Vec::new(),
            auth: AuthConfig::default(),
            acl: AclConfig::default(),
            drain: DrainConfig::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        let core = BrokerConfig::default();
        MqttConfig {
            listen: "0.0.0.0:1883".into(),
            proxy_protocol: false,
            max_packet_size: core.max_packet_size,
            receive_maximum: core.receive_maximum,
            max_inflight: core.max_inflight,
            max_keep_alive: core.max_keep_alive,
            max_session_expiry_interval: core.max_session_expiry_interval,
            max_queued_messages: core.max_queued_messages,
            queue_full_policy: "drop-new".into(),
            topic_alias_maximum: core.topic_alias_maximum,
            max_topic_levels: core.max_topic_levels,
            retain_available: core.retain_available,
            sys_interval: 10,
            connect_timeout: 10,
            max_connections: 100_000,
            listen_backlog: 4096,
            max_connect_rate: 0,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "0.0.0.0:8080".into(),
            api_token_file: None,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            grpc_listen: "127.0.0.1:7070".into(),
            peers: Vec::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: "sled".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageEngineKind {
    Sled,
    Memory,
}

/// The configuration checked and turned into the types the node runs with.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// `None`: one per core.
    pub worker_threads: Option<usize>,
    /// Every MQTT listener: `mqtt` (from `mqtt.listen`) first, then `[[listeners]]`.
    pub listeners: Vec<ListenerSpec>,
    pub admin_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub peers: BTreeMap<u64, String>,
    pub storage: StorageEngineKind,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub listen_backlog: u32,
    pub max_publish_rate: u32,
    pub max_publish_bytes_rate: u64,
    pub broker: BrokerConfig,
    pub kafka: Option<KafkaConfig>,
    pub auth: Arc<Authenticator>,
    /// The node's access rules from the file (a client's token may carry its own
    /// instead; rules set at runtime through the API replace these: crate::rules).
    pub acl: Arc<AclRules>,
    /// The same as written, for the API to show.
    pub acl_config: AclConfig,
    pub drain: DrainPlan,
    /// The bearer token of `/api/v1`; none: loopback callers only.
    pub api_token: Option<Arc<str>>,
}

impl Config {
    /// Reads a TOML file; unknown keys and wrong types are errors naming the key.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::load(Some(path), &[])
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// The file (or nothing: the defaults) with `overrides` applied in order, later
    /// ones winning. A value that is wrong for its key, wherever it came from, is an
    /// error naming the dotted key.
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let parse_error = |message| ConfigError::Parse {
            path: file.map_or_else(|| PathBuf::from("(no file)"), Path::to_path_buf),
            message,
        };
        // The file alone first: its own mistakes are reported with line and column.
        let from_file = Config::from_toml(&text).map_err(parse_error)?;
        if overrides.is_empty() {
            return Ok(from_file);
        }
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_error(e.to_string().trim_end().to_string()))?;
        let mut tree = toml::Value::Table(table);
        for o in overrides {
            o.apply(&mut tree)?;
        }
        serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            let problem = e.into_inner().to_string();
            // The override at fault: the last one of the key itself, or, for an unknown
            // key (reported at its table), the one that names it there.
            let culprit = overrides.iter().rev().find(|o| {
                let (table, name) = o.key.rsplit_once('.').unwrap_or(("", &o.key));
                o.key == key
                    || (table == key && problem.contains(&format!("unknown field `{name}`")))
            });
            let from = culprit
                .map(|o| format!(" (set by {})", o.source))
                .unwrap_or_default();
            invalid(&key, format!("{problem}{from}"))
        })
    }

    /// Checks every value, naming the key of the first one that is wrong.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "this build reads version {CONFIG_VERSION}, the file says {}",
                    self.version
                ),
            ));
        }
        if self.node_id == 0 || self.node_id > persist::MAX_NODE_ID {
            return Err(invalid(
                "node_id",
                format!(
                    "must be 1 to {}, not {}",
                    persist::MAX_NODE_ID,
                    self.node_id
                ),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let m = &self.mqtt;
        let listeners = self.listener_specs()?;
        let admin_listen = parse_addr("admin.listen", &self.admin.listen)?;
        let grpc_listen = parse_addr("cluster.grpc_listen", &self.cluster.grpc_listen)?;
        if m.max_packet_size < 64 {
            return Err(invalid("mqtt.max_packet_size", "must be at least 64 bytes"));
        }
        if m.max_packet_size as usize > fleetmq_codec::MAX_REMAINING_LENGTH + 5 {
            return Err(invalid(
                "mqtt.max_packet_size",
                "must be at most 268435460 bytes, the MQTT limit",
            ));
        }
        if m.receive_maximum == 0 {
            return Err(invalid("mqtt.receive_maximum", "must be 1 or more"));
        }
        if m.max_inflight == 0 {
            return Err(invalid("mqtt.max_inflight", "must be 1 or more"));
        }
        if m.max_queued_messages == 0 {
            return Err(invalid("mqtt.max_queued_messages", "must be 1 or more"));
        }
        let queue_full_policy = match m.queue_full_policy.as_str() {
            "drop-new" => QueueFullPolicy::DropNew,
            "drop-oldest" => QueueFullPolicy::DropOldest,
            other => {
                return Err(invalid(
                    "mqtt.queue_full_policy",
                    format!("must be \"drop-new\" or \"drop-oldest\", not {other:?}"),
                ))
            }
        };
        if m.max_topic_levels == 0 || m.max_topic_levels > fleetmq_topic::MAX_FILTER_LEVELS {
            return Err(invalid(
                "mqtt.max_topic_levels",
                format!("must be between 1 and {}", fleetmq_topic::MAX_FILTER_LEVELS),
            ));
        }
        if m.connect_timeout == 0 {
            return Err(invalid("mqtt.connect_timeout", "must be 1 second or more"));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: one per core)"),
            ));
        }
        if m.listen_backlog == 0 {
            return Err(invalid("mqtt.listen_backlog", "must be 1 or more"));
        }
        if m.max_connections == 0 {
            return Err(invalid("mqtt.max_connections", "must be 1 or more"));
        }
        let storage = match self.storage.engine.as_str() {
            "sled" => StorageEngineKind::Sled,
            "memory" => StorageEngineKind::Memory,
            other => {
                return Err(invalid(
                    "storage.engine",
                    format!("must be \"sled\" or \"memory\", not {other:?}"),
                ))
            }
        };
        let peers = parse_peers("cluster.peers", &self.cluster.peers)?;
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            return Err(invalid(
                "cluster.peers",
                format!(
                    "must list this node too (node_id {}, at the address the others reach it on)",
                    self.node_id
                ),
            ));
        }
        if let Some(big) = peers
            .keys()
            .find(|id| **id == 0 || **id > persist::MAX_NODE_ID)
        {
            return Err(invalid(
                "cluster.peers",
                format!("node ids must be 1 to {}, not {big}", persist::MAX_NODE_ID),
            ));
        }
        if let Some(kafka) = &self.kafka {
            kafka.validate().map_err(|e| invalid(&e.key, e.problem))?;
        }
        let from_auth = |e: fleetmq_auth::ConfigError| invalid(&e.key, e.problem);
        let auth = Authenticator {
            allow_anonymous: self.auth.allow_anonymous,
            passwords: match &self.auth.password_file {
                Some(path) => {
                    Some(PasswordSource::load("auth.password_file", path).map_err(from_auth)?)
                }
                None => None,
            },
            jwt: match &self.auth.jwt {
                Some(jwt) => Some(JwtVerifier::new("auth.jwt", jwt).map_err(from_auth)?),
                None => None,
            },
        };
        let acl = self.acl.build("acl").map_err(from_auth)?;
        let drain = self.drain_plan()?;
        let api_token = match &self.admin.api_token_file {
            Some(path) => Some(read_api_token(path)?),
            None => None,
        };
        Ok(ValidConfig {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            worker_threads: (self.worker_threads > 0).then_some(self.worker_threads),
            listeners,
            admin_listen,
            grpc_listen,
            peers,
            storage,
            connect_timeout: Duration::from_secs(m.connect_timeout),
            max_connections: m.max_connections,
            listen_backlog: m.listen_backlog,
            max_publish_rate: m.max_publish_rate,
            max_publish_bytes_rate: m.max_publish_bytes_rate,
            broker: BrokerConfig {
                node_id: self.node_id,
                max_packet_size: m.max_packet_size,
                receive_maximum: m.receive_maximum,
                max_inflight: m.max_inflight,
                max_keep_alive: m.max_keep_alive,
                max_session_expiry_interval: m.max_session_expiry_interval,
                max_queued_messages: m.max_queued_messages,
                queue_full_policy,
                topic_alias_maximum: m.topic_alias_maximum,
                max_topic_levels: m.max_topic_levels,
                retain_available: m.retain_available,
                sys_interval: (m.sys_interval > 0).then(|| Duration::from_secs(m.sys_interval)),
                outbox_capacity: 4096,
            },
            kafka: self.kafka.clone(),
            auth: Arc::new(auth),
            acl: Arc::new(acl),
            acl_config: self.acl.clone(),
            drain,
            api_token,
        })
    }

    fn drain_plan(&self) -> Result<DrainPlan, ConfigError> {
        let d = &self.drain;
        if d.rate == 0 {
            return Err(invalid(
                "drain.rate",
                "must be 1 or more clients per second",
            ));
        }
        if d.timeout == 0 {
            return Err(invalid("drain.timeout", "must be 1 second or more"));
        }
        if d.spread >= d.timeout {
            return Err(invalid(
                "drain.spread",
                format!(
                    "must be shorter than drain.timeout ({} s), not {} s",
                    d.timeout, d.spread
                ),
            ));
        }
        let server_reference = match d.server_reference.trim() {
            "" => None,
            r if r.len() > usize::from(u16::MAX) => {
                return Err(invalid(
                    "drain.server_reference",
                    "must be at most 65535 bytes (an MQTT string)",
                ))
            }
            r => Some(Arc::from(r)),
        };
        Ok(DrainPlan {
            rate: d.rate,
            spread: Duration::from_secs(d.spread),
            timeout: Duration::from_secs(d.timeout),
            server_reference,
        })
    }
}

impl Config {
    /// `mqtt.listen` as the listener named `mqtt`, then every `[[listeners]]` entry.
    fn listener_specs(&self) -> Result<Vec<ListenerSpec>, ConfigError> {
        let mut specs: Vec<ListenerSpec> = Vec::new();
        if !self.mqtt.listen.is_empty() {
            specs.push(ListenerSpec {
                name: "mqtt".into(),
                listen: parse_addr("mqtt.listen", &self.mqtt.listen)?,
                proxy_protocol: self.mqtt.proxy_protocol,
                ws_path: None,
                tls: None,
                max_connect_rate: self.mqtt.max_connect_rate,
            });
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |field: &str| format!("listeners[{i}].{field}");
            let named = !l.name.is_empty()
                && l.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !named {
                return Err(invalid(
                    &key("name"),
                    format!("{:?}: use letters, digits, - and _", l.name),
                ));
            }
            if specs.iter().any(|s| *s.name == *l.name) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is taken (mqtt.listen is named \"mqtt\")", l.name),
                ));
            }
            let transport = Transport::parse(&l.kind).ok_or_else(|| {
                invalid(
                    &key("kind"),
                    format!(
                        "must be \"tcp\", \"tls\", \"ws\" or \"wss\", not {:?}",
                        l.kind
                    ),
                )
            })?;
            let listen = parse_addr(&key("listen"), &l.listen)?;
            if let Some(other) = specs.iter().find(|s| s.listen == listen) {
                return Err(invalid(
                    &key("listen"),
                    format!("{listen} is also listener {:?}'s address", other.name),
                ));
            }
            let ws_path = match (&l.ws_path, transport.uses_websocket()) {
                (Some(path), true) if path.starts_with('/') => Some(path.clone()),
                (Some(path), true) => {
                    return Err(invalid(
                        &key("ws_path"),
                        format!("{path:?} must start with /"),
                    ))
                }
                (None, true) => Some("/mqtt".to_string()),
                (Some(_), false) => {
                    return Err(invalid(
                        &key("ws_path"),
                        "only ws and wss listeners take one",
                    ))
                }
                (None, false) => None,
            };
            let tls = match (&l.tls, transport.uses_tls()) {
                (Some(tls), true) => Some(TlsSettings::load(&key("tls"), tls)?),
                (None, true) => {
                    return Err(invalid(
                        &key("tls"),
                        format!("a {} listener needs cert_file and key_file", l.kind),
                    ))
                }
                (Some(_), false) => {
                    return Err(invalid(&key("tls"), "only tls and wss listeners take one"))
                }
                (None, false) => None,
            };
            specs.push(ListenerSpec {
                name: l.name.as_str().into(),
                listen,
                proxy_protocol: l.proxy_protocol,
                ws_path,
                tls,
                max_connect_rate: l.max_connect_rate.unwrap_or(self.mqtt.max_connect_rate),
            });
        }
        if specs.is_empty() {
            return Err(invalid(
                "mqtt.listen",
                "is empty and no [[listeners]] are configured: clients could not connect",
            ));
        }
        Ok(specs)
    }
}

/// A Kubernetes StatefulSet names its pods `<name>-<ordinal>`; node ids start at 1.
pub fn node_id_from_hostname(hostname: &str) -> Option<u64> {
    let (_, ordinal) = hostname.trim().rsplit_once('-')?;
    ordinal.parse::<u64>().ok().map(|n| n + 1)
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 0.0.0.0:1883 or [::1]:1883"),
        )
    })
}

/// Parses `id=host:port` entries.
pub fn parse_peers(key: &str, entries: &[String]) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in entries {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| invalid(key, format!("{entry:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| invalid(key, format!("{entry:?}: node id must be a number >= 1")))?;
        let addr = addr.trim();
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid(
                key,
                format!("{entry:?}: address must be host:port"),
            ));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(invalid(key, format!("node id {id} is listed twice")));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documented_ones() {
        let v = Config::default().validate().unwrap();
        assert_eq!(v.listeners.len(), 1);
        assert_eq!(v.listeners[0].listen.to_string(), "0.0.0.0:1883");
        assert_eq!(v.data_dir, PathBuf::from("./data"));
        assert_eq!(v.storage, StorageEngineKind::Sled);
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let text = include_str!("../../../fleetmq.example.toml");
        let c = Config::from_toml(text).unwrap();
        // Every key, compared through its Debug form: a default changed in the code but
        // not in the documented file (or the reverse) fails here.
        assert_eq!(format!("{c:#?}"), format!("{:#?}", Config::default()));
        c.validate().unwrap();
    }

    #[test]
    fn drain_and_api_token_problems_name_their_key() {
        let key_of = |toml: &str| match Config::from_toml(toml).unwrap().validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{toml:?} should be refused, got {other:?}"),
        };
        assert_eq!(key_of("[drain]\nrate = 0\n"), "drain.rate");
        assert_eq!(key_of("[drain]\ntimeout = 0\n"), "drain.timeout");
        assert_eq!(
            key_of("[drain]\nspread = 30\ntimeout = 30\n"),
            "drain.spread"
        );
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let toml = format!(
            "[admin]\napi_token_file = {:?}\n",
            short.display().to_string()
        );
        assert_eq!(key_of(&toml), "admin.api_token_file");
        let missing = format!(
            "[admin]\napi_token_file = {:?}\n",
            dir.path().join("none").display().to_string()
        );
        assert_eq!(key_of(&missing), "admin.api_token_file");
        let good = dir.path().join("good");
        std::fs::write(&good, "  0123456789abcdef0123\n").unwrap();
        let toml = format!(
            "[admin]\napi_token_file = {:?}\n[drain]\nserver_reference = \"b.example:1883\"\n",
            good.display().to_string()
        );
        let v = Config::from_toml(&toml).unwrap().validate().unwrap();
        assert_eq!(v.api_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(v.drain.server_reference.as_deref(), Some("b.example:1883"));
    }

    fn overridden(file: &str, flags: &[&str], vars: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetmq.toml");
        std::fs::write(&path, file).unwrap();
        let mut overrides = flags
            .iter()
            .map(|f| Override::from_flag(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        overrides.extend(Override::from_env(vars).map_err(|e| e.to_string())?);
        Config::load(Some(&path), &overrides).map_err(|e| e.to_string())
    }

    #[test]
    fn any_key_can_be_set_by_flag_and_variable_the_variable_last() {
        let file = "[mqtt]\nmax_inflight = 10\nmax_topic_levels = 8\n[drain]\nrate = 5\n";
        let c = overridden(
            file,
            &[
                "mqtt.max_inflight=20",
                "mqtt.max_topic_levels=4",
                "auth.allow_anonymous=false",
            ],
            &[
                ("FLEETMQ_MQTT__MAX_TOPIC_LEVELS", "2"),
                ("FLEETMQ_DRAIN__SERVER_REFERENCE", "b.example:1883"),
                (
                    "FLEETMQ_CLUSTER__PEERS",
                    r#"["1=127.0.0.1:7070", "2=127.0.0.1:7071"]"#,
                ),
                // Named variables are the flags' business, not key overrides.
                ("FLEETMQ_NODE_ID", "7"),
                ("OTHER__THING", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.mqtt.max_inflight, 20, "--set beats the file");
        assert_eq!(c.mqtt.max_topic_levels, 2, "the variable beats --set");
        assert_eq!(c.drain.rate, 5, "untouched keys keep the file's value");
        assert_eq!(
            c.drain.server_reference, "b.example:1883",
            "no quotes needed"
        );
        assert!(!c.auth.allow_anonymous);
        assert_eq!(c.cluster.peers.len(), 2);
        assert_eq!(c.node_id, 1);
    }

    #[test]
    fn an_override_of_an_array_entry_needs_the_entry() {
        let file = "[[listeners]]\nname = \"ws\"\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\n";
        let c = overridden(file, &["listeners.0.listen=127.0.0.1:9083"], &[]).unwrap();
        assert_eq!(c.listeners[0].listen, "127.0.0.1:9083");
        let err = overridden(file, &["listeners.1.listen=127.0.0.1:9083"], &[]).unwrap_err();
        assert!(
            err.contains("listeners.1") && err.contains("no entry 1"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_override_names_its_key_and_where_it_came_from() {
        let err = overridden("", &["mqtt.max_inflight=lots"], &[]).unwrap_err();
        assert!(
            err.contains("`mqtt.max_inflight`") && err.contains("--set"),
            "{err}"
        );
        let err = overridden("", &[], &[("FLEETMQ_MQTT__MAX_INFLIGT", "5")]).unwrap_err();
        assert!(
            err.contains("max_infligt") && err.contains("FLEETMQ_MQTT__MAX_INFLIGT"),
            "{err}"
        );
        let err = overridden("", &["drain.rate=-1"], &[]).unwrap_err();
        assert!(err.contains("`drain.rate`"), "{err}");
        let err = overridden("", &["mqtt.listen.port=1"], &[]).unwrap_err();
        assert!(err.contains("mqtt.listen"), "{err}");
        let err = overridden("", &["no_equals_sign"], &[]).unwrap_err();
        assert!(err.contains("KEY=VALUE"), "{err}");
        // A wrong type in the file itself still says where, and which key.
        let err = overridden("[mqtt]\nmax_inflight = \"x\"\n", &[], &[]).unwrap_err();
        assert!(
            err.contains("max_inflight") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::from_toml("[mqtt]\nmax_pakcet_size = 10\n").unwrap_err();
        assert!(err.contains("max_pakcet_size"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.mqtt.queue_full_policy = "sometimes".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("mqtt.queue_full_policy"), "{err}");

        let mut c = Config::default();
        c.mqtt.listen = "localhost".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("mqtt.listen"), "{err}");

        let mut c = Config::default();
        c.mqtt.listen_backlog = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("mqtt.listen_backlog"), "{err}");

        let mut c = Config {
            worker_threads: 100_000,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("worker_threads"), "{err}");
        assert_eq!(Config::default().validate().unwrap().worker_threads, None);
        c.worker_threads = 3;
        assert_eq!(c.validate().unwrap().worker_threads, Some(3));

        let c = Config {
            version: 2,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("`version`"));
    }

    #[test]
    fn peers_parse_and_reject_garbage() {
        let p = parse_peers("cluster.peers", &["1=127.0.0.1:7070".into()]).unwrap();
        assert_eq!(p[&1], "127.0.0.1:7070");
        assert!(parse_peers("k", &["x=127.0.0.1:1".into()]).is_err());
        assert!(parse_peers("k", &["1=nohost".into()]).is_err());
        assert!(parse_peers("k", &["1=a:1".into(), "1=b:2".into()]).is_err());
    }

    #[test]
    fn peers_must_list_this_node() {
        let mut c = Config::default();
        c.cluster.peers = vec!["1=127.0.0.1:7070".into(), "2=127.0.0.1:7071".into()];
        let valid = c.validate().unwrap();
        assert_eq!(valid.peers.len(), 2);
        c.node_id = 3;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("cluster.peers") && err.contains("node_id 3"),
            "{err}"
        );
        c.node_id = 5000;
        assert!(c.validate().unwrap_err().to_string().contains("`node_id`"));
    }

    fn listeners_error(toml: &str) -> String {
        let config = Config::from_toml(toml).unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn listeners_are_checked_and_errors_name_the_entry() {
        let config = Config::from_toml(
            "[[listeners]]\nname = \"ws\"\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\n",
        )
        .unwrap();
        let valid = config.validate().unwrap();
        let names: Vec<&str> = valid.listeners.iter().map(|l| &*l.name).collect();
        assert_eq!(names, ["mqtt", "ws"]);
        assert_eq!(valid.listeners[1].ws_path.as_deref(), Some("/mqtt"));
        assert_eq!(valid.listeners[1].transport(), "ws");

        let one = |body: &str| {
            format!("[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:9000\"\n{body}")
        };
        let err = listeners_error(&one("kind = \"quic\""));
        assert!(err.contains("listeners[0].kind"), "{err}");
        let err = listeners_error(&one("kind = \"tls\""));
        assert!(
            err.contains("listeners[0].tls") && err.contains("cert_file"),
            "{err}"
        );
        let err = listeners_error(&one("kind = \"tcp\"\nws_path = \"/mqtt\""));
        assert!(err.contains("listeners[0].ws_path"), "{err}");
        let err = listeners_error(&one("kind = \"ws\"\nws_path = \"mqtt\""));
        assert!(err.contains("listeners[0].ws_path"), "{err}");
        let err = listeners_error(
            "[[listeners]]\nname = \"mqtt\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:9000\"\n",
        );
        assert!(
            err.contains("listeners[0].name") && err.contains("taken"),
            "{err}"
        );
        let err = listeners_error(
            "[[listeners]]\nname = \"b\"\nkind = \"tcp\"\nlisten = \"0.0.0.0:1883\"\n",
        );
        assert!(err.contains("listeners[0].listen"), "{err}");
        let err = listeners_error(&one(
            "kind = \"tls\"\n[listeners.tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"",
        ));
        assert!(err.contains("listeners[0].tls.cert_file"), "{err}");
        let err = listeners_error("[mqtt]\nlisten = \"\"\n");
        assert!(err.contains("mqtt.listen"), "{err}");
        let err = Config::from_toml(&one("kind = \"tcp\"\nproxy = true")).unwrap_err();
        assert!(err.contains("proxy"), "{err}");
    }

    #[test]
    fn auth_and_acl_errors_name_their_key() {
        let err = listeners_error("[auth]\npassword_file = \"/nonexistent/passwd\"\n");
        assert!(err.contains("auth.password_file"), "{err}");
        let err = listeners_error("[auth.jwt]\nhs256_secret = \"short\"\n");
        assert!(err.contains("auth.jwt.hs256_secret"), "{err}");
        let err = listeners_error(
            "[[acl.rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"a/#/b\"\n",
        );
        assert!(err.contains("acl.rules[0].topic"), "{err}");
        let err = Config::from_toml("[acl]\nno_match = \"sometimes\"\n").unwrap_err();
        assert!(err.contains("no_match"), "{err}");
    }

    #[test]
    fn node_id_from_a_statefulset_hostname() {
        assert_eq!(node_id_from_hostname("fleetmq-0"), Some(1));
        assert_eq!(node_id_from_hostname("my-broker-12"), Some(13));
        assert_eq!(node_id_from_hostname("fleetmq"), None);
        assert_eq!(node_id_from_hostname("fleetmq-x"), None);
    }
}
