//! Messages gathered into plugin calls: a message that comes in while the earlier calls run
//! waits for the next one, which takes in every message waiting (one instance, one commit), and
//! a message that finds a call free starts it at once. Under load a call carries many
//! messages; a lone message waits for nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::Instrument;

use crate::runtime::bindings::exports::mainflux::webhooks::events::{Accepted, Message};
use crate::runtime::{CallError, Runtime};

/// Most intake calls running at once: each ends when its commit is durable, and the store
/// groups the commits of the calls running together, so a few keep the store's writer busy.
const CALLS: usize = 4;

/// Most messages one call takes in with an embedded store: one commit holds them all.
pub const EMBEDDED_BATCH: usize = 64;

/// Most messages one call takes in with a shared store: a commit of more than 256 keys locks
/// whole buckets of PostgreSQL's keys, which holds up the other commits sharing any of them,
/// and eight messages to three webhooks each stay below it, locked key by key.
pub const SHARED_BATCH: usize = 8;

/// The messages waiting for a call, and the calls running.
pub struct Gathering {
    runtime: Arc<Runtime>,
    /// Most messages a call takes in.
    batch: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Waiting>,
    running: usize,
}

struct Waiting {
    message: Message,
    span: tracing::Span,
    reply: oneshot::Sender<Result<Accepted, CallError>>,
}

impl Gathering {
    /// Gathers messages into calls of `runtime`, at most `batch` a call.
    pub fn new(runtime: Arc<Runtime>, batch: usize) -> Arc<Self> {
        Arc::new(Gathering {
            runtime,
            batch: batch.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// Takes a message in with the next call; answers once its deliveries are durable.
    pub async fn take_in(self: &Arc<Self>, message: Message, span: tracing::Span) -> Result<Accepted, CallError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().expect("intake gathering poisoned");
            state.waiting.push_back(Waiting { message, span, reply });
            let start = state.running < CALLS;
            state.running += usize::from(start);
            start
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(CallError::Instantiate("the intake call ended without answering".into())))
    }

    /// One call after another, each taking every message waiting, until none is.
    async fn run(self: Arc<Self>) {
        // Let the messages that arrive with this one (a broker's fetch hands several over at
        // once) join its call instead of each starting a call of its own.
        tokio::task::yield_now().await;
        loop {
            let mut batch: Vec<Waiting> = {
                let mut state = self.state.lock().expect("intake gathering poisoned");
                if state.waiting.is_empty() {
                    state.running -= 1;
                    return;
                }
                let take = state.waiting.len().min(self.batch);
                state.waiting.drain(..take).collect()
            };
            if batch.len() == 1 {
                // The message's own call, in its own span, as when nothing is gathered.
                let Waiting { message, span, reply } = batch.pop().expect("one message");
                let answer = self.runtime.events().on_message(message).instrument(span).await;
                let _ = reply.send(answer);
                continue;
            }
            let span = tracing::debug_span!(
                target: crate::telemetry::SPANS,
                "messages",
                otel.name = "messages taken in",
                messages = batch.len(),
            );
            let (messages, waiting): (Vec<Message>, Vec<_>) = batch
                .into_iter()
                .map(|Waiting { message, span, reply }| (message, (span, reply)))
                .unzip();
            let count = messages.len();
            match self.runtime.events().on_messages(messages).instrument(span).await {
                Ok(answers) if answers.len() == count => {
                    for ((_, reply), answer) in waiting.into_iter().zip(answers) {
                        let _ = reply.send(answer.map_err(CallError::Refused));
                    }
                }
                Ok(answers) => {
                    let error = CallError::Trap {
                        reason: format!("the plugin answered {} results for {count} messages", answers.len()),
                        detail: String::new(),
                    };
                    for (_, reply) in waiting {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for (_, reply) in waiting {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}
