//! Fault injection for the reliability suites (RELIABILITY.md). Off unless a `IRIS_FAULT_*` variable
//! is set; production never sets one.
//!
//! [`DuplicatingWorkQueue`] wraps a real queue adapter (SQLite or SQS) and makes it behave like the
//! worst case SQS allows: every message is delivered at least twice, the second copy late and so out
//! of order with the messages sent in between. Stages must turn that into identical outputs and one
//! state change per status.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::backends::Backends;
use crate::config::IrisConfig;
use crate::ports::{PortError, QueueDepth, ReceiptHandle, ReceivedMessage, WorkQueue};

/// A queue whose every message is delivered a second time: the first time a body is received, a
/// copy is sent to the same queue after a delay of up to `max_delay` (fixed per body, so a run is
/// repeatable). The copy itself is not copied again.
pub struct DuplicatingWorkQueue {
    inner: Arc<dyn WorkQueue>,
    max_delay: Duration,
    /// Fingerprints of the bodies already copied (this process's; one process serves a queue).
    copied: Mutex<HashSet<u64>>,
    /// Copies sent so far (shared with the spawned senders).
    copies_sent: Arc<AtomicU64>,
}

/// Wraps every queue of `backends` as the configuration's fault settings ask (none by default).
pub fn with_injected_faults(backends: Backends, config: &IrisConfig) -> Backends {
    let Some(max_delay) = config.fault_duplicate_delivery else { return backends };
    tracing::warn!(max_delay_ms = max_delay.as_millis() as u64, "fault injection: every message is delivered twice");
    let queues = backends
        .queues
        .iter()
        .map(|(role, queue)| {
            let duplicating: Arc<dyn WorkQueue> = Arc::new(DuplicatingWorkQueue::new(Arc::clone(queue), max_delay));
            (*role, duplicating)
        })
        .collect();
    Backends { queues, ..backends }
}

impl DuplicatingWorkQueue {
    pub fn new(inner: Arc<dyn WorkQueue>, max_delay: Duration) -> DuplicatingWorkQueue {
        DuplicatingWorkQueue {
            inner,
            max_delay,
            copied: Mutex::new(HashSet::new()),
            copies_sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many copies have been sent to the queue so far.
    pub fn copies_sent(&self) -> u64 {
        self.copies_sent.load(Ordering::Relaxed)
    }

    fn fingerprint(body: &str) -> u64 {
        // DefaultHasher::new() uses fixed keys: the same body gets the same fingerprint and delay.
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        hasher.finish()
    }

    /// True the first time `body` is seen.
    fn first_sighting(&self, fingerprint: u64) -> bool {
        match self.copied.lock() {
            Ok(mut copied) => copied.insert(fingerprint),
            Err(poisoned) => poisoned.into_inner().insert(fingerprint),
        }
    }
}

#[async_trait]
impl WorkQueue for DuplicatingWorkQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, body: &str) -> Result<(), PortError> {
        self.inner.send(body).await
    }

    async fn receive(
        &self,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, PortError> {
        let messages = self.inner.receive(max_messages, visibility_timeout, wait).await?;
        for message in &messages {
            let fingerprint = Self::fingerprint(&message.body);
            if !self.first_sighting(fingerprint) {
                continue;
            }
            let delay_ms = fingerprint % (self.max_delay.as_millis() as u64 + 1);
            let (queue, body, sent) = (Arc::clone(&self.inner), message.body.clone(), Arc::clone(&self.copies_sent));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                match queue.send(&body).await {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::warn!(queue = queue.name(), %error, "fault injection: the copy was not sent")
                    }
                }
            });
        }
        Ok(messages)
    }

    async fn extend_visibility(&self, receipt: &ReceiptHandle, visibility_timeout: Duration) -> Result<(), PortError> {
        self.inner.extend_visibility(receipt, visibility_timeout).await
    }

    async fn ack(&self, receipt: &ReceiptHandle) -> Result<(), PortError> {
        self.inner.ack(receipt).await
    }

    async fn dead_letter(&self, message: &ReceivedMessage, reason: &str) -> Result<(), PortError> {
        self.inner.dead_letter(message, reason).await
    }

    async fn depth(&self) -> Result<QueueDepth, PortError> {
        self.inner.depth().await
    }
}
