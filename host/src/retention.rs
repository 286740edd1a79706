//! Retention: deliveries and message ids older than the retention are deleted, and the
//! plugin's pending upkeep of stored data is carried out, in batches beside the service, so
//! neither ever holds up a request or a delivery.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::{CallError, Runtime};

/// Records one call deletes or brings up to date, at most.
const BATCH: u32 = 1000;

/// Runs retention and upkeep at once, then every `interval`; a full batch runs the next one
/// without waiting.
pub fn start(runtime: Arc<Runtime>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let more_expired = full_batch(
                runtime.events().expire(BATCH).await,
                "expired deliveries and message ids past the retention",
                "expiring old deliveries failed",
            );
            // Upkeep a new plugin version asks for (an index over records an earlier one
            // wrote) runs beside retention, in batches, so it never holds up a request.
            let more_upkeep = full_batch(
                runtime.events().maintain(BATCH).await,
                "stored records brought up to date",
                "upkeep of stored records failed",
            );
            if !more_expired && !more_upkeep {
                tokio::time::sleep(interval).await;
            }
        }
    })
}

/// Logs the outcome of one call; answers whether its batch was full, so more waits.
fn full_batch(result: Result<u32, CallError>, done: &str, failed: &str) -> bool {
    match result {
        Ok(count) => {
            if count > 0 {
                tracing::info!(count, "{done}");
            }
            count >= BATCH
        }
        Err(error) => {
            tracing::error!(%error, "{failed}");
            false
        }
    }
}
