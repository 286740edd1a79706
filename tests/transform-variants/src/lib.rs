//! Transform components for the host's transform tests: five that misbehave on purpose and
//! one that behaves. Each cargo feature makes one component (the Makefile builds them all into
//! `target/transform-variants/<feature>.wasm`); a build without a feature exports nothing.
//!
//! - `spin`: never returns (a deadline must stop it).
//! - `grow`: allocates and writes memory 1 MiB at a time until an allocation fails, which
//!   traps (a memory limit must stop it first).
//! - `huge`: sends a 4 MiB body of `x`, over the 1 MiB answer limit.
//! - `trap`: panics, which traps.
//! - `slow`: busy for about 50 ms by the clock, then sends the message unchanged: over the
//!   default 10 ms deadline, but it finishes under a longer one.
//! - `pass`: behaves and changes nothing (the benchmark's transform: the cost of one alone).
//! - `echo`: behaves, and changes what it can see changed: sends the body
//!   `<metadata JSON text>|<payload>`, adds the header `x-transformed: yes` and appends
//!   `/echoed` to the URL path; the content type stays the delivery's.
//!
//! A component of another world, for the host's refusal test, needs no build here: the
//! webhooks plugin is one.

use std::time::{Duration, Instant};

/// Bindings generated from the `transform` world in `wit/`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/deps/transform",
        world: "transform",
    });
}

use bindings::exports::mainflux::transform::transformation::{Action, Changes, Message};

/// The answer of the `huge` build: four times the host's answer limit.
const HUGE_BODY_BYTES: usize = 4 << 20;

/// How long the `slow` build is busy: well over the default deadline of 10 ms, well under
/// any deadline a test would give it to finish.
const SLOW_FOR: Duration = Duration::from_millis(50);

/// This build's answer to `message`. Every branch is compiled in every build, so one build's
/// lint covers them all; the features only choose.
pub fn answer(message: Message, metadata: &str) -> Result<Action, String> {
    if cfg!(feature = "spin") {
        spin();
    }
    if cfg!(feature = "grow") {
        grow();
    }
    if cfg!(feature = "trap") {
        panic!("transform-variants: trapping on purpose");
    }
    if cfg!(feature = "huge") {
        return Ok(Action::Send(Changes {
            body: Some(vec![b'x'; HUGE_BODY_BYTES]),
            ..unchanged()
        }));
    }
    if cfg!(feature = "pass") {
        return Ok(Action::Send(unchanged()));
    }
    if cfg!(feature = "slow") {
        busy_for(SLOW_FOR);
        return Ok(Action::Send(unchanged()));
    }
    Ok(echo(message, metadata))
}

/// The `echo` build's answer.
fn echo(message: Message, metadata: &str) -> Action {
    let mut body = Vec::with_capacity(metadata.len() + 1 + message.payload.len());
    body.extend_from_slice(metadata.as_bytes());
    body.push(b'|');
    body.extend_from_slice(&message.payload);
    Action::Send(Changes {
        body: Some(body),
        content_type: None,
        headers: vec![("x-transformed".into(), "yes".into())],
        path: "/echoed".into(),
    })
}

/// A send that changes nothing.
fn unchanged() -> Changes {
    Changes {
        body: None,
        content_type: None,
        headers: Vec::new(),
        path: String::new(),
    }
}

fn spin() -> ! {
    let mut turns = 0u64;
    loop {
        turns = std::hint::black_box(turns.wrapping_add(1));
    }
}

fn grow() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Written, not just reserved, so every page is really used.
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

/// Keeps the CPU busy rather than sleeping: a sleep would wait in the host, where a deadline
/// counted in guest execution might not see it.
fn busy_for(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

#[cfg(all(
    target_arch = "wasm32",
    any(
        feature = "spin",
        feature = "grow",
        feature = "huge",
        feature = "trap",
        feature = "slow",
        feature = "echo",
        feature = "pass"
    )
))]
mod component {
    use crate::bindings::exports::mainflux::transform::transformation::{Action, Guest, Message};

    struct Variant;

    impl Guest for Variant {
        fn apply(message: Message, metadata: String) -> Result<Action, String> {
            crate::answer(message, &metadata)
        }
    }

    crate::bindings::export!(Variant with_types_in crate::bindings);
}
