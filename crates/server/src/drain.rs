//! Leaving the cluster without losing a session: what a node does on SIGTERM or a
//! drain request (`POST /api/v1/drain`, the Kubernetes preStop hook).
//!
//! The order, run by `server::run`: `/readyz` answers 503 (the load balancer stops
//! sending clients), the listeners stop accepting, every connection tells its client to
//! move (MQTT 5: DISCONNECT 0x8B, or 0x9C with the configured server reference) at its
//! own moment, `drain.rate` a second and within `drain.spread`, so the clients do not
//! all reconnect to the other nodes at once; their sessions stay in the replicated store, where the node they
//! reconnect to resumes them. Then the broker core commits its last writes, a leader
//! hands Raft leadership to its most caught-up voter, and the process exits.

use std::sync::Arc;
use std::time::Duration;

use fleetmq_codec::ReasonCode;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use crate::clients::ConnectedClients;

/// How the node drains: `[drain]` checked.
#[derive(Debug, Clone)]
pub struct DrainPlan {
    /// Connections told to move per second.
    pub rate: u32,
    /// Connections are told to move within at most this long.
    pub spread: Duration,
    /// The whole drain, connections and last writes, takes at most this long.
    pub timeout: Duration,
    /// Where MQTT 5 clients are sent (DISCONNECT 0x9C); none: 0x8B.
    pub server_reference: Option<Arc<str>>,
}

/// A drain under way, as the connections see it.
#[derive(Debug)]
pub struct DrainOrder {
    pub plan: DrainPlan,
    pub started: Instant,
    /// Connections are told to move at moments spread evenly over this long: the
    /// connections at the start at `plan.rate`, at most `plan.spread`.
    pub window: Duration,
}

impl DrainOrder {
    /// What the DISCONNECT says.
    pub fn reason_code(&self) -> ReasonCode {
        match self.plan.server_reference {
            Some(_) => ReasonCode::UseAnotherServer,
            None => ReasonCode::ServerShuttingDown,
        }
    }

    /// When connection `conn_id` tells its client to move. Connection ids are
    /// consecutive, so they are scattered by a multiplicative hash first: clients that
    /// connected together (one gateway, one rack) do not all leave together.
    pub fn deadline_for(&self, conn_id: u64) -> Instant {
        const SCATTER: u64 = 0x9E37_79B9_7F4A_7C15;
        let fraction = (conn_id.wrapping_mul(SCATTER) >> 40) as f64 / (1u64 << 24) as f64;
        self.started + self.window.mul_f64(fraction)
    }
}

impl DrainPlan {
    /// How long telling `connections` clients to move takes: at `rate`, within `spread`.
    pub fn window(&self, connections: usize) -> Duration {
        Duration::from_secs_f64(connections as f64 / f64::from(self.rate)).min(self.spread)
    }
}

/// The node's drain switch: set once, by a signal, the admin API or another node.
#[derive(Debug)]
pub struct Drain {
    plan: DrainPlan,
    /// Who is to be told.
    clients: Arc<ConnectedClients>,
    order: watch::Sender<Option<Arc<DrainOrder>>>,
}

impl Drain {
    pub fn new(plan: DrainPlan, clients: Arc<ConnectedClients>) -> Arc<Drain> {
        Arc::new(Drain {
            plan,
            clients,
            order: watch::Sender::new(None),
        })
    }

    /// Starts draining; `false` when a drain was already under way.
    pub fn start(&self, cause: &str) -> bool {
        let connections = self.clients.len();
        let window = self.plan.window(connections);
        let started = self.order.send_if_modified(|order| {
            if order.is_some() {
                return false;
            }
            *order = Some(Arc::new(DrainOrder {
                plan: self.plan.clone(),
                started: Instant::now(),
                window,
            }));
            true
        });
        if started {
            // Connections look at the order when nudged; one that registers after this
            // looks at it as it starts serving.
            self.clients.nudge_all();
            info!(
                cause,
                connections,
                window_s = window.as_secs_f64(),
                timeout_s = self.plan.timeout.as_secs_f64(),
                server_reference = self.plan.server_reference.as_deref().unwrap_or(""),
                "draining"
            );
        }
        started
    }

    /// Where clients told to move are sent (`drain.server_reference`), if configured.
    pub fn server_reference(&self) -> Option<Arc<str>> {
        self.plan.server_reference.clone()
    }

    pub fn order(&self) -> Option<Arc<DrainOrder>> {
        self.order.borrow().clone()
    }

    /// Returns once a drain has started.
    pub async fn started(&self) -> Arc<DrainOrder> {
        let mut rx = self.order.subscribe();
        loop {
            if let Some(order) = rx.borrow_and_update().clone() {
                return order;
            }
            // The sender lives in `self`: it cannot close while this borrow lives.
            let _ = rx.changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(window: Duration) -> DrainOrder {
        DrainOrder {
            window,
            plan: DrainPlan {
                rate: 1000,
                spread: window,
                timeout: Duration::from_secs(30),
                server_reference: None,
            },
            started: Instant::now(),
        }
    }

    #[tokio::test]
    async fn consecutive_connections_leave_spread_over_the_whole_window() {
        let order = order(Duration::from_secs(10));
        let mut buckets = [0usize; 10];
        for conn_id in 1..=10_000u64 {
            let after = order.deadline_for(conn_id) - order.started;
            assert!(
                after < Duration::from_secs(10),
                "{conn_id} leaves after {after:?}"
            );
            buckets[after.as_secs() as usize] += 1;
        }
        // Every second of the window takes close to a tenth of the connections.
        for (second, n) in buckets.iter().enumerate() {
            assert!(
                (800..=1200).contains(n),
                "second {second} takes {n} of 10000"
            );
        }
    }

    fn plan(server_reference: Option<&str>) -> DrainPlan {
        DrainPlan {
            rate: 1000,
            spread: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            server_reference: server_reference.map(Arc::from),
        }
    }

    #[test]
    fn the_window_follows_the_rate_within_the_spread() {
        // 500 connections at 1000 a second: half a second, well inside the spread.
        assert_eq!(plan(None).window(500), Duration::from_millis(500));
        assert_eq!(plan(None).window(100_000), Duration::from_secs(10));
        assert_eq!(plan(None).window(0), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_drain_starts_once_and_says_where_to_go() {
        let drain = Drain::new(plan(Some("other.example:1883")), Arc::default());
        assert!(drain.order().is_none());
        assert!(drain.start("test"));
        assert!(!drain.start("again"));
        let order = drain.started().await;
        assert_eq!(order.reason_code(), ReasonCode::UseAnotherServer);
        assert_eq!(
            order.window,
            Duration::ZERO,
            "no clients: nothing to spread"
        );
        assert_eq!(order.deadline_for(7), order.started);
        let quiet = Drain::new(plan(None), Arc::default());
        quiet.start("test");
        assert_eq!(
            quiet.started().await.reason_code(),
            ReasonCode::ServerShuttingDown
        );
    }
}
