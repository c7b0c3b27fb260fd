//! The JSON API under `/api/v1`, as docs/openapi.yaml describes it (the tests check
//! the server against that file). Errors are `{"error": "..."}` with the status that
//! says what went wrong: 400 bad input, 404 nothing there, 409 conflicts with the
//! cluster's state, 503 the node cannot answer now.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use fleetmq_auth::AclConfig;
use fleetmq_broker::{AdminRequest, Event, SessionView, SubscriptionView};
use fleetmq_cluster::network::admin as cluster_admin;
use fleetmq_cluster::TypeConfig;
use fleetmq_codec::{ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};
use fleetmq_rpc::peer as pb;
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_topic::{validate_topic_name, TopicFilter};
use openraft::Raft;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::AdminState;
use crate::clients::ConnectedClient;
use crate::rules::{parse_setting, NodeRules, RulesSource, ACL_SETTING};

type Shared = State<Arc<AdminState>>;

/// How long the router may take to answer.
const ROUTER_ANSWER: Duration = Duration::from_secs(5);
/// How long another member may take to say how it is.
const MEMBER_STATUS: Duration = Duration::from_secs(2);
/// A membership change waits for a new member to catch up, which the leader bounds.
const MEMBERSHIP_CHANGE: Duration =
    Duration::from_secs(cluster_admin::ADD_MEMBER_CATCH_UP_TIMEOUT.as_secs() + 30);
const DEFAULT_LIMIT: usize = 100;
/// The longest topic or filter the API takes, in characters: percent-encoded, any
/// such string fits in a URI (hyper takes 65,534 bytes).
const MAX_API_TOPIC: usize = 4096;
const MAX_LIMIT: usize = 10_000;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/status", get(status))
        .route("/members", get(members).post(add_member))
        .route("/members/{id}", delete(remove_member))
        .route("/members/{id}/drain", post(drain_member))
        .route("/drain", post(drain))
        .route("/clients", get(clients))
        .route("/clients/{client_id}", get(client).delete(kick))
        .route("/sessions/{client_id}", get(session))
        .route("/subscriptions", get(subscriptions))
        .route("/retained", get(retained).delete(delete_retained))
        .route("/acl", get(acl).put(set_acl).delete(clear_acl))
        .route("/auth/reload", post(reload_auth))
}

/// An error answer: `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// A gRPC status from the cluster layer, as HTTP.
    fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(code, status.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

/// `limit` checked: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
fn limit(asked: Option<usize>) -> Result<usize, ApiError> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}, not {n}"
        ))),
    }
}

fn api_topic_length(what: &str, text: &str) -> Result<(), ApiError> {
    if text.chars().count() > MAX_API_TOPIC {
        return Err(ApiError::bad_request(format!(
            "the API takes a {what} of at most {MAX_API_TOPIC} characters"
        )));
    }
    Ok(())
}

/// Sends the router a request and waits for its answer.
async fn ask_router<T>(
    state: &AdminState,
    make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let busy = || ApiError::unavailable("the broker core did not answer in time");
    state
        .events
        .send_timeout(Event::Admin(make(tx)), ROUTER_ANSWER)
        .await
        .map_err(|_| busy())?;
    match tokio::time::timeout(ROUTER_ANSWER, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(busy()),
    }
}

fn protocol_name(p: ProtocolVersion) -> &'static str {
    match p {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

fn qos_number(q: QoS) -> u8 {
    q as u8
}

// ---- cluster ------------------------------------------------------------------------

fn raft_of(state: &AdminState) -> Result<&Raft<TypeConfig>, ApiError> {
    state.raft.as_ref().map(|r| &r.group).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "this node runs without a cluster (storage.engine = \"memory\")",
        )
    })
}

fn role_name(role: i32) -> &'static str {
    match pb::MemberRole::try_from(role) {
        Ok(pb::MemberRole::Leader) => "leader",
        Ok(pb::MemberRole::Voter) => "voter",
        Ok(pb::MemberRole::Learner) => "learner",
        _ => "unknown",
    }
}

