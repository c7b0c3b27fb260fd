//! Runs the router as one task and the committer as another, and joins them: the
//! committer group-commits every round that queued while it was busy, so one fsync
//! (or one Raft entry, in a cluster) acknowledges many messages.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmq_codec::{Packet, ReasonCode};
use fleetmq_storage::{KvEngine, StorageError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::command::{self, Command};
use crate::config::BrokerConfig;
use crate::connection::{AckKind, Outgoing};
use crate::metrics::Metrics;
use crate::peer::Forwarder;
use crate::persist::{self, PersistError, Snapshot};
use crate::router::{Applied, Event, Output, Round, Router, Settings};

/// Events one router pass takes before it hands its output on.
const MAX_EVENTS_PER_ROUND: usize = 512;
/// Router rounds waiting for the writer; beyond this the router waits (backpressure).
const COMMIT_QUEUE: usize = 64;
/// How long a committed round's outputs wait for this node's router to take the entry
/// that carried them (see [`run_committer`]); only a wedged router takes longer.
const ROUTER_CATCH_UP: Duration = Duration::from_secs(10);
/// The shortest pause between two sweeps of stored messages no session points at any
/// more. Sweeping often keeps each sweep's deletes few: at 10 s, a sweep under 5,000
/// QoS 1 msg/s deleted 50,000 bodies at once and held up every commit for 2 s.
const SWEEP_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// The longest pause; the pause is this many times the last scan's duration, so that
/// scanning a big store takes at most a tenth of one core.
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(30);
const SWEEP_PAUSE_PER_SCAN: u32 = 10;
/// At most this many message bodies deleted per sweep event (one router round).
const SWEEP_CHUNK: usize = 1024;
/// Storage writes (see [`Command::weight`]) merged into one commit (one Raft entry in a
/// cluster) at most; a round is never split, so one big round may go over.
const MAX_OPS_PER_COMMIT: usize = 4096;
/// Committed rounds whose outputs wait for [`Visibility`]; beyond this the committer waits.
const FENCE_QUEUE: usize = 64;
/// A commit pending this long means this node cannot reach a majority (it is cut off,
/// or the leader it forwards to is paused): the clients whose answers wait for it are
/// told to move (DISCONNECT 0x9C), to reconnect through the load balancer to a node that
/// can commit. Resending there is safe: what waits here is fenced by their sessions and
/// refused once they have moved (command.rs). Longer than an election after a leader's
/// SIGKILL (about 1 s) with room to spare.
const MOVE_WAITING_AFTER: Duration = Duration::from_secs(3);
/// While the commit stays stuck, clients whose answers queue behind it are told this
/// often.
const MOVE_WAITING_EVERY: Duration = Duration::from_millis(500);

/// Why a batch could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Persist(#[from] PersistError),
    #[error("replication: {0}")]
    Replication(String),
    /// The node cannot store any more (Raft stopped on a storage error).
    #[error("stopped: {0}")]
    Stopped(String),
}

impl CommitError {
    /// The node cannot store, now or later: a storage error, or Raft stopped on one.
    /// Replication errors are the node stopping (or, from a committer that gives up,
    /// a commit that may still land).
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            CommitError::Storage(_) | CommitError::Persist(_) | CommitError::Stopped(_)
        )
    }
}

/// Why this node's storage failed for good, once it has; `None` while it works.
pub type StorageFailure = watch::Receiver<Option<Arc<str>>>;

/// Makes the writes of router rounds durable: the local store's fsync on a single
/// node, a committed Raft entry in a cluster. The broker defines it; whoever runs the
/// broker chooses the implementation.
pub trait Committer: Send + 'static {
    /// Resolves once `commands` are durable, with the Raft log index of the entry that
    /// carries them (0 where there is no log). Calls come in order, one at a time; on
    /// an error the outputs of the rounds they came from are withheld (clients resend).
    fn commit(
        &mut self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<u64, CommitError>> + Send;
}

/// Waits until the writes of a committed Raft entry are in every other node's routing
/// view. A SUBACK promises that messages published from then on reach the subscription,
/// wherever they are published: it goes out only once [`Visibility::wait`] for its
/// entry has resolved. Without it, a PUBLISH sent to another node right after the SUBACK
/// could be routed there before that node applied the subscription, and be lost.
pub trait Visibility: Send + Sync + 'static {
    /// Resolves once every other node's router has taken the entries up to `index`, or
    /// once waiting longer cannot help (a node that is down, cut off, or has no router
    /// yet: it takes the subscription from the store when it starts or catches up).
    fn wait(&self, index: u64) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// How far this node's router has taken the replicated store's entries (a Raft log
