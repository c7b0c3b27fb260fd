//! The `fleetmq` command: `serve` runs a node, `config check` validates a file, `ctl`
//! asks a running node about its cluster and changes its membership.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

mod access;
mod admin;
mod allocator;
mod clients;
mod config;
mod connection;
mod ctl;
mod drain;
mod limits;
mod listener;
mod overrides;
mod rules;
mod server;

use config::{Config, Override};

#[derive(Parser)]
#[command(
    name = "fleetmq",
    version,
    about = "A clustered MQTT broker that never loses a session"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no flags: one node, MQTT on 0.0.0.0:1883, data in ./data.
    Serve(ServeArgs),
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Add a user to a password file (auth.password_file), or change their password.
    /// The password is read from the terminal without echo, or as the first line of
    /// standard input when that is not a terminal.
    Passwd {
        /// The password file; created (mode 0600) when missing.
        file: PathBuf,
        username: String,
    },
    /// Ask or tell a running node, through its admin API (/api/v1).
    Ctl {
        /// The node's admin listener, host:port (its admin.listen).
        #[arg(
            long,
            env = "FLEETMQ_CTL_ADMIN",
            default_value = "127.0.0.1:8080",
            global = true
        )]
        admin: String,
        /// A file holding the API's bearer token (the node's admin.api_token_file);
        /// FLEETMQ_API_TOKEN may hold the token itself.
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// How to print the answer.
        #[arg(long, value_enum, default_value = "human", global = true)]
        output: OutputFormat,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// This node's Raft state, the leader, readiness, and every member with its role.
    Status,
    /// List, add, remove or drain the members of the cluster.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Drain this node: tell its clients to move, hand leadership over, exit.
    Drain {
        /// Return once the node has stopped (its admin API no longer answers).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// The clients connected to this node.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// A client's session, wherever in the cluster it is held.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Subscriptions in the cluster.
    Subscriptions {
        /// Only this client's.
        #[arg(long)]
        client_id: Option<String>,
        /// At most this many (1 to 10000; default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Retained messages.
    Retained {
        #[command(subcommand)]
        command: RetainedCommand,
    },
    /// Authentication: read the password file again (as SIGHUP does).
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// The access rules in force, and changing them for the whole cluster at runtime.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Read auth.password_file again on the node asked: users added or changed with
    /// `fleetmq passwd` take effect, connected clients stay.
    Reload,
}

#[derive(Subcommand)]
enum AclCommand {
    /// The rules in force on the node asked, and where they come from.
    Show,
    /// Replace the rules on every node: a JSON file ({"no_match": ..., "rules": [...]}),
    /// or TOML ending in .toml (an [acl] table as in the configuration file).
    Set { file: PathBuf },
    /// Drop the rules set at runtime: every node goes back to its file's [acl].
    Clear,
}

#[derive(Subcommand)]
enum MembersCommand {
    /// Every member with its address and role, and which is the leader.
    List,
    /// Add a node as a voter: it first catches up with the log as a learner. The node
    /// must already run, started with its own --node-id and --peers naming a member
    /// with a lower id, so that it waits to be added instead of starting a group.
    Add {
        /// The new member's node id.
        id: u64,
        /// Its gRPC address as the other members reach it, host:port.
        address: String,
    },
    /// Remove a member, voter or learner.
    Remove {
        /// The member's node id.
        id: u64,
    },
    /// Drain a member: its clients are told to move, then it exits.
    Drain {
        /// The member's node id.
        id: u64,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Clients connected to this node.
    List {
        /// At most this many (1 to 10000; default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One connected client.
    Show { client_id: String },
    /// Disconnect a client (MQTT 5: reason 0x98); its session stays.
    Kick { client_id: String },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// A session's state and subscriptions.
    Show { client_id: String },
}

#[derive(Subcommand)]
enum RetainedCommand {
    /// Retained messages whose topic matches a filter.
    List {
        /// A topic filter (default #).
        #[arg(long)]
        filter: Option<String>,
        /// At most this many (1 to 10000; default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delete the retained message of a topic, in the whole cluster.
    Delete { topic: String },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and print the problem, naming the key.
    Check { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see fleetmq.example.toml).
    #[arg(long, env = "FLEETMQ_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id, 1 to 1023.
    #[arg(long, env = "FLEETMQ_NODE_ID")]
    node_id: Option<u64>,
    /// Take the node id from the hostname's trailing ordinal plus one, as a
    /// Kubernetes StatefulSet names its pods (fleetmq-0 is node 1).
    #[arg(long, env = "FLEETMQ_NODE_ID_FROM_HOSTNAME")]
    node_id_from_hostname: bool,
    /// Where sessions and retained messages are stored.
    #[arg(long, env = "FLEETMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT TCP listener address.
    #[arg(long, env = "FLEETMQ_MQTT_LISTEN")]
    mqtt_listen: Option<String>,
    /// gRPC listener address for the other nodes.
    #[arg(long, env = "FLEETMQ_GRPC_LISTEN")]
    grpc_listen: Option<String>,
    /// Admin HTTP listener address (/healthz, /readyz, /metrics).
    #[arg(long, env = "FLEETMQ_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// A file holding the admin API's bearer token (admin.api_token_file).
    #[arg(long, env = "FLEETMQ_ADMIN_API_TOKEN_FILE")]
    admin_api_token_file: Option<PathBuf>,
    /// Cluster members as id=host:port,id=host:port.
    #[arg(long, env = "FLEETMQ_PEERS", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Storage engine: sled (durable) or memory.
    #[arg(long, env = "FLEETMQ_STORAGE")]
    storage: Option<String>,
    /// Runtime threads (worker_threads); 0: one per core.
    #[arg(long, env = "FLEETMQ_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Set any key of the file, e.g. --set mqtt.max_inflight=64 (repeatable; after the
    /// file, before FLEETMQ_<TABLE>__<KEY> variables and the flags above).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Log filter, e.g. info or fleetmq=debug.
    #[arg(
        long,
        env = "FLEETMQ_LOG",
        default_value = "info,openraft=warn,sled=warn,rustls=error"
    )]
    log_level: String,
    #[arg(long, env = "FLEETMQ_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut overrides = self
            .set
            .iter()
            .map(|arg| Override::from_flag(arg))
            .collect::<Result<Vec<_>, _>>()?;
        overrides.extend(Override::from_process_env()?);
        let mut config = Config::load(self.config.as_deref(), &overrides)?;
        if let Some(v) = self.node_id {
            config.node_id = v;
        }
        if self.node_id_from_hostname {
            let hostname = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .unwrap_or_default();
            config.node_id = config::node_id_from_hostname(&hostname).with_context(|| {
                format!("--node-id-from-hostname: hostname {hostname:?} does not end in -<ordinal>")
            })?;
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.mqtt_listen {
            config.mqtt.listen = v.clone();
        }
        if let Some(v) = &self.grpc_listen {
            config.cluster.grpc_listen = v.clone();
        }
        if let Some(v) = &self.admin_listen {
            config.admin.listen = v.clone();
        }
        if let Some(v) = &self.admin_api_token_file {
            config.admin.api_token_file = Some(v.clone());
        }
        if let Some(v) = &self.peers {
            config.cluster.peers = v.iter().filter(|p| !p.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.storage {
            config.storage.engine = v.clone();
        }
        if let Some(v) = self.worker_threads {
            config.worker_threads = v;
        }
        Ok(config)
    }
}

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?;
    // Colours only for a person at a terminal: a file or a log collector gets plain
    // text (NO_COLOR, set and not empty, turns them off at a terminal too).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, args.log_format)?;
    let config = args.config()?.validate()?;
    // Every event of this process happens on this node: the span is entered once on each
    // runtime thread (and this one) for the thread's whole life, so logs from any task,
    // spawned or not, carry node_id without each spawn having to pass it on.
    let node_span = tracing::info_span!("node", node_id = config.node_id);
    let thread_span = node_span.clone();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .thread_name("fleetmq")
        .on_thread_start(move || enter_for_this_thread(&thread_span))
        .build()
        .context("cannot start the tokio runtime")?;
    enter_for_this_thread(&node_span);
    runtime.block_on(server::run(config, stop_signal()))
}

/// Enters `span` on the calling thread until the thread ends.
fn enter_for_this_thread(span: &tracing::Span) {
    std::mem::forget(span.clone().entered());
}

fn ctl(api: ctl::Api, command: CtlCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let api = &api;
    let text = runtime.block_on(async move {
        match command {
            CtlCommand::Status => ctl::status(api).await,
            CtlCommand::Members { command } => match command {
                MembersCommand::List => ctl::members_list(api).await,
                MembersCommand::Add { id, address } => ctl::members_add(api, id, &address).await,
                MembersCommand::Remove { id } => ctl::members_remove(api, id).await,
                MembersCommand::Drain { id } => ctl::members_drain(api, id).await,
            },
            CtlCommand::Drain { wait, timeout } => {
                ctl::drain(api, wait.then(|| std::time::Duration::from_secs(timeout))).await
            }
            CtlCommand::Clients { command } => match command {
                ClientsCommand::List { limit } => ctl::clients_list(api, limit).await,
                ClientsCommand::Show { client_id } => ctl::clients_show(api, &client_id).await,
                ClientsCommand::Kick { client_id } => ctl::clients_kick(api, &client_id).await,
            },
            CtlCommand::Session {
                command: SessionCommand::Show { client_id },
            } => ctl::session_show(api, &client_id).await,
            CtlCommand::Subscriptions { client_id, limit } => {
                ctl::subscriptions(api, client_id, limit).await
            }
            CtlCommand::Retained { command } => match command {
                RetainedCommand::List { filter, limit } => {
                    ctl::retained_list(api, filter, limit).await
                }
                RetainedCommand::Delete { topic } => ctl::retained_delete(api, &topic).await,
            },
            CtlCommand::Auth {
                command: AuthCommand::Reload,
            } => ctl::auth_reload(api).await,
            CtlCommand::Acl { command } => match command {
                AclCommand::Show => ctl::acl_show(api).await,
                AclCommand::Set { file } => ctl::acl_set(api, &file).await,
                AclCommand::Clear => ctl::acl_clear(api).await,
            },
        }
    })?;
    use std::io::Write as _;
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")
}

/// The API token: the file's, else FLEETMQ_API_TOKEN's.
fn api_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}", path.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(std::env::var("FLEETMQ_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string()))
}

