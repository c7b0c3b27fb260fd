//! `fleetmq ctl`: asks a node over its gRPC port and prints the answer for people
//! (default) or as JSON (`--output json`).

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use fleetmq_cluster::network::admin;
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_rpc::peer::{
    AddMemberRequest, ClusterStatusReply, Empty, Member, MemberRole, MembershipReply, NodeState,
    RemoveMemberRequest,
};
use serde_json::json;
use tonic::transport::Channel;

/// How long a status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a membership change may take: adding a member waits for it to catch up
/// with the log, which the leader bounds.
const MEMBERSHIP_TIMEOUT: Duration =
    Duration::from_secs(admin::ADD_MEMBER_CATCH_UP_TIMEOUT.as_secs() + 30);

fn role_name(role: i32) -> &'static str {
    match MemberRole::try_from(role) {
        Ok(MemberRole::Leader) => "leader",
        Ok(MemberRole::Voter) => "voter",
        Ok(MemberRole::Learner) => "learner",
        _ => "unknown",
    }
}

fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Leader) => "leader",
        Ok(NodeState::Follower) => "follower",
        Ok(NodeState::Candidate) => "candidate",
        Ok(NodeState::Learner) => "learner",
        Ok(NodeState::Shutdown) => "shutdown",
        _ => "unknown",
    }
}

async fn connect(grpc: &str, timeout: Duration) -> anyhow::Result<PeerServiceClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .with_context(|| format!("{grpc:?} is not a host:port address"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the node's gRPC port at {grpc} (--grpc)"))?;
    Ok(PeerServiceClient::new(channel))
}

async fn fetch_status(grpc: &str) -> anyhow::Result<ClusterStatusReply> {
    let reply = connect(grpc, STATUS_TIMEOUT)
        .await?
        .cluster_status(Empty {})
        .await
        .with_context(|| format!("cluster status from {grpc}"))?;
    Ok(reply.into_inner())
}

/// A failed call as a message naming the node, the gRPC code and the node's reason.
fn call_failed(what: &str, grpc: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} through {grpc} failed ({:?}): {}",
        status.code(),
        status.message()
    )
}

/// Calls `call` on the node at `grpc`; when that node answers UNAVAILABLE naming the
/// leader's address, calls it once more there.
async fn call_leader<T, F, Fut>(grpc: &str, what: &str, call: F) -> anyhow::Result<T>
where
    F: Fn(PeerServiceClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let status = match call(connect(grpc, MEMBERSHIP_TIMEOUT).await?).await {
        Ok(reply) => return Ok(reply.into_inner()),
        Err(status) => status,
    };
    let (leader_id, leader_addr) = admin::leader_hint(&status);
    let leader_addr = match leader_addr {
        Some(addr) if status.code() == tonic::Code::Unavailable && addr != grpc => addr,
        _ => return Err(call_failed(what, grpc, &status)),
    };
    let leader =
        leader_id.map_or_else(|| "the leader".to_owned(), |id| format!("leader node {id}"));
    let client = connect(&leader_addr, MEMBERSHIP_TIMEOUT)
        .await
        .with_context(|| format!("{grpc} is not the leader; {leader} is at {leader_addr}"))?;
    match call(client).await {
        Ok(reply) => Ok(reply.into_inner()),
        Err(status) => Err(call_failed(what, &leader_addr, &status)),
    }
}

fn members_json(members: &[Member]) -> serde_json::Value {
    members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "address": m.address,
                "role": role_name(m.role),
            })
        })
        .collect()
}

/// One line per member: id, address, role.
fn members_text(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("  {:<4} {:<24} {}\n", m.id, m.address, role_name(m.role)))
        .collect()
}

