//! The retry policy: whether an attempt's result means done, try again later or give up, and
//! when the next try is due (the schedule, its jitter and a receiver's `Retry-After`). Kept in
//! one place so the schedule is written once and the host only configures it.

use crate::ports::AttemptResult;

/// The retry schedule when the host configures none: 5s, 5m, 30m, 2h, 5h, 10h, 10h.
pub const DEFAULT_SCHEDULE_MS: [u64; 7] = [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000];

/// How far each scheduled delay may be moved either way, so retries of many deliveries that
/// failed together do not all come back at once.
pub const JITTER: f64 = 0.2;

/// A `Retry-After` answer may stretch a delay to at most this many times the scheduled one.
pub const RETRY_AFTER_CAP: u64 = 10;

/// When retries happen.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delays before each retry, in milliseconds.
    pub schedule_ms: Vec<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule_ms: DEFAULT_SCHEDULE_MS.to_vec(),
        }
    }
}

impl RetryPolicy {
    /// When the retry after `attempts` attempts is due, or `None` when retries are used up.
    /// `unit` is a random number in [0, 1) for the jitter; `retry_after_ms` is the delay the
    /// receiver asked for, honoured between the scheduled delay and ten times it.
    pub fn next_attempt(&self, now_ms: u64, attempts: usize, unit: f64, retry_after_ms: Option<u64>) -> Option<u64> {
        let scheduled = *self.schedule_ms.get(attempts.checked_sub(1)?)?;
        let jittered = (scheduled as f64 * (1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))) as u64;
        let delay = match retry_after_ms {
            Some(asked) => asked.clamp(scheduled, scheduled.saturating_mul(RETRY_AFTER_CAP)),
            None => jittered,
        };
        Some(now_ms.saturating_add(delay))
    }
}

/// Reads a `Retry-After` value, delta-seconds or an HTTP date, as a delay from `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(at_ms.saturating_sub(now_ms))
}

/// A random number in [0, 1), from the host's random source.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether an answer means done, try again later, or give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done.
    Delivered,
    /// Try again later.
    Retry,
    /// Give up now.
    Fail,
}

/// Decides what an attempt's result means: 2xx is success; connection errors, timeouts,
/// 408, 425, 429 and 5xx are worth retrying; everything else, redirects, refused destinations
/// and requests that cannot be sent included, fails.
pub fn verdict(result: &AttemptResult) -> Verdict {
    match result {
        AttemptResult::Answered(answer) => match answer.status {
            200..=299 => Verdict::Delivered,
            408 | 425 | 429 | 500.. => Verdict::Retry,
            _ => Verdict::Fail,
        },
        AttemptResult::Refused(_) | AttemptResult::Permanent(_) => Verdict::Fail,
        AttemptResult::Failed(_) => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Answer, DESTINATION_REFUSED};

    #[test]
    fn verdicts_follow_the_status_classes() {
        use AttemptResult::*;
        let answered = |code| Answered(Answer::status(code));
        assert_eq!(verdict(&answered(200)), Verdict::Delivered);
        assert_eq!(verdict(&answered(204)), Verdict::Delivered);
        for code in [408, 425, 429, 500, 503] {
            assert_eq!(verdict(&answered(code)), Verdict::Retry, "{code}");
        }
        for code in [301, 302, 400, 404, 410] {
            assert_eq!(verdict(&answered(code)), Verdict::Fail, "{code}");
        }
        assert_eq!(verdict(&Refused(DESTINATION_REFUSED.into())), Verdict::Fail);
        assert_eq!(verdict(&Failed("timeout".into())), Verdict::Retry);
        assert_eq!(verdict(&Permanent("invalid request: url".into())), Verdict::Fail);
    }

    #[test]
    fn retries_follow_the_schedule_with_jitter_then_stop() {
        let policy = RetryPolicy {
            schedule_ms: vec![1_000, 10_000],
        };
        assert_eq!(policy.next_attempt(0, 1, 0.5, None), Some(1_000));
        assert_eq!(policy.next_attempt(0, 1, 0.0, None), Some(800));
        assert_eq!(policy.next_attempt(0, 1, 1.0, None), Some(1_200));
        assert_eq!(policy.next_attempt(100, 2, 0.5, None), Some(10_100));
        assert_eq!(policy.next_attempt(0, 3, 0.5, None), None);
        assert_eq!(policy.next_attempt(0, 0, 0.5, None), None);
        assert_eq!(RetryPolicy::default().schedule_ms.len(), 7);
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let policy = RetryPolicy {
            schedule_ms: vec![1_000],
        };
        assert_eq!(policy.next_attempt(0, 1, 0.5, Some(3_000)), Some(3_000));
        assert_eq!(
            policy.next_attempt(0, 1, 0.5, Some(10)),
            Some(1_000),
            "never below the schedule"
        );
        assert_eq!(
            policy.next_attempt(0, 1, 0.5, Some(60_000)),
            Some(10_000),
            "at most 10x"
        );
        assert_eq!(retry_after_ms("7", 0), Some(7_000));
        assert_eq!(retry_after_ms("Thu, 01 Jan 1970 00:00:10 GMT", 4_000), Some(6_000));
        assert_eq!(retry_after_ms("soon", 0), None);
        let unit = random_unit();
        assert!((0.0..1.0).contains(&unit));
    }
}