/// index); other nodes' [`Visibility`] waits on it.
#[derive(Clone, Debug)]
pub struct RoutingView {
    through: Arc<watch::Sender<u64>>,
}

impl Default for RoutingView {
    fn default() -> Self {
        RoutingView {
            through: Arc::new(watch::channel(0).0),
        }
    }
}

impl RoutingView {
    /// The log index through which the router has taken every entry.
    pub fn through(&self) -> u64 {
        *self.through.borrow()
    }

    /// True once the router has taken every entry through `index`; false if that
    /// does not happen within `timeout`.
    pub async fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.through.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|through| *through >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn advance(&self, index: u64) {
        self.through.send_if_modified(|through| {
            let newer = index > *through;
            if newer {
                *through = index;
            }
            newer
        });
    }
}

/// Applies commands to the local store and flushes it: the committer of a node without
/// Raft (`--storage memory`). Admission decides as the state machine would; a lone node
/// never sees a refusal.
pub struct LocalCommitter {
    engine: Arc<dyn KvEngine>,
}

impl LocalCommitter {
    pub fn new(engine: Arc<dyn KvEngine>) -> Self {
        LocalCommitter { engine }
    }
}

impl Committer for LocalCommitter {
    fn commit(
        &mut self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<u64, CommitError>> + Send {
        let engine = self.engine.clone();
        async move {
            // fsync blocks: keep it off the runtime's worker threads.
            tokio::task::spawn_blocking(move || {
                command::apply_all(engine.as_ref(), &commands)?;
                engine.flush()?;
                Ok::<_, CommitError>(())
            })
            .await
            .map_err(|e| CommitError::Replication(format!("writer task failed: {e}")))??;
            Ok(0)
        }
    }
}

/// The running broker core.
pub struct BrokerService {
    events: mpsc::Sender<Event>,
    storage_failure: StorageFailure,
    settings: tokio::sync::watch::Receiver<Settings>,
    /// Ends the router loop: other holders of `events` (the peer service that hands
    /// over forwarded PUBLISHes, the sweeper) outlive a shutdown, so the channel
    /// closing cannot be the signal.
    stop: tokio::sync::watch::Sender<bool>,
    metrics: Arc<Metrics>,
    router: JoinHandle<()>,
    committer: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

/// What the broker core starts from and talks to.
pub struct BrokerParts<C: Committer> {
    pub config: BrokerConfig,
    /// The stored state, read from `engine` (in a cluster: at the point the `applied`
    /// feed starts from).
    pub snapshot: Snapshot,
    /// The store the committer writes (directly or through Raft); read by the sweeper.
    pub engine: Arc<dyn KvEngine>,
    pub committer: C,
    pub forwarder: Arc<dyn Forwarder>,
    pub metrics: Arc<Metrics>,
    pub event_capacity: usize,
    /// What the replicated store applies, in order; `None` on a node without Raft.
    pub applied: Option<mpsc::Receiver<Applied>>,
    /// Whether this node sweeps unreferenced messages now: in a cluster only the
    /// leader does (any node could; one is enough).
    pub sweeps: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Where the router tells how far it has taken `applied`.
    pub view: RoutingView,
    /// What SUBACKs wait for in a cluster; `None` where no other node routes.
    pub visibility: Option<Arc<dyn Visibility>>,
}

impl BrokerService {
    /// Starts the router, the committer and the sweeper. Must be called inside a
    /// tokio runtime.
    pub fn start<C: Committer>(parts: BrokerParts<C>) -> BrokerService {
        let BrokerParts {
            config,
            snapshot,
            engine,
            committer,
            forwarder,
            metrics,
            event_capacity,
            applied,
            sweeps,
            view,
            visibility,
        } = parts;
        let mut router = Router::new(config, metrics.clone(), snapshot);
        if applied.is_some() {
            router.set_replicated();
        }
        let settings = router.settings();
        let (events_tx, events_rx) = mpsc::channel(event_capacity.max(1));
        let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let gates = Arc::new(Gates::default());
        let (failure_tx, storage_failure) = watch::channel(None);
        let outlet = Outlet {
            gates: gates.clone(),
            metrics: metrics.clone(),
            forwarder: forwarder.clone(),
        };
        let fence = visibility.map(|visibility| VisibilityFence::start(visibility, outlet.clone()));
        // Where other nodes write too, a round's outputs wait for the router to have
        // taken its entry (see run_committer).
        let router_view = applied.as_ref().map(|_| RouterProgress {
            view: view.clone(),
            stopping: stop_rx.clone(),
        });
        let committer = tokio::spawn(run_committer(
            committer,
            commit_rx,
            outlet,
            fence,
            router_view,
            failure_tx,
        ));
        // State restored from storage may need cleanup writes (orphans); commit them first.
        let initial = router.take_round();
        let sink_metrics = router.metrics();
        let router_task = tokio::spawn(async move {
            let mut commits = RoundSink {
                commit_tx,
                gates,
                metrics: sink_metrics,
                forwarder,
                view,
            };
            let mut applied = applied;
            commits.finish(initial, &mut router, &mut applied).await;
            run_router(router, events_rx, applied, commits, stop_rx).await;
        });
        let sweeper = tokio::spawn(run_sweeper(engine, events_tx.clone(), sweeps));
        info!("broker core started");
        BrokerService {
            events: events_tx,
            storage_failure,
            settings,
            stop: stop_tx,
            metrics,
            router: router_task,
            committer,
            sweeper,
        }
    }

