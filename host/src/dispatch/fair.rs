//! Fair sharing of the dispatcher's batch slots: groups take turns, then a group's webhooks
//! take turns, each within its cap, so a group with many slow receivers holds at most its share
//! and another group's next batch gets the next free slot.
//!
//! Each group has three lanes. Webhooks whose receivers answer quickly share batches in the
//! quick lane, with a few batches of a group running at once: their deliveries wait there for
//! a moment instead of each starting its own plugin call, so a call carries up to a batch
//! however thinly the deliveries are spread over webhooks. A webhook not seen yet runs its
//! batches alone in the probation lane, also of a few batches at once, until it shows itself
//! quick or slow; a probation batch still running after a moment leaves the lane at once, so a
//! slow newcomer never holds it. A webhook known to be slow gets batches of its own under the
//! caps above, so its wait holds up no other webhook's outcomes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::delivery_id::DeliveryId;

/// How many batches may run at once, overall and per group and webhook, and how big they are.
#[derive(Debug, Clone, Copy)]
pub struct Shares {
    /// Most deliveries in one batch.
    pub batch_size: usize,
    /// Most batches running at once overall.
    pub total: usize,
    /// Most batches of one group running at once: below `total`, so a group whose receivers all
    /// hang leaves slots for the others.
    pub per_group: usize,
    /// Most batches of one webhook running at once; past the first, only while the running
    /// ones carry fewer than [`SMALL_BATCH`] of its deliveries.
    pub per_webhook: usize,
    /// Most batches of quick webhooks (see [`FairQueue::learn`]) of one group running at once,
    /// within `per_group`.
    pub quick_per_group: usize,
    /// Most batches of webhooks not yet known to be quick or slow of one group running at once,
    /// within `per_group`.
    pub probation_per_group: usize,
}

/// Which of its group's lanes a batch runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Webhooks whose batches end quickly, several to a batch.
    Quick,
    /// One webhook not yet known to be quick or slow.
    Probation,
    /// One webhook known to be slow.
    Own,
}

/// What the dispatcher learnt of a webhook's receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speed {
    Quick,
    Slow,
}

/// Deliveries attempted by one plugin call, all of one group: of one webhook, or of several
/// whose receivers answered quickly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The group the webhooks belong to (empty when not known).
    pub group: Arc<str>,
    /// The webhooks, each once, the first one's deliveries first.
    pub webhooks: Vec<String>,
    /// The deliveries' ids, each webhook's together, in the order of `webhooks`.
    pub ids: Vec<String>,
    /// How many of `ids` are each webhook's, in the order of `webhooks`.
    pub taken: Vec<usize>,
    /// The lane it runs in.
    pub lane: Lane,
    /// Tells running batches apart.
    pub id: u64,
}

impl Batch {
    /// Each delivery's id with its webhook's.
    pub fn deliveries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.webhooks
            .iter()
            .zip(&self.taken)
            .flat_map(|(webhook, &taken)| std::iter::repeat_n(webhook.as_str(), taken))
            .zip(&self.ids)
            .map(|(webhook, id)| (id.as_str(), webhook))
    }
}

#[derive(Default)]
struct GroupQueue {
    /// Webhooks with deliveries ready and a free slot of their own, in turn order.
    turn: VecDeque<String>,
    /// The same, of the webhooks known to be quick.
    quick_turn: VecDeque<String>,
    /// The same, of the webhooks not yet known to be quick or slow.
    new_turn: VecDeque<String>,
    /// Batches running.
    running: usize,
    /// Batches of the quick lane running.
    quick_running: usize,
    /// Batches of the probation lane running.
    probation_running: usize,
    /// Deliveries queued or running.
    backlog: usize,
    /// Whether the group is in the turn of groups.
    in_turn: bool,
}

impl GroupQueue {
    /// The turn of the webhooks of a lane.
    fn lane_turn(&mut self, lane: Lane) -> &mut VecDeque<String> {
        match lane {
            Lane::Quick => &mut self.quick_turn,
            Lane::Probation => &mut self.new_turn,
            Lane::Own => &mut self.turn,
        }
    }
}

