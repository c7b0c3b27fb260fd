//! The durable outbox: records waiting for Kafka, in arrival order, on the node's local
//! disk. An append resolves once its record is fsynced (appends that arrive together
//! share one fsync); the producer reads records in order and removes each once Kafka
//! has acknowledged it. What is in the outbox survives a crash and is produced after
//! the restart, in order. Nothing here is replicated: each node bridges what its own
//! clients published.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fleetmq_storage::{KvEngine, WriteBatch};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{OutboxConfig, OutboxFullPolicy};
use crate::errors::BridgeError;
use crate::metrics::BridgeMetrics;
use crate::record::KafkaRecord;

/// The tree the outbox keeps its records in, keyed by sequence number (big-endian).
pub const OUTBOX_TREE: &str = "kafka_outbox";
/// Appends waiting for the writer; beyond this an append waits.
const APPEND_QUEUE: usize = 1024;
/// Appends merged into one write and one fsync at most.
const MAX_APPENDS_PER_FLUSH: usize = 512;

/// One record the outbox holds, as remembered in memory.
#[derive(Debug)]
struct Held {
    seq: u64,
    size: u64,
    /// The rule that made it, when the configuration still has that rule (its per-rule
    /// depth is counted).
    rule: Option<Arc<str>>,
}

/// What the outbox holds, in memory.
#[derive(Debug, Default)]
struct Pending {
    records: VecDeque<Held>,
    bytes: u64,
    next_seq: u64,
}

/// A durable FIFO of [`KafkaRecord`]s.
pub struct Outbox {
    engine: Arc<dyn KvEngine>,
    config: OutboxConfig,
    metrics: Arc<BridgeMetrics>,
    pending: Mutex<Pending>,
    /// Woken by the writer when appended records are durable.
    appended: Arc<Notify>,
    appends: mpsc::Sender<Append>,
}