fn state_name(state: i32) -> &'static str {
    match pb::NodeState::try_from(state) {
        Ok(pb::NodeState::Leader) => "leader",
        Ok(pb::NodeState::Follower) => "follower",
        Ok(pb::NodeState::Candidate) => "candidate",
        Ok(pb::NodeState::Learner) => "learner",
        Ok(pb::NodeState::Shutdown) => "shutdown",
        _ => "unknown",
    }
}

fn members_json(members: &[pb::Member]) -> Value {
    members
        .iter()
        .map(|m| json!({ "id": m.id, "address": m.address, "role": role_name(m.role) }))
        .collect()
}

async fn status(State(state): Shared) -> ApiResult {
    let connections = state.clients.len();
    let draining = state.drain.order().is_some();
    let not_ready = super::not_ready(&state);
    let mut value = match state.raft.as_ref().map(|r| &r.group) {
        Some(raft) => {
            let s = cluster_admin::cluster_status(raft);
            json!({
                "node_id": s.node_id,
                "state": state_name(s.state),
                "leader_id": s.leader_id,
                "term": s.term,
                "last_log_index": s.last_log_index,
                "last_applied": s.last_applied,
                "members": members_json(&s.members),
            })
        }
        None => json!({
            "node_id": state.node_id,
            "state": "standalone",
            "leader_id": null,
            "term": 0,
            "last_log_index": null,
            "last_applied": null,
            "members": [],
        }),
    };
    value["ready"] = json!(not_ready.is_none());
    value["not_ready"] = json!(not_ready);
    value["draining"] = json!(draining);
    value["connections"] = json!(connections);
    ok(value)
}

async fn connect_member(
    addr: &str,
    timeout: Duration,
) -> Result<PeerServiceClient<Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {addr}: {e}"))?;
    Ok(PeerServiceClient::new(channel))
}

/// Every member with its role, and how each says it is (asked over its gRPC port).
async fn members(State(state): Shared) -> ApiResult {
    let raft = raft_of(&state)?;
    let status = cluster_admin::cluster_status(raft);
    let mut out = Vec::with_capacity(status.members.len());
    for m in &status.members {
        let view = if m.id == status.node_id {
            Ok(status.clone())
        } else {
            match connect_member(&m.address, MEMBER_STATUS).await {
                Ok(mut client) => client
                    .cluster_status(pb::Empty {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| e.message().to_string()),
                Err(e) => Err(e),
            }
        };
        let mut value = json!({ "id": m.id, "address": m.address, "role": role_name(m.role) });
        match view {
            Ok(v) => {
                value["reachable"] = json!(true);
                value["state"] = json!(state_name(v.state));
                value["term"] = json!(v.term);
                value["last_log_index"] = json!(v.last_log_index);
                value["last_applied"] = json!(v.last_applied);
            }
            Err(e) => {
                value["reachable"] = json!(false);
                value["error"] = json!(e);
            }
        }
        out.push(value);
    }
    ok(json!({ "leader_id": status.leader_id, "members": out }))
}

/// Runs a membership change here, or at the leader when this node is not it.
async fn through_leader<F, Fut>(raft: &Raft<TypeConfig>, here: Fut, there: F) -> ApiResult
where
    Fut: Future<Output = Result<pb::MembershipReply, tonic::Status>>,
    F: AsyncFnOnce(PeerServiceClient<Channel>) -> Result<pb::MembershipReply, tonic::Status>,
{
    let status = match here.await {
        Ok(reply) => return membership_json(&reply),
        Err(status) => status,
    };
    let (_, leader_addr) = cluster_admin::leader_hint(&status);
    let own = cluster_admin::cluster_status(raft)
        .members
        .iter()
        .find(|m| m.id == raft.metrics().borrow().id)
        .map(|m| m.address.clone());
    let leader_addr = match leader_addr {
        Some(addr) if status.code() == tonic::Code::Unavailable && Some(&addr) != own.as_ref() => {
            addr
        }
        _ => return Err(ApiError::from_status(&status)),
    };
    let client = connect_member(&leader_addr, MEMBERSHIP_CHANGE)
        .await
        .map_err(ApiError::unavailable)?;
    match there(client).await {
        Ok(reply) => membership_json(&reply),
        Err(status) => Err(ApiError::from_status(&status)),
    }
}

fn membership_json(reply: &pb::MembershipReply) -> ApiResult {
    ok(json!({
        "leader_id": reply.leader_id,
        "log_index": reply.log_index,
        "members": members_json(&reply.members),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    id: u64,
    address: String,
}

async fn add_member(
    State(state): Shared,
    body: Result<Json<NewMember>, JsonRejection>,
) -> ApiResult {
    let Json(NewMember { id, address }) = body?;
    let raft = raft_of(&state)?;
    let request = pb::AddMemberRequest {
        node_id: id,
        address,
    };
    let forwarded = request.clone();
    through_leader(
        raft,
        cluster_admin::add_member(raft, request),
        async move |mut client| client.add_member(forwarded).await.map(|r| r.into_inner()),
    )
    .await
}

async fn remove_member(State(state): Shared, id: Result<Path<u64>, PathRejection>) -> ApiResult {
    let Path(node_id) = id?;
    let raft = raft_of(&state)?;
    let request = pb::RemoveMemberRequest { node_id };
    through_leader(
        raft,
        cluster_admin::remove_member(raft, request),
        async move |mut client| client.remove_member(request).await.map(|r| r.into_inner()),
    )
    .await
}

fn drained(started: bool, node_id: u64) -> ApiResult {
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "node_id": node_id, "draining": true, "started": started })),
    )
        .into_response())
}