struct WebhookQueue {
    group: Arc<str>,
    ready: VecDeque<DeliveryId>,
    /// Batches running with deliveries of this webhook.
    running: usize,
    /// This webhook's deliveries in those batches.
    in_flight: usize,
    in_turn: bool,
}

/// A webhook whose running batches carry fewer of its deliveries than this may start another
/// at once. Under light load batches are this small, and a delivery that comes in while one
/// runs is not held back by it (the p99 at a steady 1,000 msg/s). Under load the batches are
/// larger and the deliveries that come in gather for the next one instead: one plugin call of
/// up to a whole batch rather than two half-full ones (`bench e2e`: 2.1 `deliver` calls per 100
/// deliveries instead of 5.5, and 7 % less host CPU per delivery).
pub const SMALL_BATCH: usize = 8;

/// The deliveries waiting or running, by group and webhook, and whose turn is next.
pub struct FairQueue {
    shares: Shares,
    groups: HashMap<Arc<str>, GroupQueue>,
    webhooks: HashMap<String, WebhookQueue>,
    /// Groups with a runnable webhook and a free slot of their own, in turn order.
    turn: VecDeque<Arc<str>>,
    running: usize,
    /// Every delivery queued or running, so none runs twice at once.
    known: HashSet<DeliveryId>,
    /// What the last batch of each webhook showed.
    speeds: HashMap<String, Speed>,
    /// The probation batches running, by id, with their group.
    on_probation: HashMap<u64, Arc<str>>,
    /// The id of the next batch.
    next_id: u64,
}

/// Most webhooks whose speed is remembered; past it the memory starts again, and each webhook
/// goes through probation again.
const REMEMBERED_SPEEDS: usize = 100_000;

impl FairQueue {
    /// An empty queue sharing slots as `shares` says.
    pub fn new(shares: Shares) -> Self {
        FairQueue {
            shares: Shares {
                batch_size: shares.batch_size.max(1),
                total: shares.total.max(1),
                per_group: shares.per_group.clamp(1, shares.total.max(1)),
                per_webhook: shares.per_webhook.max(1),
                quick_per_group: shares.quick_per_group.max(1),
                probation_per_group: shares.probation_per_group.max(1),
            },
            groups: HashMap::new(),
            webhooks: HashMap::new(),
            turn: VecDeque::new(),
            running: 0,
            known: HashSet::new(),
            speeds: HashMap::new(),
            on_probation: HashMap::new(),
            next_id: 0,
        }
    }

    /// Records how long a batch took: its webhooks may share batches while their batches end
    /// quickly, and run alone again from the first one that does not.
    pub fn learn(&mut self, batch: &Batch, quick: bool) {
        let speed = if quick { Speed::Quick } else { Speed::Slow };
        for webhook in &batch.webhooks {
            if self.speeds.get(webhook) == Some(&speed) {
                continue;
            }
            if self.speeds.len() >= REMEMBERED_SPEEDS {
                self.speeds.clear();
            }
            self.speeds.insert(webhook.clone(), speed);
        }
    }

    /// Takes a probation batch that is still running out of its lane, its webhook now known to
    /// be slow, so the lane's slot goes to the next newcomer.
    pub fn graduate(&mut self, batch: &Batch) {
        let Some(group) = self.on_probation.remove(&batch.id) else {
            return;
        };
        if let Some(queue) = self.groups.get_mut(&group) {
            queue.probation_running -= 1;
        }
        self.learn(batch, false);
        self.offer_group(&group);
    }

    fn lane_of(&self, webhook: &str) -> Lane {
        match self.speeds.get(webhook) {
            Some(Speed::Quick) => Lane::Quick,
            Some(Speed::Slow) => Lane::Own,
            None => Lane::Probation,
        }
    }

