//! The transforms' epoch ticker: one thread that advances the engine's epoch every tick while a
//! call runs, and sleeps while none does, so deadlines of milliseconds cost nothing when idle.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use wasmtime::Engine;

/// Counts the calls running; the thread ticks while there is one.
#[derive(Default)]
struct Running {
    calls: Mutex<usize>,
    started: Condvar,
}

/// The handle of the ticker thread, shared by every call.
pub struct Ticker {
    running: Arc<Running>,
}

/// Marks one call as running until dropped.
pub struct RunningCall {
    running: Arc<Running>,
}

impl Drop for RunningCall {
    fn drop(&mut self) {
        *self.running.calls.lock().expect("ticker poisoned") -= 1;
    }
}

impl Ticker {
    /// Starts the thread, which ends with the engine.
    pub fn start(engine: &Engine, tick: Duration) -> Self {
        let running = Arc::new(Running::default());
        let weak: Weak<Running> = Arc::downgrade(&running);
        let engine = engine.weak();
        std::thread::Builder::new()
            .name("transform-epoch".into())
            .spawn(move || {
                loop {
                    let Some(running) = weak.upgrade() else { return };
                    {
                        let calls = running.calls.lock().expect("ticker poisoned");
                        // Wakes at least every second to notice that the engine is gone.
                        let _idle = running
                            .started
                            .wait_timeout_while(calls, Duration::from_secs(1), |calls| *calls == 0)
                            .expect("ticker poisoned");
                    }
                    drop(running);
                    std::thread::sleep(tick);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .expect("the transform epoch thread starts");
        Ticker { running }
    }

    /// Marks a call as running, waking the thread when it was the only one.
    pub fn running(&self) -> RunningCall {
        let mut calls = self.running.calls.lock().expect("ticker poisoned");
        *calls += 1;
        // Only the first call wakes it: while any run, it ticks without waiting.
        if *calls == 1 {
            self.running.started.notify_one();
        }
        drop(calls);
        RunningCall {
            running: self.running.clone(),
        }
    }
}