/// Starts draining this node.
async fn drain(State(state): Shared) -> ApiResult {
    let started = state.drain.start("admin api");
    drained(started, state.node_id)
}

/// Starts draining member `id`, this node or another.
async fn drain_member(State(state): Shared, id: Result<Path<u64>, PathRejection>) -> ApiResult {
    let Path(id) = id?;
    if id == state.node_id {
        return drain(State(state)).await;
    }
    let raft = raft_of(&state)?;
    let status = cluster_admin::cluster_status(raft);
    let Some(member) = status.members.iter().find(|m| m.id == id) else {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    };
    let mut client = connect_member(&member.address, MEMBER_STATUS)
        .await
        .map_err(ApiError::unavailable)?;
    let reply = client
        .drain(pb::Empty {})
        .await
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
    drained(reply.started, id)
}

// ---- clients and sessions -------------------------------------------------------------

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

fn client_json(c: &ConnectedClient) -> Value {
    json!({
        "client_id": c.client_id,
        "username": c.username,
        "peer": c.peer.to_string(),
        "listener": c.listener,
        "protocol": protocol_name(c.protocol),
        "keep_alive": c.keep_alive_s,
        "session_expiry_interval": c.session_expiry_s,
        "connected_at_ms": c.connected_at_ms,
    })
}

/// The clients connected to this node.
async fn clients(State(state): Shared, q: Result<Query<ListQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    let list = state.clients.list(limit(q.limit)?);
    let values: Vec<Value> = list.iter().map(client_json).collect();
    ok(json!({ "node_id": state.node_id, "clients": values }))
}

async fn client(State(state): Shared, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let Path(id) = id?;
    match state.clients.get(&id) {
        Some(c) => ok(client_json(&c)),
        None => Err(not_here(&state, &id).await),
    }
}