fn or_none(value: Option<u64>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// The status as a JSON value, in the shape `--output json` prints.
pub fn status_json(status: &ClusterStatusReply) -> serde_json::Value {
    json!({
        "node_id": status.node_id,
        "state": state_name(status.state),
        "leader_id": status.leader_id,
        "term": status.term,
        "last_log_index": status.last_log_index,
        "last_applied": status.last_applied,
        "members": members_json(&status.members),
    })
}

/// The status as lines for a terminal.
pub fn status_text(status: &ClusterStatusReply) -> String {
    let mut out = format!(
        "node {} is {} (term {})\nleader: {}\nlast log index: {}, last applied: {}\nmembers:\n",
        status.node_id,
        state_name(status.state),
        status.term,
        or_none(status.leader_id),
        or_none(status.last_log_index),
        or_none(status.last_applied),
    );
    out.push_str(&members_text(&status.members));
    out
}

pub async fn status(grpc: &str, json: bool) -> anyhow::Result<String> {
    let status = fetch_status(grpc).await?;
    Ok(if json {
        format!("{:#}\n", status_json(&status))
    } else {
        status_text(&status)
    })
}

/// What a member says about itself, or why it could not be asked.
async fn member_view(member: &Member) -> Result<ClusterStatusReply, String> {
    match tokio::time::timeout(Duration::from_secs(2), fetch_status(&member.address)).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("no answer within 2 s".to_string()),
    }
}

/// `ctl members list`: the members as the node at `grpc` sees them, each with its own
/// state as it reports it (asked directly, at the address the cluster knows it by).
pub async fn members_list(grpc: &str, json: bool) -> anyhow::Result<String> {
    let status = fetch_status(grpc).await?;
    let mut views = Vec::with_capacity(status.members.len());
    for member in &status.members {
        views.push(member_view(member).await);
    }
    Ok(if json {
        let members: Vec<serde_json::Value> = status
            .members
            .iter()
            .zip(&views)
            .map(|(m, view)| {
                let mut value = json!({
                    "id": m.id,
                    "address": m.address,
                    "role": role_name(m.role),
                });
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
                value
            })
            .collect();
        let value = json!({
            "leader_id": status.leader_id,
            "members": members,
        });
        format!("{value:#}\n")
    } else {
        let mut out = format!(
            "leader: {}\nmembers:\n  {:<4} {:<24} {:<8} {:<10} {:>6} {:>10}\n",
            or_none(status.leader_id),
            "id",
            "address",
            "role",
            "state",
            "term",
            "applied"
        );
        for (m, view) in status.members.iter().zip(&views) {
            let (state, term, applied) = match view {
                Ok(v) => (
                    state_name(v.state).to_string(),
                    v.term.to_string(),
                    or_none(v.last_applied),
                ),
                Err(_) => ("unreachable".to_string(), "-".into(), "-".into()),
            };
            out.push_str(&format!(
                "  {:<4} {:<24} {:<8} {:<10} {:>6} {:>10}\n",
                m.id,
                m.address,
                role_name(m.role),
                state,
                term,
                applied
            ));
        }
        out
    })
}

/// The outcome of a membership change: what happened, then the members.
fn membership_output(done: &str, reply: &MembershipReply, json: bool) -> String {
    if json {
        let value = json!({
            "leader_id": reply.leader_id,
            "log_index": reply.log_index,
            "members": members_json(&reply.members),
        });
        format!("{value:#}\n")
    } else {
        format!(
            "{done} (log index {})\nleader: {}\nmembers:\n{}",
            reply.log_index,
            or_none(reply.leader_id),
            members_text(&reply.members)
        )
    }
}

/// `ctl members add`: adds node `node_id` at `address` as a voter, through the leader.
pub async fn members_add(
    grpc: &str,
    node_id: u64,
    address: &str,
    json: bool,
) -> anyhow::Result<String> {
    let what = format!("adding node {node_id} at {address}");
    let reply = call_leader(grpc, &what, |mut client| {
        let request = AddMemberRequest {
            node_id,
            address: address.to_owned(),
        };
        async move { client.add_member(request).await }
    })
    .await?;
    Ok(membership_output(
        &format!("node {node_id} added at {address}"),
        &reply,
        json,
    ))
}

/// `ctl members remove`: removes node `node_id`, through the leader.
pub async fn members_remove(grpc: &str, node_id: u64, json: bool) -> anyhow::Result<String> {
    let what = format!("removing node {node_id}");
    let reply = call_leader(grpc, &what, |mut client| async move {
        client.remove_member(RemoveMemberRequest { node_id }).await
    })
    .await?;
    Ok(membership_output(
        &format!("node {node_id} removed"),
        &reply,
        json,
    ))
}
