//! The dry run's comparison: each answer reduced to what must agree between two versions
//! (ids the plugin makes up at random left out), then counted and, when they differ, logged.

use serde_json::Value;

use super::CallError;
use crate::metrics::METRICS;

/// What an answer comes to, for comparison.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Answer {
    /// An answer, reduced.
    Value(Value),
    /// The plugin's own refusal, with its kind and message.
    Refused(String),
    /// No answer: a trap, a deadline or no instance.
    Failed(String),
}

impl Answer {
    /// The answer of `result`, reduced by `reduce`.
    pub(super) fn of<R>(result: &Result<R, CallError>, reduce: &impl Fn(&R) -> Value) -> Answer {
        match result {
            Ok(answer) => Answer::Value(reduce(answer)),
            Err(CallError::Refused(error)) => Answer::Refused(format!("{error:?}")),
            Err(error) => Answer::Failed(error.to_string()),
        }
    }
}

/// A JSON answer as a value, so that the order of an object's keys does not count.
#[allow(clippy::ptr_arg, reason = "a reducer of `String` answers, called as `Fn(&R)`")]
pub(super) fn json(answer: &String) -> Value {
    serde_json::from_str(answer).unwrap_or_else(|_| Value::String(answer.clone()))
}

/// Counts the dry run's answer against the active one's and logs a difference; answers the
/// result counted.
pub(super) fn compare(export: &'static str, active: &Answer, shadow: &Answer) -> &'static str {
    let result = match shadow {
        Answer::Failed(reason) => {
            tracing::warn!(export, %reason, "dry run: the candidate plugin failed");
            "failed"
        }
        _ if shadow == active => "same",
        _ => {
            tracing::warn!(
                export,
                active = %describe(active),
                candidate = %describe(shadow),
                "dry run: the candidate plugin answered differently"
            );
            "different"
        }
    };
    METRICS.plugin_shadow_calls.with_label_values(&[result]).inc();
    result
}

/// An answer on one line, cut to a length a log line can carry.
fn describe(answer: &Answer) -> String {
    let text = match answer {
        Answer::Value(value) => value.to_string(),
        Answer::Refused(error) => format!("refused: {error}"),
        Answer::Failed(reason) => format!("failed: {reason}"),
    };
    match text.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_of_keys_does_not_make_answers_differ() {
        let a = Answer::Value(json(&r#"{"a":1,"b":[1,2]}"#.to_owned()));
        let b = Answer::Value(json(&r#"{"b":[1,2],"a":1}"#.to_owned()));
        assert_eq!(compare("api.view-webhook", &a, &b), "same");
        let c = Answer::Value(json(&r#"{"b":[1,2],"a":1,"variant":"tagged"}"#.to_owned()));
        assert_eq!(compare("api.view-webhook", &a, &c), "different");
        assert_eq!(
            compare("api.view-webhook", &a, &Answer::Failed("trap".into())),
            "failed"
        );
    }

    #[test]
    fn long_answers_are_cut_in_the_log() {
        let long = Answer::Value(Value::String("é".repeat(1000)));
        assert!(describe(&long).chars().count() <= 401);
    }
}
