//! Minimal MQTT 3.1.1 clients for the side-by-side scenarios: a socket each, packets
//! encoded by the project's codec, nothing else held per connection, so that the
//! bench's own memory and CPU stay small beside the broker's. Connections come from
//! 127.0.0.x source addresses so that thousands of them can pass the ephemeral ports of
//! one address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context};
use bytes::BytesMut;
use fleetmq_codec::{
    encode, Connect, ConnectProperties, Packet, ProtocolVersion, QoS, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The clients' keep alive, in seconds: longer than any run here, so no PINGREQ is
/// due; 0 ("none") is valid MQTT but rumqttd 0.20 closes such connections.
pub const KEEP_ALIVE_S: u16 = 600;

/// The `i`-th of `ips` loopback source addresses, from 127.0.0.2 on.
pub fn source_ip(i: usize, ips: u8) -> IpAddr {
    let n = (i % usize::from(ips.max(1))) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n))
}

/// A packet as the project's codec writes it for MQTT 3.1.1.
pub fn packet_bytes(packet: &Packet) -> anyhow::Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    encode(packet, ProtocolVersion::V3_1_1, &mut buf)?;
    Ok(buf.to_vec())
}

pub fn connect_packet(client_id: &str) -> anyhow::Result<Vec<u8>> {
    packet_bytes(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: KEEP_ALIVE_S,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    })))
}

pub fn subscribe_packet(filter: &str, qos: QoS) -> anyhow::Result<Vec<u8>> {
    packet_bytes(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.to_string(),
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        }],
        properties: SubscribeProperties::default(),
    }))
}

/// TCP connect from `source`, CONNECT (MQTT 3.1.1, clean session), CONNACK accepted.
pub async fn connect(
    source: IpAddr,
    addr: SocketAddr,
    client_id: &str,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    stream.write_all(&connect_packet(client_id)?).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.context("CONNACK")?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("CONNACK {connack:02x?}");
    }
    Ok(stream)
}

/// SUBSCRIBE to one filter and wait for its SUBACK granting it.
pub async fn subscribe(stream: &mut TcpStream, filter: &str, qos: QoS) -> anyhow::Result<()> {
    stream.write_all(&subscribe_packet(filter, qos)?).await?;
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await.context("SUBACK")?;
    if suback[0] != 0x90 || suback[4] >= 0x80 {
        bail!("SUBACK {suback:02x?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_what_mqtt_3_1_1_says() {
        assert_eq!(
            connect_packet("a").unwrap(),
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0x02, 0x58, 0, 1, b'a']
        );
        assert_eq!(
            subscribe_packet("t", QoS::AtMostOnce).unwrap(),
            [0x82, 6, 0, 1, 0, 1, b't', 0]
        );
        assert_eq!(
            subscribe_packet("t", QoS::AtLeastOnce).unwrap(),
            [0x82, 6, 0, 1, 0, 1, b't', 1]
        );
    }

    #[test]
    fn sources_cycle_over_the_loopback_addresses() {
        assert_eq!(source_ip(0, 3).to_string(), "127.0.0.2");
        assert_eq!(source_ip(4, 3).to_string(), "127.0.0.3");
        assert_eq!(source_ip(7, 0).to_string(), "127.0.0.2");
    }
}
