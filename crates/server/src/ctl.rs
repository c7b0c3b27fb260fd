//! `fleetmq ctl`: calls a node's admin API (`/api/v1`, docs/openapi.yaml) and prints
//! the answer for people (default) or as the API's JSON (`--output json`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// How long one call may take; a membership change waits for a new member to catch
/// up, which the leader bounds at a minute.
const CALL_TIMEOUT: Duration = Duration::from_secs(100);

/// Where and how to reach the admin API.
pub struct Api {
    /// host:port of the node's admin listener.
    pub admin: String,
    pub token: Option<String>,
    pub json: bool,
}

/// An answer: the status and the JSON body (`null` when there is none).
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let admin = &self.admin;
        let stream = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(admin),
        )
        .await
        .map_err(|_| anyhow!("no answer from {admin} within 3 s"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot reach the node's admin API at {admin} (--admin)"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {admin}"))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, admin.as_str());
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .context("building the request")?;
        let response = tokio::time::timeout(CALL_TIMEOUT, async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        })
        .await
        .map_err(|_| anyhow!("{method} {path} at {admin}: no answer within {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {path} at {admin}"))?;
        let (status, bytes) = response;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }))
        };
        Ok(Answer { status, body })
    }

    /// Calls and returns the JSON of a successful answer; a failed one is an error
    /// naming what was asked, of whom, and the node's reason.
    async fn must(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let answer = self.call(method, path, body).await?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        let reason = answer.body["error"].as_str().unwrap_or("no reason given");
        Err(anyhow!(
            "{what} through {} failed ({}): {reason}",
            self.admin,
            answer.status
        ))
    }

    /// The JSON as is, or `human` made from it.
    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) -> String {
        if self.json {
            format!("{value:#}\n")
        } else {
            human(value)
        }
    }
}

/// `path?key=value&...` with the values percent-encoded; absent values left out.
fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a path
/// segment or a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn members_text(members: &Value) -> String {
    members
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "  {:<4} {:<24} {}\n",
                text(&m["id"]),
                text(&m["address"]),
                text(&m["role"])
            )
        })
        .collect()
}

pub async fn status(api: &Api) -> anyhow::Result<String> {
    let v = api
        .must("status", Method::GET, "/api/v1/status", None)
        .await?;
    Ok(api.print(&v, |v| {
        let mut out = format!(
            "node {} is {} (term {})\nleader: {}\nlast log index: {}, last applied: {}\n\
             ready: {}{}\nclients connected: {}\nmembers:\n",
            text(&v["node_id"]),
            text(&v["state"]),
            text(&v["term"]),
            text(&v["leader_id"]),
            text(&v["last_log_index"]),
            text(&v["last_applied"]),
            if v["ready"] == json!(true) {
                "yes"
            } else {
                "no"
            },
            v["not_ready"]
                .as_str()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default(),
            text(&v["connections"]),
        );
        out.push_str(&members_text(&v["members"]));
        out
    }))
}

pub async fn members_list(api: &Api) -> anyhow::Result<String> {
    let v = api
        .must("listing members", Method::GET, "/api/v1/members", None)
        .await?;
    Ok(api.print(&v, |v| {
        let mut out = format!(
            "leader: {}\nmembers:\n  {:<4} {:<24} {:<8} {:<10} {:>6} {:>10}\n",
            text(&v["leader_id"]),
            "id",
            "address",
            "role",
            "state",
            "term",
            "applied"
        );
        for m in v["members"].as_array().into_iter().flatten() {
            let (state, term, applied) = if m["reachable"] == json!(true) {
                (
                    text(&m["state"]),
                    text(&m["term"]),
                    text(&m["last_applied"]),
                )
            } else {
                ("unreachable".into(), "-".into(), "-".into())
            };
            out.push_str(&format!(
                "  {:<4} {:<24} {:<8} {:<10} {:>6} {:>10}\n",
                text(&m["id"]),
                text(&m["address"]),
                text(&m["role"]),
                state,
                term,
                applied
            ));
        }
        out
    }))
}

fn membership_text(done: &str, v: &Value) -> String {
    format!(
        "{done} (log index {})\nleader: {}\nmembers:\n{}",
        text(&v["log_index"]),
        text(&v["leader_id"]),
        members_text(&v["members"])
    )
}

pub async fn members_add(api: &Api, id: u64, address: &str) -> anyhow::Result<String> {
    let what = format!("adding node {id} at {address}");
    let body = json!({ "id": id, "address": address });
    let v = api
        .must(&what, Method::POST, "/api/v1/members", Some(body))
        .await?;
    Ok(api.print(&v, |v| {
        membership_text(&format!("node {id} added at {address}"), v)
    }))
}

pub async fn members_remove(api: &Api, id: u64) -> anyhow::Result<String> {
    let what = format!("removing node {id}");
    let path = format!("/api/v1/members/{id}");
    let v = api.must(&what, Method::DELETE, &path, None).await?;
    Ok(api.print(&v, |v| membership_text(&format!("node {id} removed"), v)))
}