fn passwd(file: &std::path::Path, username: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {username}: "))?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    let hash = fleetmq_auth::password::hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
    };
    let text =
        fleetmq_auth::password::set_user(&text, username, &hash).map_err(|e| anyhow::anyhow!(e))?;
    // Written beside the file and renamed over it: a reader never sees half a file.
    let tmp = file.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out = options
            .open(&tmp)
            .with_context(|| format!("write {}", tmp.display()))?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, file).with_context(|| format!("replace {}", file.display()))?;
    eprintln!("{}: {username} set", file.display());
    Ok(())
}

/// `serve` flags and the variables that override them: (flag, variable, takes a value).
const OVERRIDDEN_BY_ENV: [(&str, &str, bool); 12] = [
    ("--config", "FLEETMQ_CONFIG", true),
    ("--node-id", "FLEETMQ_NODE_ID", true),
    (
        "--node-id-from-hostname",
        "FLEETMQ_NODE_ID_FROM_HOSTNAME",
        false,
    ),
    ("--data-dir", "FLEETMQ_DATA_DIR", true),
    ("--mqtt-listen", "FLEETMQ_MQTT_LISTEN", true),
    ("--grpc-listen", "FLEETMQ_GRPC_LISTEN", true),
    ("--admin-listen", "FLEETMQ_ADMIN_LISTEN", true),
    (
        "--admin-api-token-file",
        "FLEETMQ_ADMIN_API_TOKEN_FILE",
        true,
    ),
    ("--peers", "FLEETMQ_PEERS", true),
    ("--storage", "FLEETMQ_STORAGE", true),
    ("--log-level", "FLEETMQ_LOG", true),
    ("--log-format", "FLEETMQ_LOG_FORMAT", true),
];