struct Append {
    records: Vec<(u64, KafkaRecord)>,
    /// Oldest records the bound made room by dropping, deleted in the same write.
    dropped: Vec<u64>,
    done: oneshot::Sender<Result<(), String>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.lock();
        f.debug_struct("Outbox")
            .field("records", &pending.records.len())
            .field("bytes", &pending.bytes)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens the outbox stored in `engine`, with whatever an earlier run left in it.
    /// Reads every stored record once. Must be called inside a tokio runtime (it starts
    /// the writer task).
    pub fn open(
        engine: Arc<dyn KvEngine>,
        config: OutboxConfig,
        metrics: Arc<BridgeMetrics>,
    ) -> Result<Arc<Outbox>, BridgeError> {
        let mut pending = Pending::default();
        for (key, value) in engine.scan_prefix(OUTBOX_TREE, &[])? {
            let seq = seq_of(&key)?;
            let record = decode(seq, &value)?;
            let rule = metrics.count_outbox(&record.rule);
            pending.records.push_back(Held {
                seq,
                size: record.size(),
                rule,
            });
            pending.bytes += record.size();
            pending.next_seq = seq + 1;
        }
        metrics
            .outbox_records
            .store(pending.records.len() as u64, Ordering::Relaxed);
        metrics.outbox_bytes.store(pending.bytes, Ordering::Relaxed);
        let (appends, rx) = mpsc::channel(APPEND_QUEUE);
        let appended = Arc::new(Notify::new());
        let outbox = Arc::new(Outbox {
            engine: engine.clone(),
            config,
            metrics,
            pending: Mutex::new(pending),
            appended: appended.clone(),
            appends,
        });
        tokio::spawn(run_writer(engine, rx, appended));
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `records` (in order) and resolves once they are durable. At the bound, the
    /// configured policy refuses them ([`BridgeError::OutboxFull`]) or drops the oldest
    /// records to make room. The bridge uses [`Outbox::submit`]; this is for tests.
    #[cfg(test)]
    pub async fn append(&self, records: Vec<KafkaRecord>) -> Result<(), BridgeError> {
        self.submit(records).await?.await
    }

    /// Adds `records` behind everything submitted before, and returns what resolves once
    /// they are durable. Returns at once unless the writer's queue is full: callers that
    /// submit one after the other keep their order without waiting for each fsync.
    pub async fn submit(
        &self,
        records: Vec<KafkaRecord>,
    ) -> Result<impl Future<Output = Result<(), BridgeError>> + Send + 'static, BridgeError> {
        let done = if records.is_empty() {
            None
        } else {
            let (append, done) = self.reserve(records)?;
            // Visible to the producer only once durable: it reads from the store. The
            // queue's permits are first come, first served, so the order of reservation
            // is the order of writing.
            self.appends
                .send(append)
                .await
                .map_err(|_| BridgeError::Stopped)?;
            Some(done)
        };
        Ok(async move {
            let Some(done) = done else {
                return Ok(());
            };
            match done.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BridgeError::Corrupt {
                    seq: 0,
                    detail: format!("outbox write failed: {e}"),
                }),
                Err(_) => Err(BridgeError::Stopped),
            }
        })
    }

    /// Numbers `records` and counts them in, applying the bound's policy.
    fn reserve(
        &self,
        records: Vec<KafkaRecord>,
    ) -> Result<(Append, oneshot::Receiver<Result<(), String>>), BridgeError> {
        let mut pending = self.lock();
        let incoming: u64 = records.iter().map(KafkaRecord::size).sum();
        let count = records.len() as u64;
        let over = |p: &Pending| {
            p.records.len() as u64 + count > self.config.max_records
                || p.bytes + incoming > self.config.max_bytes
        };
        let mut dropped = Vec::new();
        if over(&pending) {
            match self.config.when_full {
                OutboxFullPolicy::Refuse => {
                    self.metrics
                        .refused_outbox_full
                        .fetch_add(count, Ordering::Relaxed);
                    return Err(BridgeError::OutboxFull {
                        records: pending.records.len() as u64,
                        bytes: pending.bytes,
                    });
                }
                OutboxFullPolicy::DropOldest => {
                    while over(&pending) {
                        let Some(held) = pending.records.pop_front() else {
                            break;
                        };
                        pending.bytes -= held.size;
                        self.metrics.uncount_outbox(held.rule.as_ref());
                        dropped.push(held.seq);
                    }
                    self.metrics
                        .dropped_outbox_full
                        .fetch_add(dropped.len() as u64, Ordering::Relaxed);
                }
            }
        }
        let mut numbered = Vec::with_capacity(records.len());
        for record in records {
            let seq = pending.next_seq;
            pending.next_seq += 1;
            let rule = self.metrics.count_outbox(&record.rule);
            pending.records.push_back(Held {
                seq,
                size: record.size(),
                rule,
            });
            pending.bytes += record.size();
            numbered.push((seq, record));
        }
        self.metrics
            .outbox_records
            .store(pending.records.len() as u64, Ordering::Relaxed);
        self.metrics
            .outbox_bytes
            .store(pending.bytes, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        Ok((
            Append {
                records: numbered,
                dropped,
                done: tx,
            },
            rx,
        ))
    }

    /// Up to `max` durable records with a sequence number of at least `from`, in order.
    /// Records appended but not yet durable are not returned.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, KafkaRecord)>, BridgeError> {
        let seqs: Vec<u64> = {
            let pending = self.lock();
            let start = pending.records.partition_point(|held| held.seq < from);
            pending
                .records
                .range(start..)
                .take(max)
                .map(|held| held.seq)
                .collect()
        };
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match self.engine.get(OUTBOX_TREE, &seq.to_be_bytes())? {
                Some(value) => out.push((seq, decode(seq, &value)?)),
                // Not written yet (the writer is behind), or dropped meanwhile: stop at
                // the first gap so that order holds.
                None => break,
            }
        }
        Ok(out)
    }

    /// Waits until an append becomes durable; returns at once if one did since the last
    /// call (one waiter: the producer).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// Forgets records Kafka has acknowledged. Not fsynced: after a crash a removed
    /// record may come back and be produced again (at least once).
    pub fn remove(&self, seqs: &[u64]) -> Result<(), BridgeError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for seq in seqs {
            batch.delete(OUTBOX_TREE, seq.to_be_bytes().to_vec());
        }
        self.engine.write(batch)?;
        let mut pending = self.lock();
        let gone: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let mut freed = 0;
        pending.records.retain(|held| {
            let keep = !gone.contains(&held.seq);
            if !keep {
                freed += held.size;
                self.metrics.uncount_outbox(held.rule.as_ref());
            }
            keep
        });
        pending.bytes -= freed;
        self.metrics
            .outbox_records
            .store(pending.records.len() as u64, Ordering::Relaxed);
        self.metrics
            .outbox_bytes
            .store(pending.bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Makes removals durable (called now and then, and at shutdown).
    pub fn flush(&self) -> Result<(), BridgeError> {
        Ok(self.engine.flush()?)
    }
}

