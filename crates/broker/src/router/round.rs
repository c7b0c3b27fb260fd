//! What one pass of the router produces: a [`Round`] of commands and [`Output`]s, and
//! which of those outputs wait for the round's writes.

use std::collections::HashSet;

use tokio::sync::oneshot;

use crate::command::Command;
use crate::connection::{ConnId, ConnectionHandle, Outgoing};
use crate::peer::ForwardedPublish;
use crate::session::Revocation;

use super::ConnectReply;

/// Something to do once the round's writes are durable.
#[derive(Debug)]
pub enum Output {
    /// A packet for a connection; not sent if its [`Revocation`] was revoked meanwhile
    /// (it came from a PUBLISH the replicated log refused).
    Send(ConnectionHandle, Outgoing, Option<Revocation>),
    /// The CONNACK decision for connection `ConnId`; withdrawn if the claim made for it
    /// is refused (another node's older claim got there first).
    Reply(
        ConnId,
        oneshot::Sender<ConnectReply>,
        ConnectReply,
        Option<Revocation>,
    ),
    /// A message for sessions of another node.
    Forward(u64, ForwardedPublish, Option<Revocation>),
    /// Tells an [`Event::Ingest`](super::Event::Ingest) caller that its message is
    /// routed and durable.
    Done(oneshot::Sender<()>),
}

impl Output {
    /// Where the output goes, as one number: outputs to the same destination keep
    /// their order. Peer nodes are kept apart from connection ids.
    pub fn destination(&self) -> u64 {
        match self {
            Output::Send(handle, ..) => handle.id,
            Output::Forward(node, ..) => u64::MAX - node,
            Output::Reply(conn, ..) => *conn,
            // Below every node's (node ids are at most 1023): one queue of its own.
            Output::Done(_) => u64::MAX - 2048,
        }
    }
}

/// Everything one pass of the router produced.
#[derive(Debug, Default)]
pub struct Round {
    /// What the round changes in replicated state, in order.
    pub commands: Vec<Command>,
    /// Outputs that go out once the round's writes are durable.
    pub outputs: Vec<Output>,
    /// Outputs of events that wrote nothing, to destinations none of `outputs` goes
    /// to: they need not wait for the writes of other events in the round (had each
    /// event been a round of its own, they would not have), only behind earlier
    /// rounds' outputs to the same destination. Without this a clean session's QoS 0
    /// message routed in the same pass as a durable PUBLISH waits for that write:
    /// on a node cut off from the majority, for as long as the partition lasts.
    pub immediate: Vec<Output>,
    /// A SUBACK is among the outputs: they wait for every node to route to the
    /// subscription (`Visibility` in service.rs); other rounds pass straight through.
    pub subscribed: bool,
    /// Destinations of `outputs[..held_indexed]`, indexed only once an event that
    /// wrote nothing follows one that did.
    held: HashSet<u64>,
    held_indexed: usize,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.outputs.is_empty() && self.immediate.is_empty()
    }

    /// Roughly how many storage writes the round's commands make.
    pub fn weight(&self) -> usize {
        self.commands.iter().map(Command::weight).sum()
    }

    /// Sorts the outputs one event added after `outputs_before`: they wait for the
    /// round's writes if the event wrote (or subscribed), or if an output that waits
    /// goes to the same destination; the others go to `immediate`.
    pub(super) fn settle_event(
        &mut self,
        outputs_before: usize,
        commands_before: usize,
        subscribed: bool,
    ) {
        if self.commands.len() > commands_before || self.subscribed != subscribed {
            return;
        }
        if outputs_before == 0 {
            if self.immediate.is_empty() {
                std::mem::swap(&mut self.immediate, &mut self.outputs);
            } else {
                self.immediate.append(&mut self.outputs);
            }
            return;
        }
        for output in &self.outputs[self.held_indexed..outputs_before] {
            self.held.insert(output.destination());
        }
        self.held_indexed = outputs_before;
        let added = self.outputs.split_off(outputs_before);
        for output in added {
            if self.held.contains(&output.destination()) {
                self.outputs.push(output);
            } else {
                self.immediate.push(output);
            }
        }
        self.held_indexed = self.outputs.len();
    }
}