fn drain_text(v: &Value) -> String {
    if v["started"] == json!(true) {
        format!("node {} is draining\n", text(&v["node_id"]))
    } else {
        format!("node {} was already draining\n", text(&v["node_id"]))
    }
}

pub async fn members_drain(api: &Api, id: u64) -> anyhow::Result<String> {
    let what = format!("draining node {id}");
    let path = format!("/api/v1/members/{id}/drain");
    let v = api.must(&what, Method::POST, &path, None).await?;
    Ok(api.print(&v, drain_text))
}

/// Drains the node ctl talks to; with `wait`, returns once it has stopped answering
/// (its process exited), at most `timeout` later.
pub async fn drain(api: &Api, wait: Option<Duration>) -> anyhow::Result<String> {
    let v = api
        .must("draining", Method::POST, "/api/v1/drain", None)
        .await?;
    let mut out = api.print(&v, drain_text);
    if let Some(timeout) = wait {
        let deadline = Instant::now() + timeout;
        loop {
            if api.call(Method::GET, "/api/v1/status", None).await.is_err() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} still answers {timeout:?} after the drain began",
                text(&v["node_id"])
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !api.json {
            out.push_str("drained and stopped\n");
        }
    }
    Ok(out)
}

fn client_line(c: &Value) -> String {
    format!(
        "  {:<32} {:<16} {:<22} {:<8} {:<6} {}\n",
        text(&c["client_id"]),
        text(&c["username"]),
        text(&c["peer"]),
        text(&c["listener"]),
        text(&c["protocol"]),
        text(&c["keep_alive"]),
    )
}

pub async fn clients_list(api: &Api, limit: Option<usize>) -> anyhow::Result<String> {
    let path = with_query(
        "/api/v1/clients",
        &[("limit", limit.map(|l| l.to_string()))],
    );
    let v = api
        .must("listing clients", Method::GET, &path, None)
        .await?;
    Ok(api.print(&v, |v| {
        let list = v["clients"].as_array().cloned().unwrap_or_default();
        let mut out = format!(
            "{} clients connected to node {}\n  {:<32} {:<16} {:<22} {:<8} {:<6} {}\n",
            list.len(),
            text(&v["node_id"]),
            "client id",
            "username",
            "peer",
            "listener",
            "mqtt",
            "keep alive"
        );
        out.extend(list.iter().map(client_line));
        out
    }))
}

pub async fn clients_show(api: &Api, client_id: &str) -> anyhow::Result<String> {
    let path = format!("/api/v1/clients/{}", encode(client_id));
    let what = format!("showing client {client_id:?}");
    let v = api.must(&what, Method::GET, &path, None).await?;
    Ok(api.print(&v, |v| {
        format!(
            "client {}\n  username: {}\n  peer: {}\n  listener: {}\n  protocol: {}\n  \
             keep alive: {} s\n  session expiry interval: {} s\n  connected at (unix ms): {}\n",
            text(&v["client_id"]),
            text(&v["username"]),
            text(&v["peer"]),
            text(&v["listener"]),
            text(&v["protocol"]),
            text(&v["keep_alive"]),
            text(&v["session_expiry_interval"]),
            text(&v["connected_at_ms"]),
        )
    }))
}

pub async fn clients_kick(api: &Api, client_id: &str) -> anyhow::Result<String> {
    let path = format!("/api/v1/clients/{}", encode(client_id));
    let what = format!("kicking client {client_id:?}");
    api.must(&what, Method::DELETE, &path, None).await?;
    let v = json!({ "client_id": client_id, "kicked": true });
    Ok(api.print(&v, |_| {
        format!("client {client_id:?} disconnected (0x98); its session stays\n")
    }))
}

fn subscription_line(s: &Value) -> String {
    format!(
        "  {:<32} {:<40} {:<4} {}\n",
        text(&s["client_id"]),
        text(&s["filter"]),
        text(&s["qos"]),
        text(&s["node"]),
    )
}

