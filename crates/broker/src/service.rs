//! Runs the router as one task and the committer as another, and joins them: the
//! committer group-commits every round that queued while it was busy, so one fsync
//! (or one Raft entry, in a cluster) acknowledges many messages.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fleetmq_storage::{KvEngine, StorageError, WriteBatch};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::persist::{self, PersistError};
use crate::router::{Event, Output, Round, Router};

/// Events one router pass takes before it hands its output on.
const MAX_EVENTS_PER_ROUND: usize = 512;
/// Router rounds waiting for the writer; beyond this the router waits (backpressure).
const COMMIT_QUEUE: usize = 64;

/// Why a batch could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("replication: {0}")]
    Replication(String),
}

/// Makes the writes of router rounds durable: the local store's fsync on a single
/// node, a committed Raft entry in a cluster. The broker defines it; whoever runs the
/// broker chooses the implementation.
pub trait Committer: Send + 'static {
    /// Resolves once `batch` is durable. Batches come in order, one at a time; on an
    /// error the outputs of the rounds in the batch are withheld (clients resend).
    fn commit(&mut self, batch: WriteBatch)
        -> impl Future<Output = Result<(), CommitError>> + Send;
}

/// Writes to the local store and flushes it: the single-node committer.
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
        batch: WriteBatch,
    ) -> impl Future<Output = Result<(), CommitError>> + Send {
        let engine = self.engine.clone();
        async move {
            // fsync blocks: keep it off the runtime's worker threads.
            tokio::task::spawn_blocking(move || {
                engine.write(batch)?;
                engine.flush()
            })
            .await
            .map_err(|e| CommitError::Replication(format!("writer task failed: {e}")))?
            .map_err(CommitError::from)
        }
    }
}

/// The running broker core.
pub struct BrokerService {
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    router: JoinHandle<()>,
    committer: JoinHandle<()>,
}

impl BrokerService {
    /// Loads the stored state from `engine` and starts the router and the committer.
    /// Must be called inside a tokio runtime.
    pub fn start(
        config: BrokerConfig,
        engine: &dyn KvEngine,
        committer: impl Committer,
        metrics: Arc<Metrics>,
        event_capacity: usize,
    ) -> Result<BrokerService, PersistError> {
        let snapshot = persist::load(engine)?;
        let mut router = Router::new(config, metrics.clone(), snapshot);
        let (events_tx, events_rx) = mpsc::channel(event_capacity.max(1));
        let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let committer = tokio::spawn(run_committer(
            committer,
            commit_rx,
            pending.clone(),
            metrics.clone(),
        ));
        // State restored from storage may need cleanup writes (orphans); commit them first.
        let initial = router.take_round();
        let router_task = tokio::spawn(async move {
            let mut commits = RoundSink {
                commit_tx,
                pending,
                metrics: router.metrics(),
            };
            commits.finish(initial).await;
            run_router(router, events_rx, commits).await;
        });
        info!("broker core started");
        Ok(BrokerService {
            events: events_tx,
            metrics,
            router: router_task,
            committer,
        })
    }

    /// Where connection tasks send their events.
    pub fn events(&self) -> mpsc::Sender<Event> {
        self.events.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops taking events, lets the router finish and the committer flush, then returns.
    pub async fn shutdown(self) {
        drop(self.events);
        let _ = self.router.await;
        let _ = self.committer.await;
    }
}

struct RoundSink {
    commit_tx: mpsc::Sender<Round>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl RoundSink {
    /// Sends a round's outputs now if nothing is waiting to be written, else
    /// queues it behind the writes it must not overtake.
    async fn finish(&mut self, round: Round) {
        if round.is_empty() {
            return;
        }
        if round.batch.is_empty() && self.pending.load(Ordering::Acquire) == 0 {
            deliver(round.outputs, &self.metrics);
            return;
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.commit_tx.send(round).await.is_err() {
            error!("storage writer stopped; outputs dropped");
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

async fn run_router(mut router: Router, mut events: mpsc::Receiver<Event>, mut sink: RoundSink) {
    loop {
        let deadline = router.next_deadline();
        tokio::select! {
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
            _ = sleep_until(deadline) => {
                router.fire_timers(Instant::now());
            }
        }
        let round = router.take_round();
        sink.finish(round).await;
    }
    let round = router.take_round();
    sink.finish(round).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn deliver(outputs: Vec<Output>, metrics: &Metrics) {
    for output in outputs {
        match output {
            Output::Send(handle, item) => {
                handle.send(item, metrics);
            }
            Output::Reply(reply, value) => {
                let _ = reply.send(value);
            }
        }
    }
}

async fn run_committer(
    mut committer: impl Committer,
    mut rounds: mpsc::Receiver<Round>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut queued = Vec::new();
    while let Some(first) = rounds.recv().await {
        queued.push(first);
        while let Ok(more) = rounds.try_recv() {
            queued.push(more);
        }
        let mut batch = WriteBatch::new();
        for round in &mut queued {
            batch.extend(std::mem::take(&mut round.batch));
        }
        let durable = if batch.is_empty() {
            true
        } else {
            metrics.commits_total.fetch_add(1, Ordering::Relaxed);
            match committer.commit(batch).await {
                Ok(()) => true,
                Err(e) => {
                    error!(error = %e, "commit failed; acknowledgements withheld");
                    false
                }
            }
        };
        metrics
            .committed_batches_total
            .fetch_add(queued.len() as u64, Ordering::Relaxed);
        let count = queued.len();
        for round in queued.drain(..) {
            // Without a durable write nothing may be acknowledged: the clients
            // time out and resend, which is safe for QoS 1 and 2.
            if durable {
                deliver(round.outputs, &metrics);
            }
        }
        pending.fetch_sub(count, Ordering::AcqRel);
    }
}
