//! Overrides of any configuration key without editing the file: `--set KEY=VALUE` flags
//! and `FLEETMQ_<TABLE>__<KEY>` environment variables (`__` between the levels, as the
//! EMQX and Spring families spell it, so keys with `_` in them stay readable).
//!
//! They are applied to the file's TOML tree before it becomes a [`Config`], so a value
//! is checked exactly as if it were written in the file, and an error names the dotted
//! key whichever of the three it came from.
//!
//! [`Config`]: crate::config::Config

use crate::config::{invalid, ConfigError};

/// Prefix of the variables that override a key; the named ones (`FLEETMQ_NODE_ID`, ...)
/// have no `__` and are read by their flags instead.
const ENV_PREFIX: &str = "FLEETMQ_";
const ENV_LEVEL: &str = "__";

/// One key set from outside the file.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted, as in the file: `mqtt.max_inflight`, `listeners.0.listen`.
    pub key: String,
    pub value: toml::Value,
    /// Where it came from, for errors: `--set` or the variable's name.
    pub source: String,
}

impl Override {
    /// `KEY=VALUE` as given to `--set`.
    pub fn from_flag(arg: &str) -> Result<Override, ConfigError> {
        let (key, raw) = arg.split_once('=').ok_or_else(|| {
            invalid(
                arg,
                "--set wants KEY=VALUE, e.g. --set mqtt.max_inflight=64",
            )
        })?;
        Override::new(key.trim(), raw, "--set".into())
    }

    /// Every `FLEETMQ_<TABLE>__<KEY>` among `vars`, in name order so that the result
    /// does not depend on the environment's order.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<Override>, ConfigError> {
        let mut found: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| names_a_key(name))
            .collect();
        found.sort();
        found
            .into_iter()
            .map(|(name, raw)| {
                let key = name[ENV_PREFIX.len()..]
                    .split(ENV_LEVEL)
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
                    .join(".");
                Override::new(&key, &raw, name)
            })
            .collect()
    }

    /// Those of this process's environment. Variables that are not Unicode are left
    /// alone (`std::env::vars` would panic on them), unless they are overrides.
    pub fn from_process_env() -> Result<Vec<Override>, ConfigError> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().map(str::to_owned) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((name, value)),
                Err(_) if names_a_key(&name) => {
                    return Err(invalid(&name, "the variable's value is not UTF-8"))
                }
                Err(_) => {}
            }
        }
        Override::from_env(vars)
    }

    fn new(key: &str, raw: &str, source: String) -> Result<Override, ConfigError> {
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(invalid(key, format!("{source}: not a dotted key")));
        }
        Ok(Override {
            key: key.to_string(),
            value: parse_value(raw),
            source,
        })
    }

    /// Sets the key in `tree` (the whole file, a table), making the tables on its way;
    /// a number names an entry of an array that is there already (`listeners.0`).
    pub fn apply(&self, tree: &mut toml::Value) -> Result<(), ConfigError> {
        let parts: Vec<&str> = self.key.split('.').collect();
        let Some((last, path)) = parts.split_last() else {
            return Err(invalid(&self.key, "empty key"));
        };
        let mut here = tree;
        for (depth, part) in path.iter().enumerate() {
            let key_so_far = parts[..=depth].join(".");
            here = step(here, part)
                .map_err(|problem| invalid(&key_so_far, format!("{}: {problem}", self.source)))?;
        }
        match here {
            toml::Value::Table(table) => {
                table.insert((*last).to_string(), self.value.clone());
            }
            toml::Value::Array(items) => {
                let slot = last
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get_mut(i))
                    .ok_or_else(|| invalid(&self.key, format!("{}: no such entry", self.source)))?;
                *slot = self.value.clone();
            }
            _ => {
                return Err(invalid(
                    &self.key,
                    format!("{}: {} is not a table", self.source, path.join(".")),
                ))
            }
        }
        Ok(())
    }
}

/// `FLEETMQ_<TABLE>__<KEY>`: a variable that overrides a key.
fn names_a_key(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .is_some_and(|rest| rest.contains(ENV_LEVEL))
}

fn step<'a>(here: &'a mut toml::Value, part: &str) -> Result<&'a mut toml::Value, String> {
    match here {
        toml::Value::Table(table) => Ok(table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))),
        toml::Value::Array(items) => {
            let len = items.len();
            part.parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| format!("no entry {part} (there are {len})"))
        }
        other => Err(format!("is a {}, not a table", other.type_str())),
    }
}

/// The value as TOML would read it (`64`, `true`, `["a", "b"]`, `"quoted"`), else the
/// text itself as a string, so addresses and names need no quotes.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}