/// Writes appends in order, merging what queued into one write and one fsync.
async fn run_writer(
    engine: Arc<dyn KvEngine>,
    mut appends: mpsc::Receiver<Append>,
    appended: Arc<Notify>,
) {
    let mut queued = Vec::new();
    while appends.recv_many(&mut queued, MAX_APPENDS_PER_FLUSH).await > 0 {
        let mut batch = WriteBatch::new();
        for append in &mut queued {
            for seq in append.dropped.drain(..) {
                batch.delete(OUTBOX_TREE, seq.to_be_bytes().to_vec());
            }
            for (seq, record) in &append.records {
                batch.put(OUTBOX_TREE, seq.to_be_bytes().to_vec(), encode(record));
            }
        }
        let engine = engine.clone();
        let written = tokio::task::spawn_blocking(move || {
            engine.write(batch)?;
            engine.flush()
        })
        .await;
        let result = match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("writer task failed: {e}")),
        };
        if result.is_ok() {
            appended.notify_one();
        }
        for append in queued.drain(..) {
            let _ = append.done.send(result.clone());
        }
    }
}

fn encode(record: &KafkaRecord) -> Vec<u8> {
    // A struct of strings and byte vectors always serializes.
    postcard::to_stdvec(record).unwrap_or_default()
}

fn decode(seq: u64, bytes: &[u8]) -> Result<KafkaRecord, BridgeError> {
    postcard::from_bytes(bytes).map_err(|e| BridgeError::Corrupt {
        seq,
        detail: e.to_string(),
    })
}

