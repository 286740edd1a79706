//! The dispatcher: runs delivery attempts as plugin calls, new deliveries at once and due
//! retries on a timer, in batches per webhook, bounded per webhook and overall, so one slow or
//! dead receiver never delays another webhook's deliveries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::metrics::METRICS;
use crate::runtime::Runtime;
use crate::runtime::bindings::exports::mainflux::webhooks::events::DeliveryStatus;
use crate::runtime::bindings::mainflux::webhooks::types::DueDelivery;

/// How the dispatcher spreads work.
#[derive(Debug, Clone, Copy)]
pub struct DispatchConfig {
    /// Most deliveries attempted by one plugin call (one instance, requests in flight together).
    pub batch_size: usize,
    /// Most batches of one webhook running at once.
    pub per_webhook: usize,
    /// Most batches running at once overall.
    pub max_batches: usize,
    /// How often the due index is read for retries and for deliveries left from before a restart.
    pub poll_interval: Duration,
    /// Longest wait for one attempt's answer; a batch's plugin call is granted this much on
    /// top of its deadline, since its requests are in flight together.
    pub attempt_timeout: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            batch_size: 32,
            per_webhook: 2,
            max_batches: 128,
            poll_interval: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

/// Deliveries waiting or running, per webhook.
#[derive(Default)]
struct Queues {
    webhooks: HashMap<String, WebhookQueue>,
    /// Every delivery queued or running, so none runs twice at once.
    known: HashSet<String>,
}

#[derive(Default)]
struct WebhookQueue {
    ready: VecDeque<String>,
    running: usize,
}

/// Runs deliveries through the plugin.
pub struct Dispatcher {
    runtime: Arc<Runtime>,
    config: DispatchConfig,
    queues: Mutex<Queues>,
    slots: Arc<Semaphore>,
    /// Set on shutdown: no new batch starts; running ones finish.
    stopping: AtomicBool,
}

impl Dispatcher {
    /// Starts the dispatcher and its due-index poller; pending deliveries left from an earlier
    /// run are picked up by the first poll.
    pub fn start(runtime: Arc<Runtime>, config: DispatchConfig) -> Arc<Self> {
        let dispatcher = Arc::new(Dispatcher {
            runtime,
            config,
            queues: Mutex::new(Queues::default()),
            slots: Arc::new(Semaphore::new(config.max_batches)),
            stopping: AtomicBool::new(false),
        });
        tokio::spawn(dispatcher.clone().poll_due());
        dispatcher
    }

    /// Queues deliveries to attempt now; ones already queued or running are ignored. After
    /// [`Dispatcher::drain`] began, nothing is queued: the deliveries stay pending in the
    /// store for the next start.
    pub fn enqueue(self: &Arc<Self>, deliveries: Vec<DueDelivery>) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let batches = {
            let mut queues = self.queues.lock().expect("dispatch queues poisoned");
            let mut touched = Vec::new();
            for delivery in deliveries {
                if queues.known.insert(delivery.id.clone()) {
                    queues
                        .webhooks
                        .entry(delivery.webhook_id.clone())
                        .or_default()
                        .ready
                        .push_back(delivery.id);
                    if !touched.contains(&delivery.webhook_id) {
                        touched.push(delivery.webhook_id);
                    }
                }
            }
            METRICS.pending_deliveries.set(queues.known.len() as i64);
            touched
                .into_iter()
                .flat_map(|webhook| self.take_batches(&mut queues, webhook))
                .collect::<Vec<_>>()
        };
        for (webhook, ids) in batches {
            self.spawn_batch(webhook, ids);
        }
    }

    fn spawn_batch(self: &Arc<Self>, webhook: String, ids: Vec<String>) {
        // Boxed so the batch future's type does not contain itself.
        let batch: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(self.clone().run_batch(webhook, ids));
        tokio::spawn(batch);
    }

    /// Deliveries queued or running.
    pub fn backlog(&self) -> usize {
        self.queues.lock().expect("dispatch queues poisoned").known.len()
    }

    fn take_batches(&self, queues: &mut Queues, webhook: String) -> Vec<(String, Vec<String>)> {
        let mut batches = Vec::new();
        if let Some(queue) = queues.webhooks.get_mut(&webhook) {
            while queue.running < self.config.per_webhook && !queue.ready.is_empty() {
                let take = queue.ready.len().min(self.config.batch_size);
                batches.push((webhook.clone(), queue.ready.drain(..take).collect()));
                queue.running += 1;
            }
        }
        batches
    }