pub async fn session_show(api: &Api, client_id: &str) -> anyhow::Result<String> {
    let path = format!("/api/v1/sessions/{}", encode(client_id));
    let what = format!("showing the session of {client_id:?}");
    let v = api.must(&what, Method::GET, &path, None).await?;
    Ok(api.print(&v, |v| {
        let mut out = format!(
            "session {} on node {}\n  connected: {}\n  persistent: {}\n",
            text(&v["client_id"]),
            text(&v["node"]),
            text(&v["connected"]),
            text(&v["persistent"]),
        );
        if !v["protocol"].is_null() {
            out.push_str(&format!(
                "  protocol: {}\n  expiry interval: {} s\n  queued: {}\n  inflight: {}\n  \
                 QoS 2 received, not released: {}\n  will topic: {}\n",
                text(&v["protocol"]),
                text(&v["expiry_interval"]),
                text(&v["queued"]),
                text(&v["inflight"]),
                text(&v["incoming_qos2"]),
                text(&v["will_topic"]),
            ));
        }
        out.push_str("  subscriptions:\n");
        out.extend(
            v["subscriptions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| format!("    {:<40} qos {}\n", text(&s["filter"]), text(&s["qos"]))),
        );
        out
    }))
}

pub async fn subscriptions(
    api: &Api,
    client_id: Option<String>,
    limit: Option<usize>,
) -> anyhow::Result<String> {
    let path = with_query(
        "/api/v1/subscriptions",
        &[
            ("client_id", client_id),
            ("limit", limit.map(|l| l.to_string())),
        ],
    );
    let v = api
        .must("listing subscriptions", Method::GET, &path, None)
        .await?;
    Ok(api.print(&v, |v| {
        let mut out = format!(
            "  {:<32} {:<40} {:<4} {}\n",
            "client id", "filter", "qos", "node"
        );
        out.extend(
            v["subscriptions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(subscription_line),
        );
        out
    }))
}

pub async fn retained_list(
    api: &Api,
    filter: Option<String>,
    limit: Option<usize>,
) -> anyhow::Result<String> {
    let path = with_query(
        "/api/v1/retained",
        &[("filter", filter), ("limit", limit.map(|l| l.to_string()))],
    );
    let v = api
        .must("listing retained messages", Method::GET, &path, None)
        .await?;
    Ok(api.print(&v, |v| {
        let mut out = format!(
            "  {:<40} {:<4} {:>8}  {}\n",
            "topic", "qos", "bytes", "payload"
        );
        for r in v["retained"].as_array().into_iter().flatten() {
            let payload = match r["payload_utf8"].as_str() {
                Some(s) if s.chars().count() > 40 => {
                    format!("{}…", s.chars().take(40).collect::<String>())
                }
                Some(s) => s.to_string(),
                None => "(binary)".to_string(),
            };
            out.push_str(&format!(
                "  {:<40} {:<4} {:>8}  {payload}\n",
                text(&r["topic"]),
                text(&r["qos"]),
                text(&r["payload_bytes"]),
            ));
        }
        out
    }))
}

pub async fn retained_delete(api: &Api, topic: &str) -> anyhow::Result<String> {
    let path = with_query("/api/v1/retained", &[("topic", Some(topic.to_string()))]);
    let what = format!("deleting the retained message on {topic:?}");
    api.must(&what, Method::DELETE, &path, None).await?;
    let v = json!({ "topic": topic, "deleted": true });
    Ok(api.print(&v, |_| format!("retained message on {topic:?} deleted\n")))
}

fn rules_text(v: &Value) -> String {
    let mut out = format!(
        "access rules from the {} (no match: {})\n",
        match v["source"].as_str() {
            Some("cluster") => "cluster (set at runtime)",
            _ => "node's configuration file",
        },
        text(&v["no_match"])
    );
    for (i, r) in v["rules"].as_array().into_iter().flatten().enumerate() {
        let mut only = Vec::new();
        if let Some(u) = r["username"].as_str() {
            only.push(format!("username {u}"));
        }
        if let Some(c) = r["client_id"].as_str() {
            only.push(format!("client id {c}"));
        }
        out.push_str(&format!(
            "  {:>3}. {:<5} {:<9} {}{}\n",
            i + 1,
            text(&r["permission"]),
            text(&r["action"]),
            text(&r["topic"]),
            if only.is_empty() {
                String::new()
            } else {
                format!("  (only {})", only.join(", "))
            }
        ));
    }
    out
}

pub async fn acl_show(api: &Api) -> anyhow::Result<String> {
    let v = api
        .must("showing the access rules", Method::GET, "/api/v1/acl", None)
        .await?;
    Ok(api.print(&v, rules_text))
}

/// The rules in `file`: JSON, or TOML (an `[acl]` table or its keys at the top) when
/// the name ends in `.toml`.
fn read_rules(file: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let value: Value = if file.extension().is_some_and(|e| e == "toml") {
        let table: toml::Value =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
        let table = table.get("acl").cloned().unwrap_or(table);
        serde_json::to_value(table).context("the TOML as JSON")?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?
    };
    Ok(value)
}

pub async fn acl_set(api: &Api, file: &std::path::Path) -> anyhow::Result<String> {
    let body = read_rules(file)?;
    let what = format!("setting the access rules from {}", file.display());
    let v = api
        .must(&what, Method::PUT, "/api/v1/acl", Some(body))
        .await?;
    Ok(api.print(&v, rules_text))
}

pub async fn acl_clear(api: &Api) -> anyhow::Result<String> {
    let v = api
        .must(
            "clearing the access rules",
            Method::DELETE,
            "/api/v1/acl",
            None,
        )
        .await?;
    Ok(api.print(&v, rules_text))
}

pub async fn auth_reload(api: &Api) -> anyhow::Result<String> {
    let v = api
        .must(
            "reloading the password file",
            Method::POST,
            "/api/v1/auth/reload",
            None,
        )
        .await?;
    Ok(api.print(&v, |v| {
        format!("password file reloaded: {} users\n", text(&v["users"]))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_path_segments_are_encoded() {
        assert_eq!(encode("a/b c+#"), "a%2Fb%20c%2B%23");
        assert_eq!(
            with_query("/x", &[("filter", Some("s/#".into())), ("limit", None)]),
            "/x?filter=s%2F%23"
        );
        assert_eq!(with_query("/x", &[("limit", None)]), "/x");
    }
}
