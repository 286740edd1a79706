//! The dispatcher: runs delivery attempts as plugin calls, new deliveries at once and due
//! retries on a timer, in batches per webhook, bounded per webhook, per group and overall, with
//! groups taking turns for free slots, so one slow or dead receiver never delays another
//! webhook's deliveries and one group's flood never stalls another group's.

mod delivery_id;
mod fair;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use self::fair::{Batch, FairQueue, Lane, Shares};
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
    /// Most batches of one group running at once.
    pub per_group: usize,
    /// Most batches running at once overall.
    pub max_batches: usize,
    /// Most batches of a group's quick webhooks running at once: few, so that their
    /// deliveries gather into full batches while these run.
    pub quick_per_group: usize,
    /// Most first batches of a group's webhooks not yet known to be quick or slow running at
    /// once; one still running after 250 ms leaves this count.
    pub probation_per_group: usize,
    /// How often the due index is read for retries and for deliveries left from before a restart.
    pub poll_interval: Duration,
    /// Longest wait for one attempt's answer; a batch's plugin call is granted this much on
    /// top of its deadline, since its requests are in flight together.
    pub attempt_timeout: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            // Large enough that one webhook under load needs a single call at a time (see
            // `fair::SMALL_BATCH`); within the 128 requests in flight per destination.
            batch_size: 64,
            per_webhook: 2,
            // Half the slots: a group whose receivers all hang still leaves the other half to
            // the other groups, which take turns for them.
            per_group: 64,
            max_batches: 128,
            // Each ends in a few milliseconds and keeps a core busy: a few cover two cores.
            quick_per_group: 4,
            // A burst toward many new webhooks (a restart, a drain) starts a few instances at
            // a time, not one per webhook.
            probation_per_group: 8,
            poll_interval: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

/// Most batches of a group's quick webhooks running at once with a shared store: each batch
/// costs PostgreSQL a commit of fixed cost whatever its size, and with half as many running the
/// deliveries gather into batches twice as large (`bench drain --store postgres` at one webhook
/// per thing: 7.3 deliver calls per 100 deliveries instead of 15). The embedded store's
/// commits are cheap; there the default keeps more running, for throughput and memory.
pub const SHARED_QUICK_PER_GROUP: usize = 2;

/// The group deliveries are counted under when their webhook's group is not known here (a
/// retry after a restart, before a message of its thing came in).
pub const UNKNOWN_GROUP: &str = "";

/// A batch that ended within this long shows its receivers quick: their webhooks may share
/// batches with the group's other quick webhooks. A slower one runs its webhooks alone again,
/// so a receiver that turned slow holds up at most one shared batch.
const QUICK_BATCH: Duration = Duration::from_millis(250);

/// Most webhooks whose group is remembered; past it the memory starts again, and a retry of a
/// forgotten webhook counts under [`UNKNOWN_GROUP`] until its thing publishes again.
const REMEMBERED_WEBHOOKS: usize = 100_000;

struct Queues {
    fair: FairQueue,
    /// The group of each webhook seen in a message, for its retries.
    groups: HashMap<String, Arc<str>>,
}