    /// Stops starting batches and waits, until `deadline` at most, for the running ones to
    /// record their outcomes. Whatever did not run stays pending in the store.
    pub async fn drain(&self, deadline: Instant) {
        self.stopping.store(true, Ordering::SeqCst);
        loop {
            let running: usize = {
                let queues = self.queues.lock().expect("dispatch queues poisoned");
                queues.webhooks.values().map(|queue| queue.running).sum()
            };
            if running == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    running,
                    "delivery batches still running at the end of the grace period; their deliveries stay pending for the next start"
                );
                self.release_claims().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Gives back the claims of the attempts abandoned at shutdown, so their deliveries are due
    /// at once for the next start or another host, not when the claims lapse.
    async fn release_claims(&self) {
        let ids: Vec<String> = {
            let queues = self.queues.lock().expect("dispatch queues poisoned");
            queues.known.iter().cloned().collect()
        };
        match self.runtime.events().release(ids).await {
            Ok(released) => tracing::info!(released, "claims of abandoned attempts given back"),
            Err(error) => tracing::error!(%error, "giving back claims failed; they lapse on their own"),
        }
    }

    async fn run_batch(self: Arc<Self>, webhook: String, ids: Vec<String>) {
        // A batch queued before the stop, not yet started, is left for the next start.
        let slot = if self.stopping.load(Ordering::SeqCst) {
            None
        } else {
            self.slots.clone().acquire_owned().await.ok()
        };
        if let Some(_slot) = slot {
            let span = tracing::debug_span!(
                target: crate::telemetry::SPANS,
                "delivery batch",
                otel.name = "deliver",
                webhook_id = %webhook,
                deliveries = ids.len(),
            );
            let result = self
                .runtime
                .events()
                .deliver(ids.clone(), self.config.attempt_timeout)
                .instrument(span)
                .await;
            match result {
                Ok(outcomes) => {
                    for outcome in outcomes {
                        let counted = match outcome.status {
                            DeliveryStatus::Delivered => "delivered",
                            DeliveryStatus::Pending => "retrying",
                            DeliveryStatus::Failed => "failed",
                        };
                        METRICS.deliveries.with_label_values(&[counted]).inc();
                        match outcome.status {
                            DeliveryStatus::Delivered => {
                                tracing::debug!(delivery = %outcome.id, webhook = %outcome.webhook_id, status = outcome.status_code, "delivered")
                            }
                            DeliveryStatus::Pending => {
                                tracing::info!(delivery = %outcome.id, webhook = %outcome.webhook_id, status = outcome.status_code, error = outcome.error.as_deref(), "attempt failed; will retry")
                            }
                            DeliveryStatus::Failed => {
                                tracing::warn!(delivery = %outcome.id, webhook = %outcome.webhook_id, status = outcome.status_code, error = outcome.error.as_deref(), "delivery failed")
                            }
                        }
                    }
                }
                // The deliveries stay pending in the store; the poller brings them back.
                Err(error) => tracing::error!(%error, webhook, "delivery batch failed; it will be retried"),
            }
        }
        let batches = {
            let mut queues = self.queues.lock().expect("dispatch queues poisoned");
            for id in &ids {
                queues.known.remove(id);
            }
            METRICS.pending_deliveries.set(queues.known.len() as i64);
            if let Some(queue) = queues.webhooks.get_mut(&webhook) {
                if self.stopping.load(Ordering::SeqCst) {
                    queue.ready.clear();
                }
                queue.running -= 1;
                if queue.running == 0 && queue.ready.is_empty() {
                    queues.webhooks.remove(&webhook);
                }
            }
            self.take_batches(&mut queues, webhook)
        };
        for (webhook, ids) in batches {
            self.spawn_batch(webhook, ids);
        }
    }

    async fn poll_due(self: Arc<Self>) {
        const PAGE: u32 = 1024;
        while !self.stopping.load(Ordering::SeqCst) {
            let full = match self.runtime.events().due(PAGE).await {
                Ok(due) => {
                    let full = due.len() == PAGE as usize;
                    if !due.is_empty() {
                        self.enqueue(due);
                    }
                    full
                }
                Err(error) => {
                    tracing::error!(%error, "reading due deliveries failed");
                    false
                }
            };
            // A full page means more is due: read again as soon as the backlog allows.
            let pause = if full && self.backlog() < 4 * PAGE as usize {
                Duration::from_millis(10)
            } else {
                self.config.poll_interval
            };
            tokio::time::sleep(pause).await;
        }
    }
}
