//! The router's side of a client connection: a bounded outbox the connection task
//! drains into its socket, and a switch to close it. The same state carries what the
//! rest of the node tells a connection (an administrator's close, a nudge to look at
//! the node's drain order), so that a waiting connection waits on one thing only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use fleetmq_codec::{Packet, PubResponse, QoS, ReasonCode};

use crate::message::Message;
use crate::metrics::{DropReason, Metrics};

/// Identifies one network connection (not a client id: a client reconnecting gets a new one).
pub type ConnId = u64;

/// A PUBLISH on its way to one subscriber. The connection task turns it into a
/// packet, applying its topic aliases and the remaining expiry at write time.
#[derive(Debug, Clone)]
pub struct OutgoingPublish {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub packet_id: Option<u16>,
    pub dup: bool,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// Which of the four QoS acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

#[derive(Debug, Clone)]
pub enum Outgoing {
    Publish(OutgoingPublish),
    /// The most frequent control packets, kept small so the outbox stays compact.
    Ack {
        kind: AckKind,
        packet_id: u16,
        reason: ReasonCode,
    },
    /// SUBACK, UNSUBACK and the like, ready to encode.
    Packet(Box<Packet>),
}

impl Outgoing {
    pub fn ack(kind: AckKind, packet_id: u16) -> Outgoing {
        Outgoing::Ack {
            kind,
            packet_id,
            reason: ReasonCode::Success,
        }
    }

    /// The packet to encode for anything but a PUBLISH.
    pub fn into_packet(self) -> Option<Packet> {
        match self {
            Outgoing::Publish(_) => None,
            Outgoing::Ack {
                kind,
                packet_id,
                reason,
            } => {
                let mut response = PubResponse::new(packet_id);
                response.reason_code = reason;
                Some(match kind {
                    AckKind::PubAck => Packet::PubAck(response),
                    AckKind::PubRec => Packet::PubRec(response),
                    AckKind::PubRel => Packet::PubRel(response),
                    AckKind::PubComp => Packet::PubComp(response),
                })
            }
            Outgoing::Packet(packet) => Some(*packet),
        }
    }
}

/// The router's handle on a connection task: its outbox, and a switch to close it.
///
/// Not a tokio mpsc channel and a watch: that pair took about 2 KiB for every
/// connection (a channel allocates a 32-slot block up front, and both carry
/// cache-padded wait lists), while most connections are idle most of the time. The
/// outbox here is a queue under a lock that holds no memory while empty.
pub struct ConnectionHandle {
    pub id: ConnId,
    shared: Arc<Shared>,
}

/// The connection task's end of its handle.
pub struct ConnectionEnd {
    shared: Arc<Shared>,
}

/// Reaches a connection task without keeping it alive (it does not count as a
/// handle): for whoever besides the router must close or wake it, as the admin API's
/// kick and the node's drain do.
#[derive(Clone)]
pub struct ConnectionSignal {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Live [`ConnectionHandle`]s: when the last goes, the connection ends.
    handles: AtomicUsize,
    /// Most items the outbox holds.
    capacity: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outgoing>,
    /// Set by [`ConnectionHandle::close`]: the connection closes, queuing stops.
    close: Option<ReasonCode>,
    /// The connection task dropped its end: nothing more is queued.
    ended: bool,
    /// Set by [`ConnectionSignal::nudge`], cleared when the task takes it.
    nudged: bool,
    /// The connection task waiting for an item, a close or the last handle going.
    waker: Option<Waker>,
}

/// What the connection task takes from its end next.
#[derive(Debug)]
pub enum Next {
    Item(Outgoing),
    /// Something node-wide changed for this connection to look at (a drain started);
    /// given once however often it was nudged before the task looked.
    Nudged,
    /// Close with this reason: the router asked for it, or dropped the connection
    /// (every handle gone: [`ReasonCode::ServerShuttingDown`] unless a close was asked).
    Close(ReasonCode),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every change to it
        // is a single push, pop or assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes the task if it waits.
    fn set_and_wake(&self, change: impl FnOnce(&mut State)) {
        let waker = {
            let mut state = self.lock();
            change(&mut state);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl std::fmt::Debug for ConnectionSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSignal").finish_non_exhaustive()
    }
}

impl ConnectionSignal {
    /// Asks the connection task to close with `reason`, as the router's close does.
    pub fn close(&self, reason: ReasonCode) {
        self.shared.set_and_wake(|state| state.close = Some(reason));
    }

