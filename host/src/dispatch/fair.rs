//! Fair sharing of the dispatcher's batch slots: groups take turns, then a group's webhooks
//! take turns, each within its cap, so a group with many slow receivers holds at most its share
//! and another group's next batch gets the next free slot.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

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
    /// Most batches of one webhook running at once.
    pub per_webhook: usize,
}

/// Deliveries attempted by one plugin call, all of one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The group the webhook belongs to (empty when not known).
    pub group: Arc<str>,
    /// The webhook.
    pub webhook: String,
    /// The deliveries' ids.
    pub ids: Vec<String>,
}

#[derive(Default)]
struct GroupQueue {
    /// Webhooks with deliveries ready and a free slot of their own, in turn order.
    turn: VecDeque<String>,
    /// Batches running.
    running: usize,
    /// Deliveries queued or running.
    backlog: usize,
    /// Whether the group is in the turn of groups.
    in_turn: bool,
}

struct WebhookQueue {
    group: Arc<str>,
    ready: VecDeque<String>,
    running: usize,
    in_turn: bool,
}

/// The deliveries waiting or running, by group and webhook, and whose turn is next.
pub struct FairQueue {
    shares: Shares,
    groups: HashMap<Arc<str>, GroupQueue>,
    webhooks: HashMap<String, WebhookQueue>,
    /// Groups with a runnable webhook and a free slot of their own, in turn order.
    turn: VecDeque<Arc<str>>,
    running: usize,
    /// Every delivery queued or running, so none runs twice at once.
    known: HashSet<String>,
}

impl FairQueue {
    /// An empty queue sharing slots as `shares` says.
    pub fn new(shares: Shares) -> Self {
        FairQueue {
            shares: Shares {
                batch_size: shares.batch_size.max(1),
                total: shares.total.max(1),
                per_group: shares.per_group.clamp(1, shares.total.max(1)),
                per_webhook: shares.per_webhook.max(1),
            },
            groups: HashMap::new(),
            webhooks: HashMap::new(),
            turn: VecDeque::new(),
            running: 0,
            known: HashSet::new(),
        }
    }

    /// Queues a delivery of a webhook of `group`; false when it is already queued or running.
    /// A webhook keeps the group it was first queued with while it has work here.
    pub fn push(&mut self, group: &str, webhook: &str, delivery: String) -> bool {
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
            let Some(webhook) = queue.turn.pop_front() else {
                continue;
            };
            let hook = self.webhooks.get_mut(&webhook).expect("a webhook in turn is queued");
            hook.in_turn = false;
            let take = hook.ready.len().min(self.shares.batch_size);
            let ids: Vec<String> = hook.ready.drain(..take).collect();
            hook.running += 1;
            queue.running += 1;
            self.running += 1;
            batches.push(Batch {
                group: group.clone(),
                webhook: webhook.clone(),
                ids,
            });
            self.offer_webhook(&webhook);
            self.offer_group(&group);
        }
        batches
    }

    /// Records that a batch ended: its deliveries are no longer known here, and its slots are
    /// free for the next turns.
    pub fn finish(&mut self, batch: &Batch) {
        for id in &batch.ids {
            self.known.remove(id);
        }
        self.running -= 1;
        if let Some(queue) = self.groups.get_mut(&batch.group) {
            queue.running -= 1;
            queue.backlog -= batch.ids.len();
        }
        if let Some(hook) = self.webhooks.get_mut(&batch.webhook) {
            hook.running -= 1;
            if hook.running == 0 && hook.ready.is_empty() {
                self.webhooks.remove(&batch.webhook);
            }
        }
        self.offer_webhook(&batch.webhook);
        self.offer_group(&batch.group);
        if let Some(queue) = self.groups.get(&batch.group)
            && queue.running == 0
            && queue.backlog == 0
        {
            self.groups.remove(&batch.group);
        }
    }

    /// Drops every delivery not yet started (at shutdown: they stay pending in the store).
    pub fn clear_ready(&mut self) {
        for hook in self.webhooks.values_mut() {
            for id in hook.ready.drain(..) {
                self.known.remove(&id);
                if let Some(queue) = self.groups.get_mut(&hook.group) {
                    queue.backlog -= 1;
                }
            }
            hook.in_turn = false;
        }
        self.webhooks.retain(|_, hook| hook.running > 0);
        for queue in self.groups.values_mut() {
            queue.turn.clear();
            queue.in_turn = false;
        }
        self.groups.retain(|_, queue| queue.running > 0);
        self.turn.clear();
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
    pub fn known(&self) -> impl Iterator<Item = &String> {
        self.known.iter()
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
        let Some(hook) = self.webhooks.get_mut(webhook) else {
            return;
        };
        if hook.in_turn || hook.ready.is_empty() || hook.running >= self.shares.per_webhook {
            return;
        }
        hook.in_turn = true;
        let group = hook.group.clone();
        let queue = self.groups.entry(group.clone()).or_default();
        queue.turn.push_back(webhook.to_owned());
        self.offer_group(&group);
    }

    /// Puts a group in the turn of groups when one of its webhooks may run and it has a free
    /// slot of its own.
    fn offer_group(&mut self, group: &Arc<str>) {
        let Some(queue) = self.groups.get_mut(group) else {
            return;
        };
        if queue.in_turn || queue.turn.is_empty() || queue.running >= self.shares.per_group {
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
        assert_eq!(started[0].webhook, "b-w0");
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
}