/// Runs deliveries through the plugin.
pub struct Dispatcher {
    runtime: Arc<Runtime>,
    config: DispatchConfig,
    queues: Mutex<Queues>,
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
            queues: Mutex::new(Queues {
                fair: FairQueue::new(Shares {
                    batch_size: config.batch_size,
                    total: config.max_batches,
                    per_group: config.per_group,
                    per_webhook: config.per_webhook,
                    quick_per_group: config.quick_per_group,
                    probation_per_group: config.probation_per_group,
                }),
                groups: HashMap::new(),
            }),
            stopping: AtomicBool::new(false),
        });
        tokio::spawn(dispatcher.clone().poll_due());
        dispatcher
    }

    /// Queues deliveries to attempt now, of webhooks of `group` when the caller knows it (a
    /// message's thing's group) or of the group remembered for each webhook; ones already
    /// queued or running are ignored. After [`Dispatcher::drain`] began, nothing is queued:
    /// the deliveries stay pending in the store for the next start.
    pub fn enqueue(self: &Arc<Self>, group: Option<&str>, deliveries: Vec<DueDelivery>) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let batches = {
            let mut queues = self.queues.lock().expect("dispatch queues poisoned");
            let Queues { fair, groups } = &mut *queues;
            for delivery in deliveries {
                let group_of_webhook = match group {
                    Some(group) => {
                        if groups.get(&delivery.webhook_id).is_none_or(|known| **known != *group) {
                            if groups.len() >= REMEMBERED_WEBHOOKS {
                                groups.clear();
                            }
                            groups.insert(delivery.webhook_id.clone(), Arc::from(group));
                        }
                        group
                    }
                    None => groups.get(&delivery.webhook_id).map_or(UNKNOWN_GROUP, |group| &**group),
                };
                fair.push(group_of_webhook, &delivery.webhook_id, delivery.id);
            }
            METRICS.pending_deliveries.set(fair.backlog() as i64);
            fair.next_batches()
        };
        for batch in batches {
            self.spawn_batch(batch);
        }
    }

    fn spawn_batch(self: &Arc<Self>, batch: Batch) {
        // Boxed so the batch future's type does not contain itself.
        let batch: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(self.clone().run_batch(batch));
        tokio::spawn(batch);
    }

    /// Deliveries queued or running.
    pub fn backlog(&self) -> usize {
        self.queues.lock().expect("dispatch queues poisoned").fair.backlog()
    }

    /// Deliveries of `group` queued or running.
    pub fn group_backlog(&self, group: &str) -> usize {
        self.queues
            .lock()
            .expect("dispatch queues poisoned")
            .fair
            .group_backlog(group)
    }

    /// The `n` groups with the most deliveries queued or running: name, deliveries, batches
    /// running.
    pub fn busiest_groups(&self, n: usize) -> Vec<(Arc<str>, usize, usize)> {
        self.queues
            .lock()
            .expect("dispatch queues poisoned")
            .fair
            .busiest_groups(n)
    }

    /// Stops starting batches and waits, until `deadline` at most, for the running ones to
    /// record their outcomes. Whatever did not run stays pending in the store; the claims
    /// the intake took on the ones that never started are given back, so with a shared store
    /// they are due at once for another host or the next start, not when the claims lapse.
    pub async fn drain(&self, deadline: Instant) {
        self.stopping.store(true, Ordering::SeqCst);
        let dropped = self.queues.lock().expect("dispatch queues poisoned").fair.clear_ready();
        if !dropped.is_empty() {
            self.release(dropped, "claims of deliveries never started given back")
                .await;
        }
        loop {
            let running = self.queues.lock().expect("dispatch queues poisoned").fair.running();
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
            queues.fair.known().collect()
        };
        self.release(ids, "claims of abandoned attempts given back").await;
    }

    /// Gives back the claims on these deliveries, a page of ids per call, so a large backlog
    /// at shutdown never makes one call read more than a page of records.
    async fn release(&self, ids: Vec<String>, done: &'static str) {
        const PAGE: usize = 1024;
        let mut released = 0;
        for page in ids.chunks(PAGE) {
            match self.runtime.events().release(page.to_vec()).await {
                Ok(count) => released += count,
                Err(error) => {
                    tracing::error!(%error, "giving back claims failed; they lapse on their own");
                    return;
                }
            }
        }
        tracing::info!(released, "{done}");
    }

    async fn run_batch(self: Arc<Self>, batch: Batch) {
        let span = tracing::debug_span!(
            target: crate::telemetry::SPANS,
            "delivery batch",
            otel.name = "deliver",
            webhook_id = %batch.webhooks[0],
            webhooks = batch.webhooks.len(),
            deliveries = batch.ids.len(),
        );
        let started = Instant::now();
        let events = self.runtime.events();
        let queued = batch
            .deliveries()
            .map(|(id, webhook)| DueDelivery {
                id: id.to_owned(),
                webhook_id: webhook.to_owned(),
            })
            .collect();
        let call = events.deliver(queued, self.config.attempt_timeout).instrument(span);
        tokio::pin!(call);
        let result = match batch.lane {
            Lane::Probation => match tokio::time::timeout(QUICK_BATCH, &mut call).await {
                Ok(result) => result,
                Err(_) => {
                    self.graduate(&batch);
                    call.await
                }
            },
            Lane::Quick | Lane::Own => call.await,
        };
        let quick = result.is_ok() && started.elapsed() < QUICK_BATCH;
        match result {
            Ok(outcomes) => {
                for outcome in outcomes {
                    // A delivery its transform skipped is "delivered" with no answer (events.wit).
                    let skipped = outcome.status == DeliveryStatus::Delivered && outcome.status_code.is_none();
                    let counted = match outcome.status {
                        DeliveryStatus::Delivered if skipped => "skipped",
                        DeliveryStatus::Delivered => "delivered",
                        DeliveryStatus::Pending => "retrying",
                        DeliveryStatus::Failed => "failed",
                    };
                    METRICS.deliveries.with_label_values(&[counted]).inc();
                    match outcome.status {
                        DeliveryStatus::Delivered if skipped => {
                            tracing::debug!(delivery = %outcome.id, webhook = %outcome.webhook_id, reason = outcome.error.as_deref(), "skipped by the webhook's transform")
                        }
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
            // The deliveries stay pending in the store. The poller brings back the due ones;
            // fresh ones under the intake's claim (a shared store) are not due to anyone else
            // until it lapses, so they are queued again here after the same pause.
            Err(error) => {
                tracing::error!(%error, webhooks = ?batch.webhooks, "delivery batch failed; it will be retried");
                let again: Vec<DueDelivery> = batch
                    .deliveries()
                    .map(|(id, webhook)| DueDelivery {
                        id: id.to_owned(),
                        webhook_id: webhook.to_owned(),
                    })
                    .collect();
                let dispatcher = self.clone();
                let group = batch.group.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(dispatcher.config.poll_interval).await;
                    let group = (*group != *UNKNOWN_GROUP).then_some(&*group);
                    dispatcher.enqueue(group, again);
                });
            }
        }
        let batches = {
            let mut queues = self.queues.lock().expect("dispatch queues poisoned");
            queues.fair.learn(&batch, quick);
            queues.fair.finish(&batch);
            METRICS.pending_deliveries.set(queues.fair.backlog() as i64);
            if self.stopping.load(Ordering::SeqCst) {
                Vec::new()
            } else {
                queues.fair.next_batches()
            }
        };
        for batch in batches {
            self.spawn_batch(batch);
        }
    }

    /// Takes a probation batch still running out of its lane, so the next newcomer starts.
    fn graduate(self: &Arc<Self>, batch: &Batch) {
        let batches = {
            let mut queues = self.queues.lock().expect("dispatch queues poisoned");
            queues.fair.graduate(batch);
            if self.stopping.load(Ordering::SeqCst) {
                Vec::new()
            } else {
                queues.fair.next_batches()
            }
        };
        for batch in batches {
            self.spawn_batch(batch);
        }
    }

    async fn poll_due(self: Arc<Self>) {
        const PAGE: u32 = 1024;
        while !self.stopping.load(Ordering::SeqCst) {
            let full = match self.runtime.events().due(PAGE).await {
                Ok(due) => {
                    let full = due.len() == PAGE as usize;
                    if !due.is_empty() {
                        self.enqueue(None, due);
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
