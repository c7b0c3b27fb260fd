//! A raw MQTT client over a `TcpStream`: valid packets are encoded with our codec,
//! malformed ones are written by hand (see [`wire`]), and whatever the server
//! answers is decoded with our codec.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use fleetmq_codec::{
    decode, encode, ConnAck, Connect, ConnectProperties, Packet, ProtocolVersion, PubResponse,
    Publish, PublishProperties, QoS, Subscribe, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one read attempt produced.
// Test traffic is small: boxing the packet would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Recv {
    Packet(Packet),
    /// The server closed the connection (EOF or reset).
    Closed,
    Timeout,
}

/// One TCP connection speaking MQTT by hand.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    closed: bool,
    /// The version used to encode what we send and decode what we receive.
    pub version: ProtocolVersion,
}

/// Largest packet the raw client accepts from the server.
const CLIENT_MAX_PACKET: usize = 16 * 1024 * 1024;

impl RawClient {
    /// Opens the TCP connection; sends nothing.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> anyhow::Result<RawClient> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("TCP connect to {addr} timed out"))?
            .with_context(|| format!("TCP connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            closed: false,
            version,
        })
    }

    /// Opens a connection and sends `connect`; returns the CONNACK (whatever its code).
    pub async fn connect(
        addr: SocketAddr,
        connect: Connect,
    ) -> anyhow::Result<(RawClient, ConnAck)> {
        let mut c = RawClient::open(addr, connect.protocol).await?;
        c.send(Packet::Connect(Box::new(connect))).await?;
        match c.recv(Duration::from_secs(10)).await? {
            Recv::Packet(Packet::ConnAck(ack)) => Ok((c, ack)),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and panics unless the CONNACK says success.
    pub async fn must_connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
    ) -> (RawClient, ConnAck) {
        Self::must_connect_with(addr, connect_packet(version, client_id, clean_start, 60)).await
    }

    /// Connects with a prepared CONNECT and panics unless the CONNACK says success.
    pub async fn must_connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let id = connect.client_id.clone();
        let (c, ack) = RawClient::connect(addr, connect)
            .await
            .unwrap_or_else(|e| panic!("raw connect of {id:?} failed: {e:#}"));
        assert!(
            !ack.reason_code.is_error(),
            "raw connect of {id:?} refused: {ack:?}"
        );
        (c, ack)
    }

    /// Encodes `packet` for this connection's version and writes it.
    pub async fn send(&mut self, packet: Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        encode(&packet, self.version, &mut out)
            .map_err(|e| anyhow!("encode {}: {e}", packet.kind()))?;
        self.send_bytes(&out).await
    }

    /// Writes bytes as they are.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Like [`send`](Self::send) but panics on failure.
    pub async fn must_send(&mut self, packet: Packet) {
        let kind = packet.kind();
        if let Err(e) = self.send(packet).await {
            panic!("sending {kind} failed: {e:#}");
        }
    }

    /// Like [`send_bytes`](Self::send_bytes) but panics on failure.
    pub async fn must_send_bytes(&mut self, bytes: &[u8]) {
        if let Err(e) = self.send_bytes(bytes).await {
            panic!("sending {} bytes failed: {e:#}", bytes.len());
        }
    }

    /// Next packet, a close, or a timeout. A packet the codec cannot decode is an error.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Recv> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = decode(&mut self.buf, self.version, CLIENT_MAX_PACKET)
                .map_err(|e| anyhow!("the server sent a packet we cannot decode: {e}"))?
            {
                return Ok(Recv::Packet(p));
            }
            if self.closed {
                return Ok(Recv::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Recv::Timeout);
            }
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(Recv::Timeout),
                Ok(Ok(0)) => self.closed = true,
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_reset(&e) => self.closed = true,
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Reads raw bytes until the server closes the connection (or `timeout`); returns
    /// them and whether the close was seen. Nothing is decoded.
    pub async fn read_all_until_close(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.closed {
                return (self.buf.split().to_vec(), true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (self.buf.split().to_vec(), false);
            }
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return (self.buf.split().to_vec(), false),
                Ok(Ok(0)) => self.closed = true,
                Ok(Ok(_)) => {}
                Ok(Err(_)) => self.closed = true,
            }
        }
    }

    /// The next packet; panics on close, timeout or undecodable input.
    pub async fn must_recv(&mut self, timeout: Duration) -> Packet {
        match self.recv(timeout).await {
            Ok(Recv::Packet(p)) => p,
            Ok(other) => panic!("expected a packet within {timeout:?}, got {other:?}"),
            Err(e) => panic!("expected a packet within {timeout:?}: {e:#}"),
        }
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn must_recv_publish(&mut self, timeout: Duration) -> Publish {
        match self.must_recv(timeout).await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Panics if any packet arrives or the connection closes within `wait`.
    pub async fn must_stay_silent(&mut self, wait: Duration) {
        match self.recv(wait).await {
            Ok(Recv::Timeout) => {}
            other => panic!("expected nothing for {wait:?}, got {other:?}"),
        }
    }

    /// Waits until the server closes the connection; returns the packets that came
    /// before the close. Panics if it is still open after `timeout`.
    pub async fn must_be_closed(&mut self, timeout: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Ok(Recv::Closed) => return got,
                Ok(Recv::Packet(p)) => got.push(p),
                Ok(Recv::Timeout) => panic!(
                    "the server did not close the connection within {timeout:?}; received {got:?}"
                ),
                Err(e) => panic!("while waiting for the close (received {got:?}): {e:#}"),
            }
        }
    }

    /// Panics unless the server sends DISCONNECT with `reason` and then closes.
    /// Other packets before the DISCONNECT (e.g. acks) are allowed and returned.
    pub async fn must_be_disconnected_with(
        &mut self,
        reason: u8,
        timeout: Duration,
    ) -> Vec<Packet> {
        let got = self.must_be_closed(timeout).await;
        match got.last() {
            Some(Packet::Disconnect(d)) if d.reason_code.as_u8() == reason => got,
            _ => panic!(
                "expected DISCONNECT with reason {reason:#04x} and then a close; received {got:?}"
            ),
        }
    }

    /// SUBSCRIBE one filter; returns the SUBACK (panics on anything else).
    pub async fn must_subscribe(
        &mut self,
        packet_id: u16,
        filter: &str,
        qos: QoS,
    ) -> fleetmq_codec::SubAck {
        self.must_send(Packet::Subscribe(subscribe_packet(
            packet_id,
            &[(filter, qos)],
        )))
        .await;
        self.must_recv_suback(packet_id).await
    }

    /// Waits for the SUBACK of `packet_id`.
    pub async fn must_recv_suback(&mut self, packet_id: u16) -> fleetmq_codec::SubAck {
        match self.must_recv(Duration::from_secs(10)).await {
            Packet::SubAck(s) if s.packet_id == packet_id => s,
            other => panic!("expected SUBACK {packet_id}, got {other:?}"),
        }
    }

    /// PUBLISH and complete its handshake (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub async fn must_publish(&mut self, publish: Publish) {
        let qos = publish.qos;
        let pid = publish.packet_id;
        self.must_send(Packet::Publish(publish)).await;
        match (qos, pid) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(pid)) => match self.must_recv(Duration::from_secs(10)).await {
                Packet::PubAck(a) if a.packet_id == pid => {}
                other => panic!("expected PUBACK {pid}, got {other:?}"),
            },
            (QoS::ExactlyOnce, Some(pid)) => {
                match self.must_recv(Duration::from_secs(10)).await {
                    Packet::PubRec(a) if a.packet_id == pid => {}
                    other => panic!("expected PUBREC {pid}, got {other:?}"),
                }
                self.must_send(Packet::PubRel(PubResponse::new(pid))).await;
                match self.must_recv(Duration::from_secs(10)).await {
                    Packet::PubComp(a) if a.packet_id == pid => {}
                    other => panic!("expected PUBCOMP {pid}, got {other:?}"),
                }
            }
            (_, None) => panic!("QoS {qos:?} PUBLISH without a packet id"),
        }
    }

    /// Acknowledges a received PUBLISH as the spec wants for its QoS (QoS 2: PUBREC,
    /// then waits for PUBREL and sends PUBCOMP).
    pub async fn must_ack(&mut self, publish: &Publish) {
        let Some(pid) = publish.packet_id else { return };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.must_send(Packet::PubAck(PubResponse::new(pid))).await,
            QoS::ExactlyOnce => {
                self.must_send(Packet::PubRec(PubResponse::new(pid))).await;
                match self.must_recv(Duration::from_secs(10)).await {
                    Packet::PubRel(r) if r.packet_id == pid => {}
                    other => panic!("expected PUBREL {pid}, got {other:?}"),
                }
                self.must_send(Packet::PubComp(PubResponse::new(pid))).await;
            }
        }
    }

    /// Sends DISCONNECT (normal) and closes the socket.
    pub async fn disconnect(mut self) {
        let _ = self
            .send(Packet::Disconnect(fleetmq_codec::Disconnect::new(
                fleetmq_codec::ReasonCode::Success,
            )))
            .await;
        let _ = self.stream.shutdown().await;
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// A CONNECT with no will, no credentials and no properties.
pub fn connect_packet(
    version: ProtocolVersion,
    client_id: &str,
    clean_start: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        protocol: version,
        clean_start,
        keep_alive,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A PUBLISH with no properties. `packet_id` must be `Some` for QoS 1 and 2.
pub fn publish_packet(topic: &str, qos: QoS, packet_id: Option<u16>, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A SUBSCRIBE with default options besides QoS.
pub fn subscribe_packet(packet_id: u16, filters: &[(&str, QoS)]) -> Subscribe {
    Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|(f, qos)| SubscribeFilter {
                filter: f.to_string(),
                options: SubscriptionOptions {
                    qos: *qos,
                    ..SubscriptionOptions::default()
                },
            })
            .collect(),
        properties: SubscribeProperties::default(),
    }
}

/// An UNSUBSCRIBE.
pub fn unsubscribe_packet(packet_id: u16, filters: &[&str]) -> Unsubscribe {
    Unsubscribe {
        packet_id,
        filters: filters.iter().map(|f| f.to_string()).collect(),
        user_properties: Vec::new(),
    }
}

/// Hand-written bytes, for packets our codec would refuse to encode.
pub mod wire {
    /// MQTT variable byte integer.
    pub fn varint(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                return out;
            }
        }
    }

    /// A two-byte length followed by the bytes.
    pub fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    /// A whole packet: first byte, remaining length, body.
    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        out.extend(varint(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// A CONNECT body: protocol name, level, flags, keep alive, properties (only
    /// written when `Some`, i.e. for level 5), then `payload` (client id etc.).
    pub fn connect(
        name: &[u8],
        level: u8,
        flags: u8,
        keep_alive: u16,
        props: Option<&[u8]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = string(name);
        body.push(level);
        body.push(flags);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if let Some(p) = props {
            body.extend(varint(p.len()));
            body.extend_from_slice(p);
        }
        body.extend_from_slice(payload);
        packet(0x10, &body)
    }

    /// A valid MQTT 3.1.1 CONNECT (clean session) for `client_id`.
    pub fn connect_v311(client_id: &str) -> Vec<u8> {
        connect(b"MQTT", 4, 0x02, 60, None, &string(client_id.as_bytes()))
    }

    /// A valid MQTT 5 CONNECT (clean start, no properties) for `client_id`.
    pub fn connect_v5(client_id: &str) -> Vec<u8> {
        connect(
            b"MQTT",
            5,
            0x02,
            60,
            Some(&[]),
            &string(client_id.as_bytes()),
        )
    }

    /// A PUBLISH with the given first byte (type and flags), raw topic bytes, packet
    /// id (for QoS > 0), MQTT 5 property bytes (`None` for 3.1.1) and payload.
    pub fn publish(
        first: u8,
        topic: &[u8],
        packet_id: Option<u16>,
        props: Option<&[u8]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = string(topic);
        if let Some(pid) = packet_id {
            body.extend_from_slice(&pid.to_be_bytes());
        }
        if let Some(p) = props {
            body.extend(varint(p.len()));
            body.extend_from_slice(p);
        }
        body.extend_from_slice(payload);
        packet(first, &body)
    }

    /// A SUBSCRIBE with the given first byte, packet id, MQTT 5 property bytes and
    /// one raw filter with its options byte.
    pub fn subscribe(
        first: u8,
        packet_id: u16,
        props: Option<&[u8]>,
        filter: &[u8],
        options: u8,
    ) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        if let Some(p) = props {
            body.extend(varint(p.len()));
            body.extend_from_slice(p);
        }
        body.extend(string(filter));
        body.push(options);
        packet(first, &body)
    }
}
