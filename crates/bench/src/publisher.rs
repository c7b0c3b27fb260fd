//! A QoS 1 publisher that keeps a bounded number of messages unacknowledged and
//! records, for every PUBACK, which message it acknowledged and when.
//!
//! rumqttc tells the packet id of a PUBLISH only when its event loop writes it
//! (`Outgoing::Publish(pkid)`), in the order the messages were handed to the client.
//! So the sender pushes each message's sequence number and send time to a FIFO
//! before handing it over, and the event loop pairs them with packet ids, then
//! PUBACKs with messages.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::clients;
use crate::payload::{now_us, us_of, Stamp};

/// Locks `m`, also when another task panicked while holding it (the data is counters
/// and logs, still worth reporting).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a publisher sends and how fast.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    /// Index put in every payload's stamp.
    pub index: u32,
    pub client_id: String,
    pub addr: SocketAddr,
    /// Message `seq` goes to `topics[(offset + seq) % topics.len()]`.
    pub topics: Arc<Vec<String>>,
    pub offset: usize,
    pub payload: usize,
    /// Most messages unacknowledged at once.
    pub inflight: u16,
    /// When the first message is sent.
    pub start: Instant,
    /// Time between messages; `None`: as fast as PUBACKs free room. When paced, a
    /// message's send time is when it was due, not when room was free, so that a
    /// stalled broker shows in the latency (no coordinated omission).
    pub interval: Option<Duration>,
}

impl PublisherSpec {
    /// The topic message `seq` is published to.
    pub fn topic_of(&self, seq: u64) -> &str {
        let len = self.topics.len().max(1) as u64;
        let i = (self.offset as u64 + seq) % len;
        self.topics.get(i as usize).map_or("", String::as_str)
    }
}

/// One PUBACK: the message it acknowledged, when that was sent and when the PUBACK came
/// (microseconds since [`crate::payload::origin`]).
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub seq: u64,
    pub sent_us: u64,
    pub ack_us: u64,
}

/// What a publisher did so far.
#[derive(Debug, Default)]
pub struct PubState {
    /// Messages handed to the client whose packet id is not known yet.
    fifo: VecDeque<(u64, u64)>,
    pub acks: Vec<Ack>,
    /// Messages handed to the client.
    pub sent: u64,
    /// PUBACKs for a packet id with no message waiting for it.
    pub unknown_acks: u64,
    /// Why the connection ended, when it was not stopped.
    pub error: Option<String>,
}

/// A connected, running publisher.
pub struct Publisher {
    pub spec: PublisherSpec,
    pub state: Arc<Mutex<PubState>>,
    room: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    client: AsyncClient,
    tasks: Vec<JoinHandle<()>>,
}

impl Publisher {
    /// Connects (clean session) and starts sending at `spec.start`.
    pub async fn start(spec: PublisherSpec) -> anyhow::Result<Publisher> {
        // rumqttc's own window is twice ours so that it never holds a message back
        // for a packet id still in use (acks out of order).
        let opts = clients::options(
            &spec.client_id,
            spec.addr,
            true,
            spec.inflight.saturating_mul(2),
        );
        let (client, eventloop, _) =
            clients::connect(opts, usize::from(spec.inflight), Duration::from_secs(15)).await?;
        let state = Arc::new(Mutex::new(PubState::default()));
        let room = Arc::new(Semaphore::new(usize::from(spec.inflight.max(1))));
        let (stop, stop_rx) = watch::channel(false);
        let events = tokio::spawn(events(
            eventloop,
            state.clone(),
            room.clone(),
            stop_rx.clone(),
        ));
        let sender = tokio::spawn(send(
            spec.clone(),
            client.clone(),
            state.clone(),
            room.clone(),
            stop_rx,
        ));
        Ok(Publisher {
            spec,
            state,
            room,
            stop,
            client,
            tasks: vec![events, sender],
        })
    }

    /// Messages sent and not acknowledged yet (0 also once the connection ended).
    pub fn outstanding(&self) -> usize {
        if self.room.is_closed() {
            return 0;
        }
        usize::from(self.spec.inflight.max(1)).saturating_sub(self.room.available_permits())
    }

    /// Whether the connection ended on its own.
    pub fn failed(&self) -> bool {
        lock(&self.state).error.is_some()
    }

    /// Stops sending new messages; PUBACKs are still received.
    pub fn stop_sending(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops everything and closes the connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn send(
    spec: PublisherSpec,
    client: AsyncClient,
    state: Arc<Mutex<PubState>>,
    room: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seq: u64 = 0;
    tokio::select! {
        _ = tokio::time::sleep_until(spec.start.into()) => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    loop {
        let due = spec
            .interval
            .map(|i| spec.start + Duration::from_secs_f64(i.as_secs_f64() * seq as f64));
        if let Some(due) = due {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let permit = tokio::select! {
            p = room.acquire() => match p {
                Ok(p) => p,
                Err(_) => return, // the connection ended
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if *stop.borrow() {
            return;
        }
        permit.forget();
        let sent_us = due.map_or_else(now_us, us_of);
        let stamp = Stamp {
            publisher: spec.index,
            seq,
            sent_us,
        };
        {
            let mut st = lock(&state);
            st.fifo.push_back((seq, sent_us));
            st.sent += 1;
        }
        let topic = spec.topic_of(seq).to_string();
        if client
            .publish(topic, QoS::AtLeastOnce, false, stamp.encode(spec.payload))
            .await
            .is_err()
        {
            return;
        }
        seq += 1;
    }
}

async fn events(
    mut eventloop: EventLoop,
    state: Arc<Mutex<PubState>>,
    room: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let mut by_pkid: HashMap<u16, (u64, u64)> = HashMap::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(msg) = lock(&state).fifo.pop_front() {
                    by_pkid.insert(pkid, msg);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let ack_us = now_us();
                let mut st = lock(&state);
                match by_pkid.remove(&ack.pkid) {
                    Some((seq, sent_us)) => {
                        st.acks.push(Ack {
                            seq,
                            sent_us,
                            ack_us,
                        });
                        drop(st);
                        room.add_permits(1);
                    }
                    None => st.unknown_acks += 1,
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !*stop.borrow() {
                    lock(&state).error = Some(e.to_string());
                }
                room.close();
                return;
            }
        }
    }
}