/// Closes the client's connection with DISCONNECT 0x98 (its session stays), on this
/// node or, through its PeerService, on the node it is connected to.
async fn kick(State(state): Shared, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let Path(id) = id?;
    if state.clients.kick(&id) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let Some(node) = connected_elsewhere(&state, &id).await else {
        return Err(not_here(&state, &id).await);
    };
    let raft = raft_of(&state)?;
    let status = cluster_admin::cluster_status(raft);
    let Some(member) = status.members.iter().find(|m| m.id == node) else {
        return Err(not_here(&state, &id).await);
    };
    let mut client = connect_member(&member.address, MEMBER_STATUS)
        .await
        .map_err(ApiError::unavailable)?;
    let reply = client
        .kick(pb::KickRequest {
            client_id: id.clone(),
        })
        .await
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
    if reply.kicked {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Gone from that node meanwhile (reconnected elsewhere, or left).
    Err(not_here(&state, &id).await)
}

/// The other node the client is connected to, as the replicated session registry says.
async fn connected_elsewhere(state: &AdminState, client_id: &str) -> Option<u64> {
    ask_router(state, |reply| AdminRequest::Session {
        client_id: client_id.to_string(),
        reply,
    })
    .await
    .ok()
    .flatten()
    .filter(|s| s.node != state.node_id && s.connected)
    .map(|s| s.node)
}

/// 404 for a client not connected here, naming the node holding its session if any.
async fn not_here(state: &AdminState, client_id: &str) -> ApiError {
    let elsewhere = connected_elsewhere(state, client_id).await;
    let message = match elsewhere {
        Some(node) => format!(
            "client {client_id:?} is not connected to node {}; it is connected to node {node}",
            state.node_id
        ),
        None => format!(
            "client {client_id:?} is not connected to node {}",
            state.node_id
        ),
    };
    ApiError::not_found(message)
}

fn retain_handling_name(r: RetainHandling) -> &'static str {
    match r {
        RetainHandling::SendAtSubscribe => "send",
        RetainHandling::SendIfNewSubscription => "send-if-new",
        RetainHandling::DoNotSend => "do-not-send",
    }
}

fn subscription_json(s: &SubscriptionView) -> Value {
    let options = s.options.as_ref();
    json!({
        "client_id": s.client_id,
        "node": s.node,
        "filter": s.filter,
        "qos": options.map(|o: &SubscriptionOptions| qos_number(o.qos)),
        "no_local": options.map(|o| o.no_local),
        "retain_as_published": options.map(|o| o.retain_as_published),
        "retain_handling": options.map(|o| retain_handling_name(o.retain_handling)),
        "subscription_id": s.subscription_id,
    })
}

fn session_json(s: &SessionView) -> Value {
    let d = s.detail.as_ref();
    json!({
        "client_id": s.client_id,
        "node": s.node,
        "connected": s.connected,
        "persistent": s.persistent,
        "protocol": d.map(|d| protocol_name(d.protocol)),
        "expiry_interval": d.map(|d| d.expiry_interval),
        "queued": d.map(|d| d.queued),
        "inflight": d.map(|d| d.inflight),
        "incoming_qos2": d.map(|d| d.incoming_qos2),
        "will_topic": d.and_then(|d| d.will_topic.as_deref()),
        "disconnected_at_ms": d.and_then(|d| d.disconnected_at_ms),
        "subscriptions": s.subscriptions.iter().map(subscription_json).collect::<Vec<_>>(),
    })
}

/// One session, wherever in the cluster it is held (the details only where it is).
async fn session(State(state): Shared, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let Path(client_id) = id?;
    let wanted = client_id.clone();
    match ask_router(&state, |reply| AdminRequest::Session {
        client_id: wanted,
        reply,
    })
    .await?
    {
        Some(view) => ok(session_json(&view)),
        None => Err(ApiError::not_found(format!(
            "no session for client {client_id:?}"
        ))),
    }
}

#[derive(Deserialize)]
struct SubscriptionsQuery {
    client_id: Option<String>,
    limit: Option<usize>,
}

async fn subscriptions(
    State(state): Shared,
    q: Result<Query<SubscriptionsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let limit = limit(q.limit)?;
    let found = ask_router(&state, |reply| AdminRequest::Subscriptions {
        client_id: q.client_id,
        limit,
        reply,
    })
    .await?;
    let values: Vec<Value> = found.iter().map(subscription_json).collect();
    ok(json!({ "subscriptions": values }))
}

// ---- retained -------------------------------------------------------------------------

#[derive(Deserialize)]
struct RetainedQuery {
    filter: Option<String>,
    limit: Option<usize>,
}

async fn retained(
    State(state): Shared,
    q: Result<Query<RetainedQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let limit = limit(q.limit)?;
    let text = q.filter.unwrap_or_else(|| "#".to_string());
    api_topic_length("filter", &text)?;
    let filter = TopicFilter::parse(&text)
        .map_err(|e| ApiError::bad_request(format!("filter {text:?}: {e}")))?;
    let found = ask_router(&state, |reply| AdminRequest::Retained {
        filter,
        limit,
        reply,
    })
    .await?;
    let base64 = base64::engine::general_purpose::STANDARD;
    let values: Vec<Value> = found
        .iter()
        .map(|r| {
            json!({
                "topic": r.topic,
                "qos": qos_number(r.qos),
                "payload_bytes": r.payload.len(),
                "payload_utf8": std::str::from_utf8(&r.payload).ok(),
                "payload_base64": base64.encode(&r.payload),
            })
        })
        .collect();
    ok(json!({ "retained": values }))
}

