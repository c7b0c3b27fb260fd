//! Fault injection for cluster tests, in the manner of TiKV's transport filters:
//! partition, isolate, drop a fraction of messages, delay, between chosen nodes.
//!
//! Every node's [`FaultyNetworkFactory`] shares one [`Faults`] handle, so a test changes
//! the network of the whole cluster in one call. A rule filters the requests a node sends
//! to another; the reply travels with its request, so blocking `a → b` fails both halves
//! of every RPC `a` starts towards `b`, and `b` may still reach `a`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::NetworkError;
use crate::{NodeId, TypeConfig};

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// Which requests a drop or delay rule applies to: `None` matches any node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkMatch {
    from: Option<NodeId>,
    to: Option<NodeId>,
}

impl LinkMatch {
    fn matches(&self, from: NodeId, to: NodeId) -> bool {
        self.from.is_none_or(|f| f == from) && self.to.is_none_or(|t| t == to)
    }
}

#[derive(Debug)]
struct FaultState {
    isolated: HashSet<NodeId>,
    blocked: HashSet<(NodeId, NodeId)>,
    drops: Vec<(LinkMatch, f64)>,
    delays: Vec<(LinkMatch, Duration)>,
    /// splitmix64 state: a seeded generator keeps drop patterns reproducible for a given
    /// order of requests, and spares a dependency on `rand`.
    rng: u64,
}

impl FaultState {
    fn next_fraction(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits give a uniform f64 in [0, 1).
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The faults currently applied to a cluster's network. Clones share the same state.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::with_seed(0x5EED)
    }
}

impl Faults {
    /// No faults yet; `seed` fixes the sequence of drop decisions.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(FaultState {
                isolated: HashSet::new(),
                blocked: HashSet::new(),
                drops: Vec::new(),
                delays: Vec::new(),
                rng: seed,
            })),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut FaultState) -> T) -> T {
        // A test that panicked while holding the lock left consistent sets behind.
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: NodeId) {
        self.with_state(|s| s.isolated.insert(node));
    }

    /// Blocks every request between a node of `side_a` and a node of `side_b`, both ways.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        self.with_state(|s| {
            for &a in side_a {
                for &b in side_b {
                    s.blocked.insert((a, b));
                    s.blocked.insert((b, a));
                }
            }
        });
    }

    /// Blocks the requests `from` sends to `to` (one way).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.with_state(|s| s.blocked.insert((from, to)));
    }

    /// Drops `fraction` (0.0 to 1.0) of the requests from `from` to `to`; `None` matches
    /// any node.
    pub fn drop_messages(&self, from: Option<NodeId>, to: Option<NodeId>, fraction: f64) {
        self.with_state(|s| {
            s.drops
                .push((LinkMatch { from, to }, fraction.clamp(0.0, 1.0)))
        });
    }

    /// Delays each request from `from` to `to` by `delay`; `None` matches any node. Delays
    /// of several matching rules add up.
    pub fn delay_messages(&self, from: Option<NodeId>, to: Option<NodeId>, delay: Duration) {
        self.with_state(|s| s.delays.push((LinkMatch { from, to }, delay)));
    }

    /// Removes every fault: the network is whole again.
    pub fn heal(&self) {
        self.with_state(|s| {
            s.isolated.clear();
            s.blocked.clear();
            s.drops.clear();
            s.delays.clear();
        });
    }

    fn delay(&self, from: NodeId, to: NodeId) -> Duration {
        self.with_state(|s| {
            s.delays
                .iter()
                .filter(|(link, _)| link.matches(from, to))
                .map(|(_, delay)| *delay)
                .sum()
        })
    }

    /// Whether a request from `from` to `to` gets through now.
    fn passes(&self, from: NodeId, to: NodeId) -> bool {
        self.with_state(|s| {
            if s.isolated.contains(&from)
                || s.isolated.contains(&to)
                || s.blocked.contains(&(from, to))
            {
                return false;
            }
            let fraction: f64 = s
                .drops
                .iter()
                .filter(|(link, _)| link.matches(from, to))
                .map(|(_, fraction)| *fraction)
                .fold(0.0, f64::max);
            fraction <= 0.0 || s.next_fraction() >= fraction
        })
    }

    /// Applies the faults to one request: waits out its delay, then says whether it is
    /// dropped. The check comes after the delay so a partition that starts meanwhile
    /// catches the request in flight.
    async fn admit(&self, from: NodeId, to: NodeId) -> Result<(), Unreachable> {
        let delay = self.delay(from, to);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.passes(from, to) {
            Ok(())
        } else {
            Err(Unreachable::new(&NetworkError::Injected { from, to }))
        }
    }
}

/// Wraps any network factory so that the clients it creates obey a shared [`Faults`].
#[derive(Debug, Clone)]
pub struct FaultyNetworkFactory<F> {
    node_id: NodeId,
    inner: F,
    faults: Faults,
}

impl<F> FaultyNetworkFactory<F> {
    /// Wraps `inner`, the factory of node `node_id`.
    pub fn new(node_id: NodeId, inner: F, faults: Faults) -> Self {
        Self {
            node_id,
            inner,
            faults,
        }
    }
}

impl<F: RaftNetworkFactory<TypeConfig>> RaftNetworkFactory<TypeConfig> for FaultyNetworkFactory<F> {
    type Network = FaultyNetwork<F::Network>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        FaultyNetwork {
            from: self.node_id,
            to: target,
            inner: self.inner.new_client(target, node).await,
            faults: self.faults.clone(),
        }
    }
}

/// A client that passes each request through [`Faults`] before its inner client. A
/// dropped request fails as [`RPCError::Unreachable`], as a real network failure does.
#[derive(Debug)]
pub struct FaultyNetwork<N> {
    from: NodeId,
    to: NodeId,
    inner: N,
    faults: Faults,
}

impl<N: RaftNetwork<TypeConfig>> RaftNetwork<TypeConfig> for FaultyNetwork<N> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.faults.admit(self.from, self.to).await?;
        self.inner.append_entries(rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.faults.admit(self.from, self.to).await?;
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.faults.admit(self.from, self.to).await?;
        self.inner.vote(rpc, option).await
    }

    fn backoff(&self) -> Backoff {
        self.inner.backoff()
    }
}
