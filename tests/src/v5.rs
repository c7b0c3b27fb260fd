//! The `rumqttc` MQTT 5 client, driven by a background task that forwards every
//! event to the test, which waits for what it expects.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Filter, Packet, Publish, PublishProperties, SubscribeProperties, SubscribeReasonCode,
    UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::broker::BrokerProcess;

/// An event of the connection, as the test sees it.
// Test traffic is small: boxing the packet would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Ev {
    In(Packet),
    Out(Outgoing),
    /// The server sent DISCONNECT with this reason code; no event follows.
    ServerDisconnect(u8),
    /// The event loop failed otherwise; no event follows.
    Error(String),
}

/// A connected rumqttc v5 client.
pub struct V5Client {
    pub client: AsyncClient,
    pub connack: ConnAck,
    pub client_id: String,
    rx: mpsc::UnboundedReceiver<Ev>,
    stash: VecDeque<Ev>,
    task: JoinHandle<()>,
}

/// Options for `client_id` on `broker`: clean start, keep alive 30 s, 1 MiB packets.
pub fn v5_options(broker: &BrokerProcess, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, broker.host(), broker.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(1024 * 1024));
    o
}

impl V5Client {
    /// Connects; `Err` if the CONNACK refuses or nothing answers within 10 s.
    pub async fn connect(opts: MqttOptions) -> anyhow::Result<V5Client> {
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
                    Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    })) => {
                        let _ = tx.send(Ev::ServerDisconnect(reason_code as u8));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Ev::Error(e.to_string()));
                        return;
                    }
                }
            }
        });
        Ok(V5Client {
            client,
            connack,
            client_id,
            rx,
            stash: VecDeque::new(),
            task,
        })
    }

    /// Connects a clean-start client named `client_id`, or panics.
    pub async fn must_connect(broker: &BrokerProcess, client_id: &str) -> V5Client {
        Self::must_connect_with(v5_options(broker, client_id)).await
    }

    /// Connects with `opts`, or panics.
    pub async fn must_connect_with(opts: MqttOptions) -> V5Client {
        let id = opts.client_id();
        match Self::connect(opts).await {
            Ok(c) => c,
            Err(e) => panic!("v5 client {id:?} could not connect: {e:#}"),
        }
    }

    /// Waits for the first event (stashed ones first) for which `f` returns `Some`.
    /// Other events stay stashed, in order. `None` on timeout or when the
    /// connection ended without such an event.
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
                String::from_utf8_lossy(&p.payload),
                p.topic
            );
        }
    }

    /// SUBSCRIBE one filter (with its options) and wait for the SUBACK's codes.
    pub async fn must_subscribe_filter(
        &mut self,
        filter: Filter,
        props: Option<SubscribeProperties>,
    ) -> Vec<SubscribeReasonCode> {
        let path = filter.path.clone();
        let res = match props {
            Some(p) => {
                self.client
                    .subscribe_many_with_properties(vec![filter], p)
                    .await
            }
            None => self.client.subscribe_many(vec![filter]).await,
        };
        res.expect("queue SUBSCRIBE");
        match self
            .wait_for(Duration::from_secs(10), |e| match e {
                Ev::In(Packet::SubAck(s)) => Some(s.return_codes.clone()),
                _ => None,
            })
            .await
        {
            Some(codes) => codes,
            None => panic!(
                "{}: no SUBACK for {path:?}; events: {:?}",
                self.client_id, self.stash
            ),
        }
    }

    /// SUBSCRIBE with default options besides QoS.
    pub async fn must_subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.must_subscribe_filter(Filter::new(filter, qos), None)
            .await
    }

    /// SUBSCRIBE with a subscription identifier.
    pub async fn must_subscribe_with_id(
        &mut self,
        filter: &str,
        qos: QoS,
        id: usize,
    ) -> Vec<SubscribeReasonCode> {
        let props = SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        };
        self.must_subscribe_filter(Filter::new(filter, qos), Some(props))
            .await
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK's reason codes.
    pub async fn must_unsubscribe(&mut self, filter: &str) -> Vec<UnsubAckReason> {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue UNSUBSCRIBE");
        match self
            .wait_for(Duration::from_secs(10), |e| match e {
                Ev::In(Packet::UnsubAck(u)) => Some(u.reasons.clone()),
                _ => None,
            })
            .await
        {
            Some(r) => r,
            None => panic!("{}: no UNSUBACK for {filter:?}", self.client_id),
        }
    }

    /// PUBLISH (with optional properties) and wait until it is acknowledged
    /// (QoS 1: PUBACK, QoS 2: PUBCOMP, QoS 0: written).
    pub async fn must_publish_with(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
        props: Option<PublishProperties>,
    ) {
        let payload: Bytes = payload.into();
        let res = match props {
            Some(p) => {
                self.client
                    .publish_with_properties(topic, qos, retain, payload, p)
                    .await
            }
            None => self.client.publish(topic, qos, retain, payload).await,
        };
        res.expect("queue PUBLISH");
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

    /// PUBLISH without properties and wait until it is acknowledged.
    pub async fn must_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
    ) {
        self.must_publish_with(topic, qos, retain, payload, None)
            .await
    }

    /// Waits until the server disconnects us; returns its DISCONNECT reason code,
    /// or `None` if the connection ended without one (or did not end in time).
    pub async fn wait_server_disconnect(&mut self, timeout: Duration) -> Option<u8> {
        self.wait_for(timeout, |e| match e {
            Ev::ServerDisconnect(code) => Some(Some(*code)),
            Ev::Error(_) => Some(None),
            _ => None,
        })
        .await
        .flatten()
    }

    /// Waits until the connection ends in any way; returns a description.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        self.wait_for(timeout, |e| match e {
            Ev::ServerDisconnect(code) => Some(format!("DISCONNECT {code:#04x}")),
            Ev::Error(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT (normal) and waits until it has been written.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = self
            .wait_for(Duration::from_secs(5), |e| match e {
                Ev::Out(Outgoing::Disconnect) | Ev::Error(_) | Ev::ServerDisconnect(_) => Some(()),
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

impl Drop for V5Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
