//! Rolling a version out by parts: the candidate beside the active version, either as a canary
//! serving a share of the groups or as a dry run that only answers for comparison, and the rule
//! that drops a canary failing more often than the active version.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use super::Version;

/// What a candidate does beside the active version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serves the calls of this share of the groups, in percent (1 to 99).
    Canary {
        /// The share of groups, by a stable hash of the group id.
        percent: u8,
    },
    /// Answers reads and message intake over a view of the store that discards its writes;
    /// only compared, never used.
    Shadow,
}

impl Mode {
    /// The name shown in `GET /admin/plugin`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Canary { .. } => "canary",
            Mode::Shadow => "shadow",
        }
    }
}

/// When a canary is dropped: its failures per call exceed the active version's by more than
/// `max_error_rate`, over at least [`MIN_CALLS`] calls within `window`.
#[derive(Debug, Clone, Copy)]
pub struct CanaryPolicy {
    /// Largest excess of the canary's failure rate over the active one's.
    pub max_error_rate: f64,
    /// How far back calls count.
    pub window: Duration,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            max_error_rate: 0.01,
            window: Duration::from_secs(60),
        }
    }
}

/// Fewest canary calls within the window on which it is judged.
pub const MIN_CALLS: u64 = 20;

/// Whether a group's calls go to a canary serving `percent` of the groups: the same answer
/// for the same group every time and on every host (64-bit FNV-1a of the id, modulo 100).
pub fn in_canary(group_id: &str, percent: u8) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in group_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % 100 < u64::from(percent)
}

/// Which version served a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The active version.
    Active,
    /// The canary.
    Canary,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    failures: u64,
}

impl Tally {
    fn rate(self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }
}

/// Calls and failures of both arms over the last `window`, in slices of a twelfth of it, so
/// memory stays small whatever the call rate.
#[derive(Debug)]
pub struct ErrorWindow {
    window: Duration,
    slices: VecDeque<(Instant, Tally, Tally)>,
}

impl ErrorWindow {
    /// An empty window of this length.
    pub fn new(window: Duration) -> Self {
        ErrorWindow {
            window,
            slices: VecDeque::new(),
        }
    }

    /// Counts one call of `arm` at `now`.
    pub fn record(&mut self, arm: Arm, failed: bool, now: Instant) {
        let slice = self.window / 12;
        let fresh = match self.slices.back() {
            Some((start, _, _)) => now.saturating_duration_since(*start) >= slice,
            None => true,
        };
        if fresh {
            self.slices.push_back((now, Tally::default(), Tally::default()));
        }
        while let Some((start, _, _)) = self.slices.front() {
            if now.saturating_duration_since(*start) > self.window {
                self.slices.pop_front();
            } else {
                break;
            }
        }
        let (_, active, canary) = self.slices.back_mut().expect("a slice was just ensured");
        let tally = match arm {
            Arm::Active => active,
            Arm::Canary => canary,
        };
        tally.calls += 1;
        tally.failures += u64::from(failed);
    }

    fn totals(&self) -> (Tally, Tally) {
        self.slices
            .iter()
            .fold((Tally::default(), Tally::default()), |(a, c), (_, active, canary)| {
                (
                    Tally {
                        calls: a.calls + active.calls,
                        failures: a.failures + active.failures,
                    },
                    Tally {
                        calls: c.calls + canary.calls,
                        failures: c.failures + canary.failures,
                    },
                )
            })
    }

    /// Why the canary must go, if it must: the rule of [`CanaryPolicy`].
    pub fn verdict(&self, max_error_rate: f64) -> Option<String> {
        let (active, canary) = self.totals();
        if canary.calls < MIN_CALLS {
            return None;
        }
        let excess = canary.rate() - active.rate();
        (excess > max_error_rate).then(|| {
            format!(
                "{} of its {} calls failed ({:.1} %) against {} of the active version's {} ({:.1} %), more than {:.1} points over",
                canary.failures,
                canary.calls,
                canary.rate() * 100.0,
                active.failures,
                active.calls,
                active.rate() * 100.0,
                max_error_rate * 100.0,
            )
        })
    }
}

/// A version beside the active one.
pub struct Candidate {
    /// The version.
    pub version: Version,
    /// What it does.
    pub mode: Mode,
    /// The canary's calls and failures beside the active version's.
    pub(super) errors: std::sync::Mutex<ErrorWindow>,
}

impl Candidate {
    /// A candidate whose failures are counted over `window`.
    pub fn new(version: Version, mode: Mode, window: Duration) -> Self {
        Candidate {
            version,
            mode,
            errors: std::sync::Mutex::new(ErrorWindow::new(window)),
        }
    }

    /// Whether calls of this group go to this candidate.
    pub fn serves(&self, group_id: &str) -> bool {
        match self.mode {
            Mode::Canary { percent } => in_canary(group_id, percent),
            Mode::Shadow => false,
        }
    }
}

/// A canary dropped because it failed too often.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// Hex SHA-256 of the dropped version.
    pub sha256: String,
    /// Why it was dropped.
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_share_is_stable_and_close_to_its_percent() {
        let groups: Vec<String> = (0..10_000).map(|i| format!("group-{i}")).collect();
        let share = groups.iter().filter(|g| in_canary(g, 30)).count();
        assert!((2_700..3_300).contains(&share), "{share} of 10000 at 30 %");
        assert!(groups.iter().all(|g| in_canary(g, 30) == in_canary(g, 30)));
        // A group in a smaller canary stays in every larger one.
        assert!(groups.iter().filter(|g| in_canary(g, 10)).all(|g| in_canary(g, 50)));
    }

    #[test]
    fn a_canary_is_judged_after_twenty_calls_by_its_excess_over_the_active_one() {
        let now = Instant::now();
        let mut window = ErrorWindow::new(Duration::from_secs(60));
        for _ in 0..100 {
            window.record(Arm::Active, false, now);
        }
        for _ in 0..19 {
            window.record(Arm::Canary, true, now);
        }
        assert_eq!(window.verdict(0.01), None, "19 calls are too few");
        window.record(Arm::Canary, true, now);
        assert!(window.verdict(0.01).unwrap().contains("20 of its 20 calls failed"));
    }

    #[test]
    fn failures_the_active_version_shares_do_not_count_against_the_canary() {
        let now = Instant::now();
        let mut window = ErrorWindow::new(Duration::from_secs(60));
        for i in 0..100 {
            window.record(Arm::Active, i % 10 == 0, now);
            window.record(Arm::Canary, i % 10 == 0, now);
        }
        assert_eq!(window.verdict(0.01), None);
        window.record(Arm::Canary, true, now);
        window.record(Arm::Canary, true, now);
        assert!(window.verdict(0.01).is_some(), "11.8 % against 10 %");
    }

    #[test]
    fn calls_older_than_the_window_are_forgotten() {
        let start = Instant::now();
        let mut window = ErrorWindow::new(Duration::from_secs(60));
        for _ in 0..30 {
            window.record(Arm::Canary, true, start);
        }
        assert!(window.verdict(0.01).is_some());
        window.record(Arm::Canary, false, start + Duration::from_secs(70));
        assert_eq!(window.verdict(0.01), None);
    }
}