fn seq_of(key: &[u8]) -> Result<u64, BridgeError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| BridgeError::Corrupt {
            seq: 0,
            detail: format!("outbox key of {} bytes", key.len()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmq_storage::{MemoryEngine, SledEngine};

    fn record(n: usize, size: usize) -> KafkaRecord {
        KafkaRecord {
            rule: "r".into(),
            topic: "t".into(),
            key: Some(format!("dev-{}", n % 3).into_bytes()),
            headers: vec![],
            value: vec![b'x'; size],
            timestamp_ms: n as u64,
        }
    }

    /// An outbox in memory with the given bound, and its metrics.
    fn memory_outbox(
        max_records: u64,
        when_full: OutboxFullPolicy,
    ) -> (Arc<Outbox>, Arc<BridgeMetrics>) {
        let metrics = Arc::new(BridgeMetrics::for_rules([&Arc::from("r")]));
        let outbox = Outbox::open(
            Arc::new(MemoryEngine::new()),
            config(max_records, when_full),
            metrics.clone(),
        )
        .unwrap();
        (outbox, metrics)
    }

    /// The timestamps (the test records' numbers) of every durable record, in order.
    fn stamps(outbox: &Outbox) -> Vec<u64> {
        outbox
            .read(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|(_, r)| r.timestamp_ms)
            .collect()
    }

    /// Records of the test rule "r" in the outbox, by its per-rule gauge.
    fn rule_depth(metrics: &BridgeMetrics) -> u64 {
        metrics
            .rule("r")
            .unwrap()
            .outbox_records
            .load(Ordering::Relaxed)
    }

    fn config(max_records: u64, when_full: OutboxFullPolicy) -> OutboxConfig {
        OutboxConfig {
            max_records,
            max_bytes: 1 << 30,
            when_full,
        }
    }

    #[tokio::test]
    async fn records_come_out_in_order_and_go_once_removed() {
        let (outbox, metrics) = memory_outbox(100, OutboxFullPolicy::Refuse);
        for n in 0..10 {
            outbox.append(vec![record(n, 10)]).await.unwrap();
        }
        let read = outbox.read(0, 4).unwrap();
        let stamps: Vec<u64> = read.iter().map(|(_, r)| r.timestamp_ms).collect();
        assert_eq!(stamps, [0, 1, 2, 3]);
        let next = read.last().unwrap().0 + 1;
        assert_eq!(outbox.read(next, 100).unwrap().len(), 6);
        outbox
            .remove(&read.iter().map(|(s, _)| *s).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(outbox.len(), 6);
        assert_eq!(metrics.outbox_records.load(Ordering::Relaxed), 6);
        assert_eq!(rule_depth(&metrics), 6);
        assert_eq!(outbox.read(0, 1).unwrap()[0].1.timestamp_ms, 4);
    }

    #[tokio::test]
    async fn at_the_bound_refuse_refuses_and_counts() {
        let (outbox, metrics) = memory_outbox(3, OutboxFullPolicy::Refuse);
        outbox
            .append(vec![record(0, 1), record(1, 1), record(2, 1)])
            .await
            .unwrap();
        let err = outbox.append(vec![record(3, 1)]).await.unwrap_err();
        assert!(
            matches!(err, BridgeError::OutboxFull { records: 3, .. }),
            "{err}"
        );
        assert_eq!(metrics.refused_outbox_full.load(Ordering::Relaxed), 1);
        assert_eq!(outbox.len(), 3);
    }

    #[tokio::test]
    async fn at_the_bound_drop_oldest_makes_room_and_counts() {
        let (outbox, metrics) = memory_outbox(3, OutboxFullPolicy::DropOldest);
        for n in 0..5 {
            outbox.append(vec![record(n, 1)]).await.unwrap();
        }
        assert_eq!(stamps(&outbox), [2, 3, 4]);
        assert_eq!(metrics.dropped_outbox_full.load(Ordering::Relaxed), 2);
        assert_eq!(rule_depth(&metrics), 3);
    }

    #[tokio::test]
    async fn what_was_appended_survives_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        {
            let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(&path).unwrap());
            let outbox = Outbox::open(
                engine,
                config(100, OutboxFullPolicy::Refuse),
                Arc::new(BridgeMetrics::default()),
            )
            .unwrap();
            for n in 0..5 {
                outbox.append(vec![record(n, 8)]).await.unwrap();
            }
            let first = outbox.read(0, 2).unwrap();
            outbox
                .remove(&first.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                .unwrap();
            outbox.flush().unwrap();
        }
        // Lets the writer task see its channel close and let go of the store.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(&path).unwrap());
        let metrics = Arc::new(BridgeMetrics::for_rules([&Arc::from("r")]));
        let outbox = Outbox::open(
            engine,
            config(100, OutboxFullPolicy::Refuse),
            metrics.clone(),
        )
        .unwrap();
        assert_eq!(stamps(&outbox), [2, 3, 4]);
        assert_eq!(metrics.outbox_records.load(Ordering::Relaxed), 3);
        assert_eq!(rule_depth(&metrics), 3);
        // New records continue after the old ones.
        outbox.append(vec![record(9, 8)]).await.unwrap();
        let last = outbox.read(0, 10).unwrap().last().unwrap().1.timestamp_ms;
        assert_eq!(last, 9);
    }
}