    /// Where connection tasks send their events.
    pub fn events(&self) -> mpsc::Sender<Event> {
        self.events.clone()
    }

    /// Set once a commit failed for good: what this node has not stored it cannot
    /// acknowledge, now or later (see [`run_committer`]); whoever runs the node drains it.
    pub fn storage_failure(&self) -> StorageFailure {
        self.storage_failure.clone()
    }

    /// The cluster-wide settings, following every change.
    pub fn settings(&self) -> tokio::sync::watch::Receiver<Settings> {
        self.settings.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops taking events, lets the router finish and the committer flush, then returns.
    pub async fn shutdown(self) {
        self.sweeper.abort();
        let _ = self.sweeper.await;
        let _ = self.stop.send(true);
        drop(self.events);
        let _ = self.router.await;
        let _ = self.committer.await;
    }
}

/// Deletes stored messages no delivery points at any more, through the router so the
/// deletes are committed (replicated) like every other write.
async fn run_sweeper(
    engine: Arc<dyn KvEngine>,
    events: mpsc::Sender<Event>,
    sweeps: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    let mut pause = SWEEP_INTERVAL_MIN;
    loop {
        tokio::time::sleep(pause).await;
        if !sweeps() {
            continue;
        }
        let engine = engine.clone();
        let started = Instant::now();
        let found =
            tokio::task::spawn_blocking(move || persist::unreferenced_messages(engine.as_ref()))
                .await;
        pause = (started.elapsed() * SWEEP_PAUSE_PER_SCAN)
            .clamp(SWEEP_INTERVAL_MIN, SWEEP_INTERVAL_MAX);
        match found {
            Ok(Ok(ids)) if ids.is_empty() => {}
            Ok(Ok(ids)) => {
                for chunk in ids.chunks(SWEEP_CHUNK) {
                    if events.send(Event::Sweep(chunk.to_vec())).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Err(e)) => error!(error = %e, "sweeping stored messages failed"),
            Err(e) => error!(error = %e, "sweeper task failed"),
        }
    }
}

/// Which connections (and peer nodes) have outputs in rounds still waiting to be
/// written. A round that writes nothing may go out at once when none of its outputs'
/// destinations has anything waiting: order per connection is all MQTT asks (acks in
/// order, messages per topic in order), and it keeps clean-session traffic flowing
/// while a durable write cannot commit (a node cut off from the majority).
#[derive(Default)]
struct Gates {
    waiting: std::sync::Mutex<HashMap<u64, usize>>,
}

impl Gates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True when every destination of `outputs` has nothing waiting.
    fn clear(&self, outputs: &[Output]) -> bool {
        let waiting = self.lock();
        outputs
            .iter()
            .all(|o| !waiting.contains_key(&o.destination()))
    }

    /// Splits `outputs` into those whose destination has nothing waiting and the rest.
    fn split(&self, outputs: Vec<Output>) -> (Vec<Output>, Vec<Output>) {
        let waiting = self.lock();
        outputs
            .into_iter()
            .partition(|o| !waiting.contains_key(&o.destination()))
    }

    fn hold(&self, outputs: &[Output]) {
        let mut waiting = self.lock();
        for d in outputs.iter().map(Output::destination) {
            *waiting.entry(d).or_insert(0) += 1;
        }
    }

    /// After the outputs went out (not before: a round let through in between would
    /// overtake them).
    fn release(&self, destinations: Vec<u64>) {
        let mut waiting = self.lock();
        for d in destinations {
            if let Some(n) = waiting.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    waiting.remove(&d);
                }
            }
        }
    }
}

struct RoundSink {
    commit_tx: mpsc::Sender<Round>,
    gates: Arc<Gates>,
    metrics: Arc<Metrics>,
    forwarder: Arc<dyn Forwarder>,
    view: RoutingView,
}

impl RoundSink {
    /// Sends a round's outputs now if they wait for no write of it (its `immediate`
    /// ones; all of them if it writes nothing) and none of their destinations waits
    /// for an earlier round (see [`Gates`]), else queues them behind the writes. While
    /// the writer is full it keeps taking in what the replicated store applies: the
    /// writer may be waiting for exactly that (a Raft entry is committed once applied
    /// here), so stopping would deadlock.
    async fn finish(
        &mut self,
        mut round: Round,
        router: &mut Router,
        applied: &mut Option<mpsc::Receiver<Applied>>,
    ) {
        if !round.immediate.is_empty() {
            let immediate = std::mem::take(&mut round.immediate);
            let blocked = if self.gates.clear(&immediate) {
                deliver(immediate, &self.metrics, self.forwarder.as_ref());
                Vec::new()
            } else {
                let (now, blocked) = self.gates.split(immediate);
                deliver(now, &self.metrics, self.forwarder.as_ref());
                blocked
            };
            // Behind earlier rounds' outputs, and ahead of this round's, to the same
            // destinations: where they were produced.
            if !blocked.is_empty() {
                round.outputs.splice(0..0, blocked);
            }
        }
        if round.is_empty() {
            return;
        }
        if round.commands.is_empty() && self.gates.clear(&round.outputs) {
            deliver(round.outputs, &self.metrics, self.forwarder.as_ref());
            return;
        }
        self.gates.hold(&round.outputs);
        loop {
            tokio::select! {
                permit = self.commit_tx.reserve() => {
                    match permit {
                        Ok(permit) => permit.send(round),
                        Err(mpsc::error::SendError(())) => {
                            error!("storage writer stopped; outputs dropped");
                            self.gates
                                .release(round.outputs.iter().map(Output::destination).collect());
                        }
                    }
                    return;
                }
                Some(entry) = recv_applied(applied) => {
                    router.handle_applied(entry);
                    self.view.advance(router.applied_through());
                }
            }
        }
    }
}

async fn recv_applied(applied: &mut Option<mpsc::Receiver<Applied>>) -> Option<Applied> {
    match applied {
        Some(rx) => match rx.recv().await {
            Some(entry) => Some(entry),
            None => {
                *applied = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn run_router(
    mut router: Router,
    mut events: mpsc::Receiver<Event>,
    mut applied: Option<mpsc::Receiver<Applied>>,
    mut sink: RoundSink,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let deadline = router.next_deadline();
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            event = events.recv() => {
                let Some(event) = event else { break };
                router.handle(event);
                let mut taken = 1;
                while taken < MAX_EVENTS_PER_ROUND && router.round_len() < 4 * MAX_EVENTS_PER_ROUND {
                    match events.try_recv() {
                        Ok(event) => {
                            router.handle(event);
                            taken += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            Some(entry) = recv_applied(&mut applied) => {
                router.handle_applied(entry);
                if let Some(rx) = applied.as_mut() {
                    let mut taken = 1;
                    while taken < MAX_EVENTS_PER_ROUND {
                        match rx.try_recv() {
                            Ok(entry) => {
                                router.handle_applied(entry);
                                taken += 1;
                            }
                            Err(_) => break,
                        }
                    }
                }
                sink.view.advance(router.applied_through());
            }
            _ = sleep_until(deadline) => {
                router.fire_timers(Instant::now());
            }
        }
        let round = router.take_round();
        sink.finish(round, &mut router, &mut applied).await;
    }
    let round = router.take_round();
    sink.finish(round, &mut router, &mut applied).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn deliver(outputs: Vec<Output>, metrics: &Metrics, forwarder: &dyn Forwarder) {
    for output in outputs {
        match output {
            Output::Forward(_, _, Some(revocation))
            | Output::Send(_, _, Some(revocation))
            | Output::Reply(_, _, _, Some(revocation))
                if revocation.is_revoked() =>
            {
                Metrics::add(&metrics.outputs_withdrawn, 1);
            }
            Output::Forward(node, publish, _) => forwarder.forward(node, publish),
            Output::Send(handle, item, _) => {
                handle.send(item, metrics);
            }
            Output::Reply(_, reply, value, _) => {
                let _ = reply.send(value);
            }
            Output::Done(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Where committed rounds' outputs go out, and the gates they release.
#[derive(Clone)]
struct Outlet {
    gates: Arc<Gates>,
    metrics: Arc<Metrics>,
    forwarder: Arc<dyn Forwarder>,
}

impl Outlet {
    fn send(&self, outputs: Vec<Output>) {
        let destinations: Vec<u64> = outputs.iter().map(Output::destination).collect();
        deliver(outputs, &self.metrics, self.forwarder.as_ref());
        self.gates.release(destinations);
    }
}

fn is_suback(output: &Output) -> bool {
    matches!(output, Output::Send(_, Outgoing::Packet(packet), _) if matches!(**packet, Packet::SubAck(_)))
}

/// Holds SUBACKs until [`Visibility`] says their subscription is in every node's
/// routing view, and holds behind each of them whatever else goes to the same
/// connection, so that every connection's outputs keep their order.
struct VisibilityFence {
    waiting: mpsc::Sender<Fenced>,
    /// Connections with outputs in `waiting`, and how many.
    held: Arc<std::sync::Mutex<HashMap<u64, usize>>>,
}

/// Outputs of one committed round that wait behind the fence.
struct Fenced {
    /// The entry that carried the round.
    index: u64,
    /// Whether they hold a SUBACK (or only follow one to the same connection).
    has_suback: bool,
    outputs: Vec<Output>,
}

fn lock_held(
    held: &std::sync::Mutex<HashMap<u64, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl VisibilityFence {
    fn start(visibility: Arc<dyn Visibility>, outlet: Outlet) -> VisibilityFence {
        let (waiting, rx) = mpsc::channel(FENCE_QUEUE);
        let held = Arc::new(std::sync::Mutex::new(HashMap::new()));
        tokio::spawn(run_fence(rx, visibility, held.clone(), outlet));
        VisibilityFence { waiting, held }
    }

    /// Sends what may go now and queues the rest behind the fence. A round without a
    /// SUBACK while no connection is held (nearly every round) goes out as it is.
    async fn pass(&self, index: u64, round: Round, outlet: &Outlet) {
        let Round {
            outputs,
            subscribed,
            ..
        } = round;
        let (mut now, mut later) = (Vec::new(), Vec::new());
        let mut has_suback = false;
        {
            let mut held = lock_held(&self.held);
            if !subscribed && held.is_empty() {
                drop(held);
                outlet.send(outputs);
                return;
            }
            for output in outputs {
                let suback = is_suback(&output);
                let destination = output.destination();
                if suback || held.contains_key(&destination) {
                    has_suback |= suback;
                    *held.entry(destination).or_insert(0) += 1;
                    later.push(output);
                } else {
                    now.push(output);
                }
            }
        }
        outlet.send(now);
        if later.is_empty() {
            return;
        }
        let fenced = Fenced {
            index,
            has_suback,
            outputs: later,
        };
        if let Err(mpsc::error::SendError(fenced)) = self.waiting.send(fenced).await {
            // The fence task is gone (shutting down): late beats never.
            release_held(&self.held, &fenced.outputs);
            outlet.send(fenced.outputs);
        }
    }
}

fn release_held(held: &std::sync::Mutex<HashMap<u64, usize>>, outputs: &[Output]) {
    let mut held = lock_held(held);
    for d in outputs.iter().map(Output::destination) {
        if let Some(n) = held.get_mut(&d) {
            *n -= 1;
            if *n == 0 {
                held.remove(&d);
            }
        }
    }
}

async fn run_fence(
    mut waiting: mpsc::Receiver<Fenced>,
    visibility: Arc<dyn Visibility>,
    held: Arc<std::sync::Mutex<HashMap<u64, usize>>>,
    outlet: Outlet,
) {
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, FENCE_QUEUE).await > 0 {
        // One wait for all that queued: the newest entry's visibility covers the older.
        if let Some(index) = batch.iter().filter(|f| f.has_suback).map(|f| f.index).max() {
            visibility.wait(index).await;
        }
        for fenced in batch.drain(..) {
            release_held(&held, &fenced.outputs);
            outlet.send(fenced.outputs);
        }
    }
}

/// Commits `commands`; while that takes longer than [`MOVE_WAITING_AFTER`], tells the
/// clients whose outputs wait for it (in `queued`, and in rounds that queue behind it,
/// taken into `backlog`) to move elsewhere.
async fn commit_moving_waiters(
    committer: &mut impl Committer,
    commands: Vec<Command>,
    queued: &[Round],
    rounds: &mut mpsc::Receiver<Round>,
    backlog: &mut VecDeque<Round>,
    metrics: &Metrics,
) -> Result<u64, CommitError> {
    let started = Instant::now();
    let commit = committer.commit(commands);
    tokio::pin!(commit);
    let mut wait = MOVE_WAITING_AFTER;
    let mut told = std::collections::HashSet::new();
    loop {
        tokio::select! {
            result = &mut commit => return result,
            () = tokio::time::sleep(wait) => {
                wait = MOVE_WAITING_EVERY;
                while backlog.len() < COMMIT_QUEUE {
                    let Ok(round) = rounds.try_recv() else { break };
                    backlog.push_back(round);
                }
                let before = told.len();
                for round in queued.iter().chain(backlog.iter()) {
                    for output in &round.outputs {
                        if let Output::Send(handle, ..) = output {
                            if told.insert(handle.id) {
                                handle.close(ReasonCode::UseAnotherServer);
                            }
                        }
                    }
                }
                let now_told = told.len() - before;
                if now_told > 0 {
                    Metrics::add(&metrics.clients_moved_commit_stuck, now_told as u64);
                    warn!(
                        clients = now_told,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "a write has not committed (no majority reachable): its clients are told to move"
                    );
                }
            }
        }
    }
}

/// Withdraws the outputs of `rounds` that a refusal of their entry would withdraw:
/// whether it was refused is known only once the router takes the entry, and an output
/// sent before that could deliver a PUBLISH the log refused (a QoS 2 message twice).
/// Withheld, a PUBACK is resent for by its client, a delivery is stored and goes out
/// when its subscriber comes back.
fn withhold_revocable(rounds: &mut [Round]) {
    for output in rounds.iter().flat_map(|round| round.outputs.iter()) {
        if let Output::Send(_, _, Some(revocation))
        | Output::Forward(_, _, Some(revocation))
        | Output::Reply(_, _, _, Some(revocation)) = output
        {
            revocation.revoke();
        }
    }
}

/// The reason code a PUBACK/PUBREC gets when its message could not be stored.
fn storage_refusal(error: &CommitError) -> ReasonCode {
    let text = error.to_string();
    if text.contains("No space left") || text.contains("os error 28") {
        ReasonCode::QuotaExceeded
    } else {
        ReasonCode::UnspecifiedError
    }
}

/// The acknowledgements of PUBLISHes among `outputs`, turned into refusals with
/// `reason`; the rest is dropped.
fn refused_acks(outputs: Vec<Output>, reason: ReasonCode, metrics: &Metrics) -> Vec<Output> {
    outputs
        .into_iter()
        .filter_map(|output| match output {
            Output::Send(
                handle,
                Outgoing::Ack {
                    kind: kind @ (AckKind::PubAck | AckKind::PubRec),
                    packet_id,
                    reason: ReasonCode::Success,
                },
                revocation,
            ) => {
                Metrics::add(&metrics.acks_refused_storage, 1);
                Some(Output::Send(
                    handle,
                    Outgoing::Ack {
                        kind,
                        packet_id,
                        reason,
                    },
                    revocation,
                ))
            }
            _ => None,
        })
        .collect()
}

/// How far the router has taken the replicated store's entries, for the committer.
struct RouterProgress {
    view: RoutingView,
    /// Set when the service stops: the router takes nothing more.
    stopping: watch::Receiver<bool>,
}

impl RouterProgress {
    /// Returns once the router has taken the entries through `index` (true), or is
    /// stopping, or has not within [`ROUTER_CATCH_UP`] (false).
    async fn wait_for(&self, index: u64) -> bool {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            taken = self.view.wait_for(index, ROUTER_CATCH_UP) => {
                if !taken && !*self.stopping.borrow() {
                    warn!(
                        index,
                        through = self.view.through(),
                        "the router has not taken a committed entry; outputs that a refusal could withdraw are withheld, the rest go out"
                    );
                }
                taken
            }
            _ = stopping.wait_for(|stop| *stop) => true,
        }
    }
}

/// Commits the rounds in order, group-committing what queues, and releases each
/// round's outputs once its writes are durable.
///
/// With a replicated store (`router_view` set) the outputs also wait until this node's
/// router has taken every entry through the one that carried them. Entries of other
/// nodes committed before it may change what the outputs mean: above all a move of the
/// session to another node (failover of a node that was cut off). The router closes
/// the connection when it takes the move, and a closed connection sends nothing more;
/// released before that, a PUBLISH decided by the deposed owner would reach a client
/// whose session now lives elsewhere, and be delivered twice.
async fn run_committer(
    mut committer: impl Committer,
    mut rounds: mpsc::Receiver<Round>,
    outlet: Outlet,
    fence: Option<VisibilityFence>,
    router_view: Option<RouterProgress>,
    failure: watch::Sender<Option<Arc<str>>>,
) {
    let mut queued = Vec::new();
    // Rounds taken off the channel while a commit was stuck, to tell their clients to
    // move; committed next, in order. At most COMMIT_QUEUE, as the channel.
    let mut backlog: VecDeque<Round> = VecDeque::new();
    let mut last_index = 0;
    loop {
        let first = match backlog.pop_front() {
            Some(round) => round,
            None => match rounds.recv().await {
                Some(round) => round,
                None => break,
            },
        };
        let mut ops = first.weight();
        queued.push(first);
        // Group-commit what queued meanwhile, up to a bound: one Raft entry must stay
        // small enough to replicate within the heartbeat interval.
        while ops < MAX_OPS_PER_COMMIT {
            let more = match backlog.pop_front() {
                Some(round) => round,
                None => match rounds.try_recv() {
                    Ok(round) => round,
                    Err(_) => break,
                },
            };
            ops += more.weight();
            queued.push(more);
        }
        let mut commands = Vec::new();
        for round in &mut queued {
            commands.append(&mut round.commands);
        }
        let mut refusal = None;
        let durable = if commands.is_empty() {
            true
        } else {
            outlet.metrics.commits_total.fetch_add(1, Ordering::Relaxed);
            let committed = commit_moving_waiters(
                &mut committer,
                commands,
                &queued,
                &mut rounds,
                &mut backlog,
                &outlet.metrics,
            );
            match committed.await {
                Ok(index) => {
                    last_index = last_index.max(index);
                    if let Some(progress) = &router_view {
                        if !progress.wait_for(index).await {
                            withhold_revocable(&mut queued);
                        }
                    }
                    true
                }
                Err(e) if !e.is_storage_failure() => {
                    // Replication stopped with the node (shutdown): clients time out
                    // and resend elsewhere, which is safe for QoS 1 and 2.
                    warn!(error = %e, "commit abandoned; acknowledgements withheld");
                    false
                }
                Err(e) => {
                    // Committers retry what can still commit: this error is for good.
                    let reason = storage_refusal(&e);
                    if failure.borrow().is_none() {
                        error!(
                            error = %e,
                            "storage failed: what cannot be stored is refused, and the node drains"
                        );
                        Metrics::gauge_add(&outlet.metrics.storage_failed, 1);
                        failure.send_replace(Some(Arc::from(e.to_string())));
                    }
                    refusal = Some(reason);
                    false
                }
            }
        };
        outlet
            .metrics
            .committed_batches_total
            .fetch_add(queued.len() as u64, Ordering::Relaxed);
        for round in queued.drain(..) {
            if !durable {
                // Without a durable write nothing may be acknowledged. Each PUBLISH is
                // answered with the error instead (MQTT 3.1.1 has none: its connection
                // closes), so a device can tell this node from a slow one; everything
                // else goes nowhere. A CONNECT's reply is dropped: 0x88.
                let destinations = round.outputs.iter().map(Output::destination).collect();
                if let Some(reason) = refusal {
                    let refused = refused_acks(round.outputs, reason, &outlet.metrics);
                    deliver(refused, &outlet.metrics, outlet.forwarder.as_ref());
                }
                outlet.gates.release(destinations);
                continue;
            }
            match &fence {
                Some(fence) => fence.pass(last_index, round, &outlet).await,
                None => outlet.send(round.outputs),
            }
        }
    }
}
