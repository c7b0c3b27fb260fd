//! The clients connected to this node, as the admin API lists them and kicks them.
//! The router knows sessions; who is on the other end of a socket (address,
//! listener, username) only the connection task knows, so it registers here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use fleetmq_broker::ConnectionSignal;
use fleetmq_codec::{ProtocolVersion, ReasonCode};

/// One connected client.
#[derive(Debug, Clone)]
pub struct ConnectedClient {
    pub conn_id: u64,
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    pub protocol: ProtocolVersion,
    pub keep_alive_s: u16,
    pub session_expiry_s: u32,
    pub connected_at_ms: u64,
    /// Closes the connection (the kick: 0x98, administrative action) or nudges it to
    /// look at the node's drain order, through its outbox's state.
    pub signal: ConnectionSignal,
}

/// Values boxed: a hash map's spare buckets (up to half of them) hold only the
/// key and a pointer then, not a whole client's record.
#[derive(Debug, Default)]
pub struct ConnectedClients {
    by_id: Mutex<HashMap<Arc<str>, Box<ConnectedClient>>>,
}

impl ConnectedClients {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Box<ConnectedClient>>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a client that just connected; a taken-over connection of the same
    /// client id is replaced.
    pub fn connected(&self, client: ConnectedClient) {
        self.lock()
            .insert(client.client_id.clone(), Box::new(client));
    }

    /// Forgets connection `conn_id` of `client_id`, unless a newer one replaced it.
    pub fn gone(&self, client_id: &str, conn_id: u64) {
        let mut map = self.lock();
        if map.get(client_id).is_some_and(|c| c.conn_id == conn_id) {
            map.remove(client_id);
        }
    }

    /// At most `limit` clients, in client id order.
    pub fn list(&self, limit: usize) -> Vec<ConnectedClient> {
        let mut all: Vec<ConnectedClient> = self.lock().values().map(|c| (**c).clone()).collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all.truncate(limit);
        all
    }

    pub fn get(&self, client_id: &str) -> Option<ConnectedClient> {
        self.lock().get(client_id).map(|c| (**c).clone())
    }

    /// Tells the connection of `client_id` to close; `false` when it is not here.
    pub fn kick(&self, client_id: &str) -> bool {
        match self.lock().get(client_id) {
            Some(c) => {
                c.signal.close(ReasonCode::AdministrativeAction);
                true
            }
            None => false,
        }
    }

    /// Wakes every connection to look at the node's drain order.
    pub fn nudge_all(&self) {
        for client in self.lock().values() {
            client.signal.nudge();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use fleetmq_broker::{ConnectionEnd, ConnectionHandle, Next};

    use super::*;

    fn client(id: &str, conn_id: u64) -> (ConnectedClient, ConnectionHandle, ConnectionEnd) {
        let (handle, end) = ConnectionHandle::new(conn_id, 8);
        let client = ConnectedClient {
            conn_id,
            client_id: id.into(),
            username: None,
            peer: "127.0.0.1:1".parse().unwrap(),
            listener: "mqtt".into(),
            protocol: ProtocolVersion::V5,
            keep_alive_s: 30,
            session_expiry_s: 0,
            connected_at_ms: 0,
            signal: end.signal(),
        };
        (client, handle, end)
    }

    async fn next_now(end: &mut ConnectionEnd) -> Option<Next> {
        tokio::time::timeout(std::time::Duration::from_millis(50), end.next())
            .await
            .ok()
    }

    #[test]
    fn a_taken_over_connection_leaving_does_not_remove_its_successor() {
        let clients = ConnectedClients::default();
        clients.connected(client("a", 1).0);
        clients.connected(client("a", 2).0);
        clients.gone("a", 1);
        assert_eq!(clients.get("a").map(|c| c.conn_id), Some(2));
        clients.gone("a", 2);
        assert_eq!(clients.len(), 0);
    }

    #[tokio::test]
    async fn a_kick_closes_the_connection_even_before_it_waits() {
        let clients = ConnectedClients::default();
        let (c, _router, mut end) = client("b", 1);
        clients.connected(c);
        assert!(clients.kick("b"));
        assert!(!clients.kick("nobody"));
        assert!(matches!(
            next_now(&mut end).await,
            Some(Next::Close(ReasonCode::AdministrativeAction))
        ));
    }

    #[tokio::test]
    async fn a_nudge_reaches_every_connected_client() {
        let clients = ConnectedClients::default();
        let (a, _ra, mut a_end) = client("a", 1);
        let (b, _rb, mut b_end) = client("b", 2);
        clients.connected(a);
        clients.connected(b);
        clients.nudge_all();
        assert!(matches!(next_now(&mut a_end).await, Some(Next::Nudged)));
        assert!(matches!(next_now(&mut b_end).await, Some(Next::Nudged)));
        assert!(next_now(&mut a_end).await.is_none());
    }
}