    /// Wakes the connection task with [`Next::Nudged`].
    pub fn nudge(&self) {
        self.shared.set_and_wake(|state| state.nudged = true);
    }
}

impl ConnectionHandle {
    /// A handle and the connection task's end, with an outbox of `capacity` items.
    pub fn new(id: ConnId, capacity: usize) -> (ConnectionHandle, ConnectionEnd) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            handles: AtomicUsize::new(1),
            capacity: capacity.max(1),
        });
        (
            ConnectionHandle {
                id,
                shared: shared.clone(),
            },
            ConnectionEnd { shared },
        )
    }

    /// Asks the connection task to send DISCONNECT with `reason` (MQTT 5) and close.
    pub fn close(&self, reason: ReasonCode) {
        self.shared.set_and_wake(|state| state.close = Some(reason));
    }

    /// Queues `item` without waiting. The router never blocks on one slow client:
    /// a QoS 0 message that does not fit is dropped and counted; anything else
    /// that does not fit closes the connection (its session keeps the state).
    ///
    /// Nothing is queued once the router has asked the connection to close: a round
    /// decided before, say, the session moved to another node is released only after
    /// the move, and what it sends would reach a client whose session is now elsewhere
    /// (a QoS 2 message delivered there again under another packet id).
    pub fn send(&self, item: Outgoing, metrics: &Metrics) -> bool {
        let mut state = self.shared.lock();
        if state.close.is_some() || state.ended {
            return false;
        }
        if state.queue.len() >= self.shared.capacity {
            drop(state);
            if matches!(&item, Outgoing::Publish(p) if p.qos == QoS::AtMostOnce) {
                metrics.dropped(DropReason::OutboxFull);
            } else {
                metrics
                    .slow_consumer_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                self.close(ReasonCode::QuotaExceeded);
            }
            return false;
        }
        state.queue.push_back(item);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl Clone for ConnectionHandle {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        ConnectionHandle {
            id: self.id,
            shared: self.shared.clone(),
        }
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = self.shared.lock().waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ConnectionEnd {
    /// The next thing to do. A close the router asked for comes before what is still
    /// queued (a slow client's full outbox is not written first); when the router
    /// dropped the connection without asking, what it queued before is taken first.
    pub async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.close {
            return Poll::Ready(Next::Close(reason));
        }
        if std::mem::take(&mut state.nudged) {
            return Poll::Ready(Next::Nudged);
        }
        if let Some(item) = state.queue.pop_front() {
            return Poll::Ready(Next::Item(item));
        }
        if self.shared.handles.load(Ordering::Acquire) == 0 {
            return Poll::Ready(Next::Close(ReasonCode::ServerShuttingDown));
        }
        // Going idle: an empty queue gives its memory back.
        if state.queue.capacity() > 0 {
            state.queue = VecDeque::new();
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next queued item, if one is there now (and no close was asked).
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let mut state = self.shared.lock();
        if state.close.is_some() {
            return None;
        }
        state.queue.pop_front()
    }

    /// The reason the router asked the connection to close with, if it did.
    pub fn close_reason(&self) -> Option<ReasonCode> {
        self.shared.lock().close
    }

    /// A signal for others than the router to close or nudge this connection.
    pub fn signal(&self) -> ConnectionSignal {
        ConnectionSignal {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for ConnectionEnd {
    fn drop(&mut self) {
        // Taken out and dropped after the lock: the items' messages are freed now.
        let queue = {
            let mut state = self.shared.lock();
            state.ended = true;
            state.waker = None;
            std::mem::take(&mut state.queue)
        };
        drop(queue);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::message::MessageProperties;

    fn publish(qos: QoS, packet_id: Option<u16>) -> Outgoing {
        Outgoing::Publish(OutgoingPublish {
            message: Arc::new(Message {
                topic: Arc::from("t"),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                properties: MessageProperties::default(),
                publisher: None,
                expires_at_ms: None,
            }),
            qos,
            packet_id,
            dup: false,
            retain: false,
            subscription_ids: Vec::new(),
        })
    }

    fn packet_id(item: Outgoing) -> Option<u16> {
        match item {
            Outgoing::Publish(p) => p.packet_id,
            Outgoing::Ack { packet_id, .. } => Some(packet_id),
            Outgoing::Packet(_) => None,
        }
    }

    async fn next_now(end: &mut ConnectionEnd) -> Option<Next> {
        tokio::time::timeout(Duration::from_millis(50), end.next())
            .await
            .ok()
    }

    #[tokio::test]
    async fn items_come_out_in_order_from_every_handle() {
        let metrics = Metrics::default();
        let (handle, mut end) = ConnectionHandle::new(1, 8);
        let other = handle.clone();
        assert!(handle.send(Outgoing::ack(AckKind::PubAck, 1), &metrics));
        assert!(other.send(Outgoing::ack(AckKind::PubAck, 2), &metrics));
        assert!(handle.send(publish(QoS::AtLeastOnce, Some(3)), &metrics));
        let mut seen = Vec::new();
        while let Some(Next::Item(item)) = next_now(&mut end).await {
            seen.push(packet_id(item));
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen, [Some(1), Some(2), Some(3)]);
        assert!(end.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_full_outbox_drops_qos0_and_closes_for_the_rest() {
        let metrics = Metrics::default();
        let (handle, mut end) = ConnectionHandle::new(1, 1);
        assert!(handle.send(publish(QoS::AtMostOnce, None), &metrics));
        assert!(!handle.send(publish(QoS::AtMostOnce, None), &metrics));
        assert_eq!(metrics.dropped_count(DropReason::OutboxFull), 1);
        assert_eq!(end.close_reason(), None);
        assert!(!handle.send(publish(QoS::AtLeastOnce, Some(7)), &metrics));
        assert_eq!(metrics.slow_consumer_disconnects.load(Ordering::Relaxed), 1);
        assert_eq!(end.close_reason(), Some(ReasonCode::QuotaExceeded));
        // The close comes before what is still queued.
        assert!(matches!(
            next_now(&mut end).await,
            Some(Next::Close(ReasonCode::QuotaExceeded))
        ));
        assert!(end.try_recv().is_none());
    }

    #[tokio::test]
    async fn nothing_is_queued_after_a_close() {
        let metrics = Metrics::default();
        let (handle, mut end) = ConnectionHandle::new(1, 8);
        handle.close(ReasonCode::SessionTakenOver);
        assert!(!handle.send(Outgoing::ack(AckKind::PubAck, 1), &metrics));
        assert!(matches!(
            next_now(&mut end).await,
            Some(Next::Close(ReasonCode::SessionTakenOver))
        ));
    }

    #[tokio::test]
    async fn a_waiting_end_wakes_for_an_item_and_for_a_close() {
        let metrics = Arc::new(Metrics::default());
        let (handle, mut end) = ConnectionHandle::new(1, 8);
        let sender = {
            let (handle, metrics) = (handle.clone(), metrics.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                handle.send(Outgoing::ack(AckKind::PubAck, 9), &metrics);
            })
        };
        match tokio::time::timeout(Duration::from_secs(5), end.next()).await {
            Ok(Next::Item(item)) => assert_eq!(packet_id(item), Some(9)),
            other => panic!("expected the item, got {other:?}"),
        }
        sender.await.expect("the sender task");
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            handle.close(ReasonCode::AdministrativeAction);
            handle
        });
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(5), end.next()).await,
            Ok(Next::Close(ReasonCode::AdministrativeAction))
        ));
        drop(closer.await);
    }

    #[tokio::test]
    async fn a_signal_nudges_once_closes_and_keeps_nothing_alive() {
        let metrics = Metrics::default();
        let (handle, mut end) = ConnectionHandle::new(1, 8);
        let signal = end.signal();
        assert!(handle.send(Outgoing::ack(AckKind::PubAck, 1), &metrics));
        // Nudges do not pile up, and come before queued items: a drain is not
        // noticed only after a long outbox is written.
        signal.nudge();
        signal.nudge();
        assert!(matches!(next_now(&mut end).await, Some(Next::Nudged)));
        assert!(matches!(next_now(&mut end).await, Some(Next::Item(_))));
        assert!(next_now(&mut end).await.is_none());
        // A waiting task wakes for a nudge.
        let nudger = {
            let signal = signal.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                signal.nudge();
            })
        };
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(5), end.next()).await,
            Ok(Next::Nudged)
        ));
        nudger.await.expect("the nudger task");
        // The signal's close is the router's close: it beats the queue and stops it.
        assert!(handle.send(Outgoing::ack(AckKind::PubAck, 2), &metrics));
        signal.close(ReasonCode::AdministrativeAction);
        assert!(!handle.send(Outgoing::ack(AckKind::PubAck, 3), &metrics));
        assert!(matches!(
            next_now(&mut end).await,
            Some(Next::Close(ReasonCode::AdministrativeAction))
        ));
        // A live signal is not a handle: with the router's handles gone, the
        // connection ends.
        let (handle, mut end) = ConnectionHandle::new(2, 8);
        let _signal = end.signal();
        drop(handle);
        assert!(matches!(
            next_now(&mut end).await,
            Some(Next::Close(ReasonCode::ServerShuttingDown))
        ));
    }

    #[tokio::test]
    async fn when_every_handle_is_gone_the_queue_is_taken_then_the_connection_closes() {
        let metrics = Metrics::default();
        let (handle, mut end) = ConnectionHandle::new(1, 8);
        let other = handle.clone();
        assert!(handle.send(Outgoing::ack(AckKind::PubAck, 1), &metrics));
        drop(handle);
        assert!(next_now(&mut end)
            .await
            .is_some_and(|n| matches!(n, Next::Item(_))));
        // One handle is left: nothing more to do yet.
        assert!(next_now(&mut end).await.is_none());
        drop(other);
        assert!(matches!(
            next_now(&mut end).await,
            Some(Next::Close(ReasonCode::ServerShuttingDown))
        ));
    }

    #[tokio::test]
    async fn an_idle_outbox_holds_no_memory_and_a_dropped_end_takes_nothing() {
        let metrics = Metrics::default();
        let (handle, mut end) = ConnectionHandle::new(1, 8);
        assert!(handle.send(Outgoing::ack(AckKind::PubAck, 1), &metrics));
        assert!(next_now(&mut end).await.is_some());
        assert!(next_now(&mut end).await.is_none());
        assert_eq!(handle.shared.lock().queue.capacity(), 0);
        drop(end);
        assert!(!handle.send(Outgoing::ack(AckKind::PubAck, 2), &metrics));
        assert_eq!(metrics.dropped_count(DropReason::OutboxFull), 0);
    }
}
