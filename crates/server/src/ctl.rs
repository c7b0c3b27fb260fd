//! `fleetmq ctl`: asks a node over its gRPC port and prints the answer for people
//! (default) or as JSON (`--output json`).

use std::time::Duration;

use anyhow::Context;
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_rpc::peer::{ClusterStatusReply, Empty, MemberRole, NodeState};
use serde_json::json;

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

async fn fetch_status(grpc: &str) -> anyhow::Result<ClusterStatusReply> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .with_context(|| format!("{grpc:?} is not a host:port address"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the node's gRPC port at {grpc} (--grpc)"))?;
    let reply = PeerServiceClient::new(channel)
        .cluster_status(Empty {})
        .await
        .with_context(|| format!("cluster status from {grpc}"))?;
    Ok(reply.into_inner())
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
        "members": status.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "role": role_name(m.role),
        })).collect::<Vec<_>>(),
    })
}

/// The status as lines for a terminal.
pub fn status_text(status: &ClusterStatusReply) -> String {
    let or_none = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
    let mut out = format!(
        "node {} is {} (term {})\nleader: {}\nlast log index: {}, last applied: {}\nmembers:\n",
        status.node_id,
        state_name(status.state),
        status.term,
        or_none(status.leader_id),
        or_none(status.last_log_index),
        or_none(status.last_applied),
    );
    for m in &status.members {
        out.push_str(&format!(
            "  {:<4} {:<24} {}\n",
            m.id,
            m.address,
            role_name(m.role)
        ));
    }
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
