//! Removals from the platform: the registry file's, and the platform's Redis event stream
//! `mainflux.things` (`MF_WEBHOOKS_ES_URL`). Entries whose `operation` is `thing.remove` or
//! `group.remove` remove the webhooks of the thing or group their `id` names.
//!
//! The stream is read with `XREAD` from a cursor kept in Redis under the consumer's name
//! (`MF_WEBHOOKS_EVENT_CONSUMER`). The cursor moves past an entry only once its removal is
//! done, so no entry is skipped, across Redis restarts and host restarts alike; an entry may be
//! applied twice, which removing is indifferent to.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};

use crate::runtime::Runtime;

/// The platform's stream of things and groups events.
pub const STREAM: &str = "mainflux.things";
/// Entries read per `XREAD`.
const BATCH: usize = 100;
/// How long to wait between reads of an idle stream.
const IDLE_PAUSE: Duration = Duration::from_millis(200);
/// The longest wait between attempts to reach Redis, or to apply a removal.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whose webhooks go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A thing's.
    Thing,
    /// A group's.
    Group,
}

/// Removes every webhook of a thing or group through the plugin, trying again with backoff
/// until the plugin has done it; answers how many went.
pub async fn remove_webhooks_of(runtime: &Arc<Runtime>, owner: Owner, id: &str) -> u32 {
    let mut delay = Duration::from_millis(100);
    loop {
        let events = runtime.events();
        let result = match owner {
            Owner::Thing => events.on_thing_removed(id.to_owned()).await,
            Owner::Group => events.on_group_removed(id.to_owned()).await,
        };
        match result {
            Ok(count) => return count,
            Err(error) => tracing::error!(%error, id, "removing webhooks failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

/// Checks an event stream URL (`redis://HOST:PORT/DB`) without connecting.
pub fn client(url: &str) -> Result<redis::Client, String> {
    redis::Client::open(url).map_err(|e| format!("{url:?} is not a redis:// URL: {e}"))
}

/// What an entry asks for, if anything.
pub fn removal(fields: &std::collections::HashMap<String, redis::Value>) -> Option<(Owner, String)> {
    let text = |name: &str| match fields.get(name)? {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let owner = match text("operation")?.as_str() {
        "thing.remove" => Owner::Thing,
        "group.remove" => Owner::Group,
        _ => return None,
    };
    let id = text("id").filter(|id| !id.is_empty())?;
    Some((owner, id))
}

/// Follows the stream for ever: reconnecting with backoff whenever Redis is unreachable, and
/// applying each entry's removal before moving the cursor past it.
pub async fn follow(client: redis::Client, consumer: String, runtime: std::sync::Arc<Runtime>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_connected(&client, &consumer, &runtime, &mut backoff).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "event stream unreachable; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn follow_connected(
    client: &redis::Client,
    consumer: &str,
    runtime: &Arc<Runtime>,
    backoff: &mut Duration,
) -> redis::RedisResult<()> {
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: String = connection
        .get::<_, Option<String>>(consumer)
        .await?
        .unwrap_or_else(|| "0".to_owned());
    tracing::info!(
        stream = STREAM,
        consumer,
        cursor,
        "following the platform's event stream"
    );
    *backoff = Duration::from_millis(100);
    let options = StreamReadOptions::default().count(BATCH);
    loop {
        let reply: StreamReadReply = connection.xread_options(&[STREAM], &[&cursor], &options).await?;
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|key| key.ids).collect();
        if entries.is_empty() {
            tokio::time::sleep(IDLE_PAUSE).await;
            continue;
        }
        for entry in entries {
            if let Some((owner, id)) = removal(&entry.map) {
                let removed = remove_webhooks_of(runtime, owner, &id).await;
                tracing::info!(?owner, id, removed, entry = entry.id, "platform removal applied");
            }
            let _: () = connection.set(consumer, &entry.id).await?;
            cursor = entry.id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, redis::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn only_removals_with_an_id_are_acted_on() {
        assert_eq!(
            removal(&fields(&[("operation", "thing.remove"), ("id", "t1")])),
            Some((Owner::Thing, "t1".into()))
        );
        assert_eq!(
            removal(&fields(&[
                ("id", "g1"),
                ("operation", "group.remove"),
                ("occurred_at", "1")
            ])),
            Some((Owner::Group, "g1".into()))
        );
        assert_eq!(removal(&fields(&[("operation", "thing.create"), ("id", "t1")])), None);
        assert_eq!(removal(&fields(&[("operation", "thing.remove")])), None);
        assert_eq!(removal(&fields(&[("operation", "thing.remove"), ("id", "")])), None);
    }
}