/// The command line with every flag whose `FLEETMQ_*` variable is set left out, so that
/// the variable decides: variables override flags, flags override the file
/// (docs/configuration.md). clap alone would let the flag win.
fn args_with_env_precedence(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    var_is_set: impl Fn(&str) -> bool,
) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        let overridden = OVERRIDDEN_BY_ENV.iter().find(|(flag, var, _)| {
            (text == *flag || text.starts_with(&format!("{flag}="))) && var_is_set(var)
        });
        match overridden {
            Some((flag, _, true)) if text == *flag => {
                args.next();
            }
            Some(_) => {}
            None => out.push(arg),
        }
        if text == "--" {
            out.extend(args.by_ref());
        }
    }
    out
}

fn main() -> ExitCode {
    // Before the runtime starts: what it frees from then on is purged at once.
    allocator::purge_freed_memory_at_once();
    let cli = Cli::parse_from(args_with_env_precedence(std::env::args_os(), |var| {
        std::env::var_os(var).is_some()
    }));
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Ctl {
            admin,
            token_file,
            output,
            command,
        } => api_token(token_file.as_deref()).and_then(|token| {
            let api = ctl::Api {
                admin,
                token,
                json: output == OutputFormat::Json,
            };
            ctl(api, command)
        }),
        Command::Passwd { file, username } => passwd(&file, &username),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => Config::from_file(&file)
            .map_err(anyhow::Error::from)
            .and_then(|c| c.validate().map_err(anyhow::Error::from))
            .map(|_| eprintln!("{}: ok", file.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleetmq: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn args(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn a_set_variable_drops_its_flag_and_only_its_flag() {
        let set = |var: &str| var == "FLEETMQ_NODE_ID" || var == "FLEETMQ_NODE_ID_FROM_HOSTNAME";
        let kept = args_with_env_precedence(
            args("fleetmq serve --node-id 3 --data-dir d --node-id=4 --node-id-from-hostname --peers 1=a:1"),
            set,
        );
        assert_eq!(kept, args("fleetmq serve --data-dir d --peers 1=a:1"));
        let none = args_with_env_precedence(args("fleetmq serve --node-id 3"), |_| false);
        assert_eq!(none, args("fleetmq serve --node-id 3"));
    }
}