#[derive(Deserialize)]
struct TopicQuery {
    topic: String,
}

/// Deletes the retained message of `topic` in the whole cluster; answers once stored.
async fn delete_retained(
    State(state): Shared,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult {
    let Query(TopicQuery { topic }) = q?;
    api_topic_length("topic", &topic)?;
    validate_topic_name(&topic)
        .map_err(|e| ApiError::bad_request(format!("topic {topic:?}: {e}")))?;
    let (done_tx, done_rx) = oneshot::channel();
    let topic: Arc<str> = Arc::from(topic);
    let existed = ask_router(&state, |existed| AdminRequest::DeleteRetained {
        topic: topic.clone(),
        existed,
        done: done_tx,
    })
    .await?;
    if !existed {
        return Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )));
    }
    match tokio::time::timeout(ROUTER_ANSWER, done_rx).await {
        Ok(Ok(())) => Ok(StatusCode::NO_CONTENT.into_response()),
        _ => Err(ApiError::unavailable(
            "the deletion was not stored in time (no quorum?)",
        )),
    }
}

// ---- access rules -----------------------------------------------------------------------

fn rules_json(rules: &NodeRules) -> Value {
    let mut value = serde_json::to_value(&rules.config).unwrap_or_else(|_| json!({}));
    value["source"] = json!(match rules.source {
        RulesSource::File => "file",
        RulesSource::Cluster => "cluster",
    });
    value
}

/// The access rules in force on this node and where they come from.
async fn acl(State(state): Shared) -> ApiResult {
    let rules = state.rules.borrow().clone();
    ok(rules_json(&rules))
}

/// Replicates `wanted` as the cluster's access rules (`None`: back to each node's
/// file) and answers with the rules in force here once this node follows them.
async fn put_rules(state: &AdminState, wanted: Option<AclConfig>) -> ApiResult {
    let value = match &wanted {
        Some(config) => Some(Bytes::from(serde_json::to_vec(config).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })?)),
        None => None,
    };
    ask_router(state, |done| AdminRequest::PutSetting {
        name: ACL_SETTING.to_string(),
        value,
        done,
    })
    .await
    .map_err(|_| ApiError::unavailable("the rules were not stored in time (no quorum?)"))?;
    // The rules task swaps them in right after the router's change.
    let mut following = state.rules.clone();
    let in_force = |now: &Arc<NodeRules>| match &wanted {
        Some(config) => now.source == RulesSource::Cluster && now.config == *config,
        None => now.source == RulesSource::File,
    };
    let _ = tokio::time::timeout(ROUTER_ANSWER, following.wait_for(in_force)).await;
    let rules = state.rules.borrow().clone();
    ok(rules_json(&rules))
}

/// Sets the cluster's access rules: the body is `[acl]` as JSON.
async fn set_acl(State(state): Shared, body: Result<Json<Value>, JsonRejection>) -> ApiResult {
    let Json(body) = body?;
    let text = body.to_string();
    let (config, _) = parse_setting(text.as_bytes()).map_err(ApiError::bad_request)?;
    for rule in &config.rules {
        api_topic_length("rule's topic", &rule.topic)?;
    }
    put_rules(&state, Some(config)).await
}

/// Clears the cluster's access rules: every node goes back to its file's.
async fn clear_acl(State(state): Shared) -> ApiResult {
    put_rules(&state, None).await
}

/// Reads the password file again.
async fn reload_auth(State(state): Shared) -> ApiResult {
    match crate::access::reload_passwords(&state.auth, "admin api") {
        Ok(Some(users)) => ok(json!({ "users": users })),
        Ok(None) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "this node has no auth.password_file to reload",
        )),
        Err(error) => Err(ApiError::new(StatusCode::CONFLICT, error.to_string())),
    }
}
