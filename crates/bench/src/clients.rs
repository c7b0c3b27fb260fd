//! Connecting `rumqttc` MQTT 3.1.1 clients and subscribing them, with time limits and
//! errors that say what the broker answered.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};

/// Options for `client_id` on `addr`: keep alive 30 s, 1 MiB packets, at most
/// `inflight` QoS 1 messages unacknowledged towards the broker.
pub fn options(
    client_id: &str,
    addr: SocketAddr,
    clean_session: bool,
    inflight: u16,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o.set_clean_session(clean_session);
    o.set_inflight(inflight.max(1));
    o
}

/// Connects and waits (up to `timeout`) for the CONNACK; `Err` when it refuses, the
/// connection fails or nothing answers in time. `cap` bounds the client's request
/// channel.
pub async fn connect(
    opts: MqttOptions,
    cap: usize,
    timeout: Duration,
) -> anyhow::Result<(AsyncClient, EventLoop, ConnAck)> {
    let id = opts.client_id();
    let (client, mut eventloop) = AsyncClient::new(opts, cap.max(1));
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        bail!("CONNACK refused {id:?}: {:?}", ack.code);
                    }
                    return Ok(ack);
                }
                Ok(Event::Incoming(other)) => bail!("expected CONNACK for {id:?}, got {other:?}"),
                Ok(Event::Outgoing(_)) => {}
                Err(e) => bail!("connect {id:?}: {e}"),
            }
        }
    };
    let ack = tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow!("no CONNACK for {id:?} within {timeout:?}"))??;
    Ok((client, eventloop, ack))
}

/// Subscribes to `filter` at QoS 1 and waits (up to `timeout`) for a SUBACK granting
/// it. Events other than the SUBACK are dropped: call before traffic starts.
pub async fn subscribe_qos1(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filter: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    return match ack.return_codes.first() {
                        Some(SubscribeReasonCode::Success(_)) => Ok(()),
                        other => Err(anyhow!("SUBACK for {filter:?}: {other:?}")),
                    };
                }
                Ok(_) => {}
                Err(e) => bail!("subscribe {filter:?}: {e}"),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow!("no SUBACK for {filter:?} within {timeout:?}"))?
}
