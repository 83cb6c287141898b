//! The one pub/sub connection of a [`RedisStore`](super::RedisStore): it
//! subscribes to the version channel, on which every transaction write of
//! every replica publishes `"{id} {version}"` (and gc `"{id} deleted"`),
//! and wakes this process's waiters of that id.
//!
//! One connection and one channel whatever the number of waiters: a
//! channel per transaction would cost a SUBSCRIBE round trip per wait and
//! a connection's worth of state in Redis per waiter. Messages for ids
//! nobody here waits on are dropped after a map lookup.
//!
//! Started by the first wait that has to wait, it runs until the store is
//! dropped. When its connection breaks (Redis restarts, the network
//! fails, or a PING goes unanswered: a half-open connection delivers
//! nothing and reports nothing) it reconnects with backoff and, once
//! subscribed again, wakes every waiter, since whatever was published in
//! between is lost; each re-reads its record, and the wait goes on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::TxId;
use crate::watch::Watchers;

/// How often an idle subscription is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What the subscriber needs to (re)connect.
pub(super) struct Config {
    pub client: redis::Client,
    pub channel: String,
    /// `host:port`, for logs (the URL may hold a password).
    pub addr: String,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
}

/// The running subscriber; dropping it stops it (and closes its
/// connection).
pub(super) struct Subscriber {
    live: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Starts the subscriber task. Must run inside the tokio runtime.
    pub(super) fn start(config: Config, watchers: Arc<Watchers>) -> Self {
        let (live_tx, live) = watch::channel(false);
        let task = tokio::spawn(run(config, watchers, live_tx));
        Subscriber { live, task }
    }

    /// True while subscribed: from then on every write publishes to us.
    pub(super) fn live(&self) -> watch::Receiver<bool> {
        self.live.clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(config: Config, watchers: Arc<Watchers>, live: watch::Sender<bool>) {
    let mut backoff = Duration::from_millis(50);
    // An outage is logged once, not once per attempt: set once it was, and
    // only ever set again by the next loss.
    let mut down_logged = false;
    loop {
        match subscribe(&config).await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(50);
                if down_logged {
                    tracing::info!(addr = %config.addr, "redis version subscription restored");
                }
                live.send_replace(true);
                watchers.notify_all();
                let why = listen(pubsub, &config, &watchers).await;
                live.send_replace(false);
                tracing::warn!(addr = %config.addr, reason = %why,
                    "redis version subscription lost; waiters catch up once it is back");
                down_logged = true;
            }
            Err(e) => {
                if !down_logged {
                    tracing::warn!(addr = %config.addr, error = %e,
                        "cannot subscribe to redis versions; retrying");
                    down_logged = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(config: &Config) -> Result<redis::aio::PubSub, String> {
    let connect = async {
        let mut pubsub = config.client.get_async_pubsub().await?;
        pubsub.subscribe(&config.channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", config.connect_timeout)),
    }
}

/// Fans messages out until the connection breaks; returns why it did.
async fn listen(pubsub: redis::aio::PubSub, config: &Config, watchers: &Watchers) -> String {
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = messages.next() => match msg {
                Some(msg) => {
                    if let Some(id) = message_id(msg.get_payload_bytes()) {
                        watchers.notify(&id);
                    }
                }
                None => return "connection closed".into(),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(config.op_timeout, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("ping unanswered within {:?}", config.op_timeout),
                }
            }
        }
    }
}

/// The transaction id of a version message (`"{id} {version}"` or
/// `"{id} deleted"`); `None` for anything else.
fn message_id(payload: &[u8]) -> Option<TxId> {
    let text = std::str::from_utf8(payload).ok()?;
    let (id, _) = text.split_once(' ')?;
    (!id.is_empty()).then(|| TxId(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_their_transaction() {
        assert_eq!(message_id(b"abc 7"), Some(TxId("abc".into())));
        assert_eq!(message_id(b"abc deleted"), Some(TxId("abc".into())));
        assert_eq!(message_id(b"abc"), None);
        assert_eq!(message_id(b" 7"), None);
        assert_eq!(message_id(b"\xff 7"), None);
    }
}