    /// Queues a delivery of a webhook of `group`; false when it is already queued or running.
    /// A webhook keeps the group it was first queued with while it has work here.
    pub fn push(&mut self, group: &str, webhook: &str, delivery: String) -> bool {
        let delivery = DeliveryId::from(delivery);
        if !self.known.insert(delivery.clone()) {
            return false;
        }
        let queue = match self.webhooks.get_mut(webhook) {
            Some(queue) => queue,
            None => {
                let group = match self.groups.get_key_value(group) {
                    Some((name, _)) => name.clone(),
                    None => Arc::from(group),
                };
                self.webhooks.entry(webhook.to_owned()).or_insert(WebhookQueue {
                    group,
                    ready: VecDeque::new(),
                    running: 0,
                    in_flight: 0,
                    in_turn: false,
                })
            }
        };
        queue.ready.push_back(delivery);
        let group = queue.group.clone();
        self.groups.entry(group.clone()).or_default().backlog += 1;
        self.offer_webhook(webhook);
        true
    }

    /// Takes the batches that may start now, groups and webhooks taking turns.
    pub fn next_batches(&mut self) -> Vec<Batch> {
        let mut batches = Vec::new();
        while self.running < self.shares.total {
            let Some(group) = self.turn.pop_front() else { break };
            let queue = self.groups.get_mut(&group).expect("a group in turn is queued");
            queue.in_turn = false;
            let lane = if !queue.quick_turn.is_empty() && queue.quick_running < self.shares.quick_per_group {
                Lane::Quick
            } else if !queue.new_turn.is_empty() && queue.probation_running < self.shares.probation_per_group {
                Lane::Probation
            } else {
                Lane::Own
            };
            let Some(webhook) = queue.lane_turn(lane).pop_front() else {
                continue;
            };
            let mut batch = Batch {
                group: group.clone(),
                webhooks: Vec::new(),
                ids: Vec::new(),
                taken: Vec::new(),
                lane,
                id: self.next_id,
            };
            self.next_id += 1;
            self.take(&mut batch, &webhook);
            if lane == Lane::Quick {
                self.add_quick_webhooks(&mut batch);
            }
            let queue = self.groups.get_mut(&group).expect("a group in turn is queued");
            queue.running += 1;
            queue.quick_running += usize::from(lane == Lane::Quick);
            if lane == Lane::Probation {
                queue.probation_running += 1;
                self.on_probation.insert(batch.id, group.clone());
            }
            self.running += 1;
            for webhook in &batch.webhooks {
                self.offer_webhook(webhook);
            }
            self.offer_group(&group);
            batches.push(batch);
        }
        batches
    }

    /// Moves a webhook's ready deliveries, as many as the batch has room for, into the batch.
    fn take(&mut self, batch: &mut Batch, webhook: &str) {
        let hook = self.webhooks.get_mut(webhook).expect("a webhook in turn is queued");
        hook.in_turn = false;
        let take = hook.ready.len().min(self.shares.batch_size - batch.ids.len());
        batch.ids.extend(hook.ready.drain(..take).map(|id| id.to_string()));
        hook.running += 1;
        hook.in_flight += take;
        batch.webhooks.push(webhook.to_owned());
        batch.taken.push(take);
    }

    /// Fills a batch of the quick lane with the deliveries of the quick webhooks next in turn;
    /// one that is no longer quick moves to the turn of its lane.
    fn add_quick_webhooks(&mut self, batch: &mut Batch) {
        while batch.ids.len() < self.shares.batch_size {
            let lane = {
                let queue = self.groups.get(&batch.group).expect("the batch's group is queued");
                match queue.quick_turn.front() {
                    Some(webhook) => self.lane_of(webhook),
                    None => break,
                }
            };
            let queue = self.groups.get_mut(&batch.group).expect("the batch's group is queued");
            let webhook = queue.quick_turn.pop_front().expect("looked at above");
            match lane {
                Lane::Quick => self.take(batch, &webhook),
                other => queue.lane_turn(other).push_back(webhook),
            }
        }
    }

    /// Records that a batch ended: its deliveries are no longer known here, and its slots are
    /// free for the next turns.
    pub fn finish(&mut self, batch: &Batch) {
        for id in &batch.ids {
            self.known.remove(&DeliveryId::new(id));
        }
        self.running -= 1;
        if let Some(queue) = self.groups.get_mut(&batch.group) {
            queue.running -= 1;
            queue.quick_running -= usize::from(batch.lane == Lane::Quick);
            if self.on_probation.remove(&batch.id).is_some() {
                queue.probation_running -= 1;
            }
            queue.backlog -= batch.ids.len();
        }
        for (webhook, &taken) in batch.webhooks.iter().zip(&batch.taken) {
            if let Some(hook) = self.webhooks.get_mut(webhook) {
                hook.running -= 1;
                hook.in_flight -= taken;
                if hook.running == 0 && hook.ready.is_empty() {
                    self.webhooks.remove(webhook);
                }
            }
            self.offer_webhook(webhook);
        }
        self.offer_group(&batch.group);
        if let Some(queue) = self.groups.get(&batch.group)
            && queue.running == 0
            && queue.backlog == 0
        {
            self.groups.remove(&batch.group);
        }
    }

