//! The `rumqttc` MQTT 3.1.1 client, driven by a background task that forwards every
//! event to the test, which waits for what it expects.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use rumqttc::{
    AsyncClient, ConnAck, Event, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::broker::BrokerProcess;

/// An event of the connection, as the test sees it.
#[derive(Debug)]
pub enum Ev {
    In(Packet),
    Out(Outgoing),
    /// The event loop failed (connection closed, refused, protocol error): no
    /// event follows.
    Error(String),
}

/// A connected rumqttc v4 client.
pub struct V4Client {
    pub client: AsyncClient,
    pub connack: ConnAck,
    pub client_id: String,
    rx: mpsc::UnboundedReceiver<Ev>,
    stash: VecDeque<Ev>,
    task: JoinHandle<()>,
}

/// Options for `client_id` on `broker`: clean session, keep alive 30 s, 1 MiB packets.
pub fn v4_options(broker: &BrokerProcess, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, broker.host(), broker.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o
}

impl V4Client {
    /// Connects; `Err` if the CONNACK refuses or nothing answers within 10 s.
    pub async fn connect(opts: MqttOptions) -> anyhow::Result<V4Client> {
        let client_id = opts.client_id();
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let connack = match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Err(_) => bail!("no CONNACK for {client_id:?} within 10 s"),
            Ok(Err(e)) => return Err(anyhow!("connect {client_id:?}: {e}")),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack,
            Ok(Ok(other)) => bail!("expected CONNACK, got {other:?}"),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        let _ = tx.send(Ev::In(p));
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        let _ = tx.send(Ev::Out(Outgoing::Disconnect));
                        return;
                    }
                    Ok(Event::Outgoing(o)) => {
                        let _ = tx.send(Ev::Out(o));
                    }
                    Err(e) => {
                        let _ = tx.send(Ev::Error(e.to_string()));
                        return;
                    }
                }
            }
        });
        Ok(V4Client {
            client,
            connack,
            client_id,
            rx,
            stash: VecDeque::new(),
            task,
        })
    }

    /// Connects a clean-session client named `client_id`, or panics.
    pub async fn must_connect(broker: &BrokerProcess, client_id: &str) -> V4Client {
        Self::must_connect_with(v4_options(broker, client_id)).await
    }

    /// Connects with `opts`, or panics.
    pub async fn must_connect_with(opts: MqttOptions) -> V4Client {
        let id = opts.client_id();
        match Self::connect(opts).await {
            Ok(c) => c,
            Err(e) => panic!("v4 client {id:?} could not connect: {e:#}"),
        }
    }

    /// Waits for the first event (stashed ones first) for which `f` returns `Some`.
    /// Other events stay stashed, in order, for later calls. `None` on timeout or
    /// when the connection ended without such an event.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&Ev) -> Option<T>,
    ) -> Option<T> {
        if let Some(pos) = self.stash.iter().position(|e| f(e).is_some()) {
            let ev = self.stash.remove(pos)?;
            return f(&ev);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) | Ok(None) => return None,
                Ok(Some(ev)) => {
                    if let Some(t) = f(&ev) {
                        return Some(t);
                    }
                    self.stash.push_back(ev);
                }
            }
        }
    }

    /// Next PUBLISH received, or `None` after `timeout`.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
        self.wait_for(timeout, |e| match e {
            Ev::In(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Next PUBLISH received; panics after `timeout`.
    pub async fn must_recv_publish(&mut self, timeout: Duration) -> Publish {
        match self.recv_publish(timeout).await {
            Some(p) => p,
            None => panic!(
                "{}: no PUBLISH within {timeout:?}; other events: {:?}",
                self.client_id, self.stash
            ),
        }
    }

    /// The next `n` PUBLISHes, each within `timeout` of the previous one.
    pub async fn must_recv_publishes(&mut self, n: usize, timeout: Duration) -> Vec<Publish> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match self.recv_publish(timeout).await {
                Some(p) => out.push(p),
                None => panic!(
                    "{}: received only {i} of {n} PUBLISHes (payloads {:?})",
                    self.client_id,
                    out.iter()
                        .map(|p: &Publish| payload_str(&p.payload))
                        .collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    /// Every PUBLISH that arrives until none has come for `quiet`.
    pub async fn drain_publishes(&mut self, quiet: Duration) -> Vec<Publish> {
        let mut out = Vec::new();
        while let Some(p) = self.recv_publish(quiet).await {
            out.push(p);
        }
        out
    }

    /// Panics if a PUBLISH arrives within `wait`.
    pub async fn must_not_recv_publish(&mut self, wait: Duration) {
        if let Some(p) = self.recv_publish(wait).await {
            panic!(
                "{}: expected no PUBLISH for {wait:?}, got {:?} on {:?}",
                self.client_id,
                payload_str(&p.payload),
                p.topic
            );
        }
    }

    /// SUBSCRIBE one filter and wait for its SUBACK; returns the return codes.
    pub async fn must_subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        match self
            .wait_for(Duration::from_secs(10), |e| match e {
                Ev::In(Packet::SubAck(s)) => Some(s.return_codes.clone()),
                _ => None,
            })
            .await
        {
            Some(codes) => codes,
            None => panic!(
                "{}: no SUBACK for {filter:?}; events: {:?}",
                self.client_id, self.stash
            ),
        }
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub async fn must_unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue UNSUBSCRIBE");
        let got = self
            .wait_for(Duration::from_secs(10), |e| match e {
                Ev::In(Packet::UnsubAck(_)) => Some(()),
                _ => None,
            })
            .await;
        assert!(
            got.is_some(),
            "{}: no UNSUBACK for {filter:?}",
            self.client_id
        );
    }

    /// PUBLISH and wait until it is acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP,
    /// QoS 0: written to the socket).
    pub async fn must_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("queue PUBLISH");
        let got = self
            .wait_for(Duration::from_secs(10), |e| match (qos, e) {
                (QoS::AtMostOnce, Ev::Out(Outgoing::Publish(_))) => Some(()),
                (QoS::AtLeastOnce, Ev::In(Packet::PubAck(_))) => Some(()),
                (QoS::ExactlyOnce, Ev::In(Packet::PubComp(_))) => Some(()),
                _ => None,
            })
            .await;
        assert!(
            got.is_some(),
            "{}: PUBLISH {qos:?} to {topic:?} was not acknowledged; events: {:?}",
            self.client_id,
            self.stash
        );
    }

    /// Waits until the connection ends; returns the event loop's error text.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        self.wait_for(timeout, |e| match e {
            Ev::Error(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits until it has been written.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = self
            .wait_for(Duration::from_secs(5), |e| match e {
                Ev::Out(Outgoing::Disconnect) | Ev::Error(_) => Some(()),
                _ => None,
            })
            .await;
        self.task.abort();
    }

    /// Drops the TCP connection without DISCONNECT (an abnormal close).
    pub async fn drop_connection(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for V4Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A payload as text, for messages.
pub fn payload_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
