//! Client-side helpers for fault tests: short session timers, clients
//! behind a proxy, and waiting for session states.

use std::time::{Duration, Instant};

use store_client::{Client, ClientConfig, SessionState};

use crate::{FaultProxy, ServerProcess, EVENT_DEADLINE};

/// Ping interval of [`fast`] sessions.
pub const FAST_PING: Duration = Duration::from_millis(300);
/// `stale_after` of [`fast`] sessions.
pub const FAST_STALE_AFTER: Duration = Duration::from_secs(1);

/// Short timers, so that each fault plays out in seconds: ping every
/// 300 ms, stale after 1 s, QUIC idle timeout 3 s, dial timeout 1 s; calls
/// wait as long as [`EVENT_DEADLINE`].
pub fn fast(mut config: ClientConfig) -> ClientConfig {
    config.session.ping_interval = FAST_PING;
    config.session.stale_after = FAST_STALE_AFTER;
    config.session.expire_after = Duration::from_secs(30);
    config.idle_timeout = Duration::from_secs(3);
    config.keep_alive = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config.timeout = EVENT_DEADLINE;
    config
}

/// A [`fast`] client of `server` that reaches it through `proxy`.
pub async fn client_via(proxy: &FaultProxy, server: &ServerProcess) -> Client {
    let mut config = fast(server.client_config());
    config.servers = vec![proxy.addr().to_string()];
    Client::connect(config)
        .await
        .expect("connect through the proxy")
}

/// Waits (up to [`EVENT_DEADLINE`]) for the session to reach `state`;
/// returns when it did.
pub async fn wait_for_state(client: &Client, state: SessionState) -> Instant {
    let mut states = client.watch_session();
    tokio::time::timeout(EVENT_DEADLINE, async {
        loop {
            if states.borrow_and_update().state == state {
                return Instant::now();
            }
            states.changed().await.expect("the session is running");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("session never became {state}"))
}