    /// Drops every delivery not yet started (at shutdown: they stay pending in the store);
    /// answers their ids.
    pub fn clear_ready(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        for hook in self.webhooks.values_mut() {
            for id in hook.ready.drain(..) {
                self.known.remove(&id);
                dropped.push(id.to_string());
                if let Some(queue) = self.groups.get_mut(&hook.group) {
                    queue.backlog -= 1;
                }
            }
            hook.in_turn = false;
        }
        self.webhooks.retain(|_, hook| hook.running > 0);
        for queue in self.groups.values_mut() {
            queue.turn.clear();
            queue.quick_turn.clear();
            queue.new_turn.clear();
            queue.in_turn = false;
        }
        self.groups.retain(|_, queue| queue.running > 0);
        self.turn.clear();
        dropped
    }

    /// Deliveries queued or running.
    pub fn backlog(&self) -> usize {
        self.known.len()
    }

    /// Deliveries of `group` queued or running.
    pub fn group_backlog(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |queue| queue.backlog)
    }

    /// Batches running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// The ids of every delivery queued or running.
    pub fn known(&self) -> impl Iterator<Item = String> + '_ {
        self.known.iter().map(DeliveryId::to_string)
    }

    /// The `n` groups with the most deliveries queued or running, with their backlog and
    /// running batches, most first.
    pub fn busiest_groups(&self, n: usize) -> Vec<(Arc<str>, usize, usize)> {
        let mut groups: Vec<_> = self
            .groups
            .iter()
            .map(|(name, queue)| (name.clone(), queue.backlog, queue.running))
            .collect();
        groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        groups.truncate(n);
        groups
    }

    /// Puts a webhook in its group's turn when it has work and a free slot of its own.
    fn offer_webhook(&mut self, webhook: &str) {
        let lane = self.lane_of(webhook);
        let Some(hook) = self.webhooks.get_mut(webhook) else {
            return;
        };
        let may_start = hook.running == 0 || (hook.running < self.shares.per_webhook && hook.in_flight < SMALL_BATCH);
        if hook.in_turn || hook.ready.is_empty() || !may_start {
            return;
        }
        hook.in_turn = true;
        let group = hook.group.clone();
        let queue = self.groups.entry(group.clone()).or_default();
        queue.lane_turn(lane).push_back(webhook.to_owned());
        self.offer_group(&group);
    }

    /// Puts a group in the turn of groups when one of its webhooks may run and it has a free
    /// slot of its own.
    fn offer_group(&mut self, group: &Arc<str>) {
        let Some(queue) = self.groups.get_mut(group) else {
            return;
        };
        let runnable = !queue.turn.is_empty()
            || (!queue.quick_turn.is_empty() && queue.quick_running < self.shares.quick_per_group)
            || (!queue.new_turn.is_empty() && queue.probation_running < self.shares.probation_per_group);
        if queue.in_turn || !runnable || queue.running >= self.shares.per_group {
            return;
        }
        queue.in_turn = true;
        self.turn.push_back(group.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(total: usize, per_group: usize) -> Shares {
        Shares {
            batch_size: 2,
            total,
            per_group,
            per_webhook: 2,
            quick_per_group: 2,
            probation_per_group: per_group,
        }
    }

    fn fill(queue: &mut FairQueue, group: &str, webhooks: usize, deliveries: usize) {
        for w in 0..webhooks {
            for d in 0..deliveries {
                assert!(queue.push(group, &format!("{group}-w{w}"), format!("{group}-w{w}-d{d}")));
            }
        }
    }

    #[test]
    fn a_group_with_many_busy_webhooks_leaves_slots_for_another_group() {
        let mut queue = FairQueue::new(shares(8, 4));
        fill(&mut queue, "a", 10, 10);
        let started = queue.next_batches();
        assert_eq!(started.len(), 4, "a group takes at most its own share");
        assert!(started.iter().all(|batch| &*batch.group == "a"));
        fill(&mut queue, "b", 1, 1);
        let started = queue.next_batches();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].webhooks, ["b-w0"]);
        assert_eq!(queue.running(), 5);
    }

    #[test]
    fn groups_take_turns_for_free_slots() {
        let mut queue = FairQueue::new(shares(4, 4));
        fill(&mut queue, "a", 4, 8);
        let first = queue.next_batches();
        assert_eq!(first.len(), 4);
        fill(&mut queue, "b", 4, 8);
        fill(&mut queue, "c", 4, 8);
        assert!(queue.next_batches().is_empty(), "every slot is taken");
        // As a's batches end, the free slots go to b and c in turn before a again.
        let mut next = Vec::new();
        for batch in &first {
            queue.finish(batch);
            next.extend(queue.next_batches());
        }
        let groups: Vec<&str> = next.iter().map(|batch| &*batch.group).collect();
        assert_eq!(groups, ["b", "c", "a", "b"]);
    }

    #[test]
    fn a_webhook_runs_at_most_its_own_batches_and_the_next_when_one_ends() {
        let mut queue = FairQueue::new(shares(8, 8));
        fill(&mut queue, "a", 1, 9);
        let started = queue.next_batches();
        assert_eq!(started.len(), 2);
        assert_eq!(started[0].ids, ["a-w0-d0", "a-w0-d1"]);
        assert_eq!(started[1].ids, ["a-w0-d2", "a-w0-d3"]);
        assert!(
            !queue.push("a", "a-w0", "a-w0-d0".into()),
            "a running delivery is not queued twice"
        );
        queue.finish(&started[0]);
        let next = queue.next_batches();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].ids, ["a-w0-d4", "a-w0-d5"]);
        assert_eq!(queue.group_backlog("a"), 7);
    }

    #[test]
    fn a_webhook_starts_a_second_batch_only_beside_a_small_one() {
        let mut queue = FairQueue::new(Shares {
            batch_size: 64,
            total: 8,
            per_group: 8,
            per_webhook: 2,
            quick_per_group: 4,
            probation_per_group: 4,
        });
        // Light load: one delivery running, the next starts at once beside it.
        fill(&mut queue, "a", 1, 1);
        let first = queue.next_batches();
        assert_eq!(first.len(), 1);
        assert!(queue.push("a", "a-w0", "late-0".into()));
        let second = queue.next_batches();
        assert_eq!(second.len(), 1, "a batch of one does not hold back the next delivery");
        // Under load: while a large batch runs, the deliveries that come in gather.
        queue.finish(&first[0]);
        queue.finish(&second[0]);
        fill(&mut queue, "b", 1, SMALL_BATCH);
        let large = queue.next_batches();
        assert_eq!(large.len(), 1);
        assert_eq!(large[0].ids.len(), SMALL_BATCH);
        for d in 0..100 {
            assert!(queue.push("b", "b-w0", format!("late-{d}")));
        }
        assert!(queue.next_batches().is_empty(), "they wait for the running batch");
        queue.finish(&large[0]);
        let gathered = queue.next_batches();
        assert_eq!(gathered.len(), 1, "a full batch, and no second beside it");
        assert_eq!(gathered[0].ids.len(), 64);
        queue.finish(&gathered[0]);
        assert_eq!(queue.next_batches()[0].ids.len(), 36);
    }

    #[test]
    fn finished_work_leaves_nothing_behind() {
        let mut queue = FairQueue::new(shares(8, 2));
        fill(&mut queue, "a", 3, 3);
        fill(&mut queue, "b", 1, 1);
        while queue.backlog() > 0 {
            let batches = queue.next_batches();
            assert!(!batches.is_empty());
            for batch in &batches {
                queue.finish(batch);
            }
        }
        assert_eq!(queue.running(), 0);
        assert!(queue.groups.is_empty() && queue.webhooks.is_empty() && queue.turn.is_empty());
        assert_eq!(queue.group_backlog("a"), 0);
    }

    #[test]
    fn clearing_at_shutdown_keeps_only_running_batches() {
        let mut queue = FairQueue::new(shares(2, 2));
        fill(&mut queue, "a", 2, 4);
        let running = queue.next_batches();
        assert_eq!(running.len(), 2);
        queue.clear_ready();
        assert_eq!(queue.backlog(), 4);
        for batch in &running {
            queue.finish(batch);
        }
        assert_eq!(queue.backlog(), 0);
        assert!(queue.next_batches().is_empty());
        assert!(queue.groups.is_empty() && queue.webhooks.is_empty());
    }

    #[test]
    fn the_busiest_groups_come_first() {
        let mut queue = FairQueue::new(shares(8, 8));
        fill(&mut queue, "small", 1, 1);
        fill(&mut queue, "large", 3, 3);
        fill(&mut queue, "medium", 1, 4);
        let names: Vec<_> = queue.busiest_groups(2).into_iter().map(|(name, ..)| name).collect();
        assert_eq!(names, [Arc::from("large"), Arc::from("medium")]);
    }

    fn learned(queue: &mut FairQueue, group: &str, webhooks: &[&str], quick: bool) {
        queue.learn(
            &Batch {
                group: Arc::from(group),
                webhooks: webhooks.iter().map(|w| w.to_string()).collect(),
                ids: Vec::new(),
                taken: vec![0; webhooks.len()],
                lane: Lane::Own,
                id: 0,
            },
            quick,
        );
    }

    #[test]
    fn quick_webhooks_of_a_group_share_batches_and_others_run_alone() {
        let mut queue = FairQueue::new(Shares {
            batch_size: 4,
            total: 8,
            per_group: 8,
            per_webhook: 2,
            quick_per_group: 4,
            probation_per_group: 4,
        });
        learned(&mut queue, "a", &["a-w0", "a-w2", "a-w3"], true);
        learned(&mut queue, "b", &["b-w0"], true);
        fill(&mut queue, "a", 4, 1);
        fill(&mut queue, "b", 1, 1);
        let started = queue.next_batches();
        let parts: Vec<(&str, Vec<&str>)> = started
            .iter()
            .map(|b| (&*b.group, b.webhooks.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            parts,
            [
                ("a", vec!["a-w0", "a-w2", "a-w3"]),
                ("b", vec!["b-w0"]),
                ("a", vec!["a-w1"])
            ],
            "a-w1 is not known to be quick: it keeps its turn and runs alone; b's never join a's"
        );
        assert_eq!(started[0].ids, ["a-w0-d0", "a-w2-d0", "a-w3-d0"]);
        // A failed batch's deliveries are queued again each with its own webhook.
        assert_eq!(
            started[0].deliveries().collect::<Vec<_>>(),
            [("a-w0-d0", "a-w0"), ("a-w2-d0", "a-w2"), ("a-w3-d0", "a-w3")]
        );
        assert_eq!(queue.running(), 3);
        for batch in &started {
            queue.finish(batch);
        }
        assert_eq!(queue.backlog(), 0);
        assert!(queue.groups.is_empty() && queue.webhooks.is_empty());
    }

    #[test]
    fn a_shared_batch_holds_at_most_a_batch_and_counts_against_each_webhook() {
        let mut queue = FairQueue::new(Shares {
            batch_size: 4,
            total: 8,
            per_group: 8,
            per_webhook: 1,
            quick_per_group: 4,
            probation_per_group: 4,
        });
        learned(&mut queue, "a", &["a-w0", "a-w1", "a-w2"], true);
        fill(&mut queue, "a", 3, 3);
        let started = queue.next_batches();
        assert_eq!(started.len(), 2);
        assert_eq!(started[0].ids, ["a-w0-d0", "a-w0-d1", "a-w0-d2", "a-w1-d0"]);
        assert_eq!(started[0].webhooks, ["a-w0", "a-w1"]);
        // The first batch was full before a-w2's turn: it starts the next one.
        assert_eq!(started[1].webhooks, ["a-w2"]);
        assert_eq!(started[1].ids, ["a-w2-d0", "a-w2-d1", "a-w2-d2"]);
        assert!(
            queue.next_batches().is_empty(),
            "each webhook has its one batch running"
        );
        queue.finish(&started[0]);
        let last = queue.next_batches();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].ids, ["a-w1-d1", "a-w1-d2"]);
    }

    #[test]
    fn a_slow_batch_sends_its_webhooks_back_to_batches_of_their_own() {
        let mut queue = FairQueue::new(shares(8, 8));
        learned(&mut queue, "a", &["a-w0", "a-w1"], true);
        learned(&mut queue, "a", &["a-w0", "a-w1"], false);
        fill(&mut queue, "a", 2, 1);
        let started = queue.next_batches();
        assert_eq!(started.len(), 2);
        assert!(started.iter().all(|batch| batch.webhooks.len() == 1));
    }

    #[test]
    fn deliveries_of_quick_webhooks_wait_for_their_lane_while_others_start() {
        let mut queue = FairQueue::new(Shares {
            batch_size: 32,
            total: 8,
            per_group: 8,
            per_webhook: 2,
            quick_per_group: 1,
            probation_per_group: 4,
        });
        let quick: Vec<String> = (0..10).map(|w| format!("a-w{w}")).collect();
        let quick: Vec<&str> = quick.iter().map(String::as_str).collect();
        learned(&mut queue, "a", &quick, true);
        assert!(queue.push("a", "a-w0", "first".into()));
        let started = queue.next_batches();
        assert_eq!(started.len(), 1);
        // While the lane's one batch runs, the quick webhooks' deliveries gather; a webhook
        // not known to be quick starts at once.
        fill(&mut queue, "a", 10, 2);
        assert!(queue.push("a", "a-slow", "slow-d0".into()));
        let next = queue.next_batches();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].webhooks, ["a-slow"]);
        queue.finish(&started[0]);
        let gathered = queue.next_batches();
        assert_eq!(gathered.len(), 1);
        assert_eq!(
            gathered[0].ids.len(),
            20,
            "one plugin call for every delivery that waited"
        );
        assert_eq!(gathered[0].webhooks.len(), 10);
    }

    #[test]
    fn newcomers_go_a_few_at_a_time_and_one_still_running_leaves_probation() {
        let mut queue = FairQueue::new(Shares {
            batch_size: 32,
            total: 64,
            per_group: 64,
            per_webhook: 2,
            quick_per_group: 4,
            probation_per_group: 2,
        });
        learned(&mut queue, "a", &["a-slow"], false);
        fill(&mut queue, "a", 5, 1);
        assert!(queue.push("a", "a-slow", "slow-d0".into()));
        let started = queue.next_batches();
        let lanes: Vec<(Lane, &str)> = started.iter().map(|b| (b.lane, b.webhooks[0].as_str())).collect();
        assert_eq!(
            lanes,
            [
                (Lane::Probation, "a-w0"),
                (Lane::Probation, "a-w1"),
                (Lane::Own, "a-slow")
            ],
            "two newcomers at once; a webhook known to be slow does not wait for them"
        );
        // a-w0 answers quickly and joins the quick lane; a-w1 is still running after a moment:
        // it leaves probation, known to be slow, and the next newcomer starts.
        queue.learn(&started[0], true);
        queue.finish(&started[0]);
        queue.graduate(&started[1]);
        let next = queue.next_batches();
        let lanes: Vec<(Lane, &str)> = next.iter().map(|b| (b.lane, b.webhooks[0].as_str())).collect();
        assert_eq!(lanes, [(Lane::Probation, "a-w2"), (Lane::Probation, "a-w3")]);
        assert_eq!(queue.lane_of("a-w0"), Lane::Quick);
        assert_eq!(queue.lane_of("a-w1"), Lane::Own);
        // Its end later frees no probation slot a second time.
        queue.learn(&started[1], false);
        queue.finish(&started[1]);
        assert!(queue.next_batches().is_empty(), "the lane is full with a-w2 and a-w3");
        queue.finish(&next[0]);
        assert_eq!(queue.next_batches()[0].webhooks, ["a-w4"]);
    }
}
