//! The ZEO failure made impossible: a client that loses its server (black
//! hole, SIGSTOP, SIGKILL, one-way loss) stops serving its cache within
//! `stale_after`, comes back Live after heal with every missed invalidation
//! applied, and a bulk upload never makes a healthy session stale.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use store_client::{Client, Error, ReadPolicy, SessionState, Source};
use store_tests::session::{client_via, fast, wait_for_state, FAST_PING, FAST_STALE_AFTER};
use store_tests::{Direction, FaultProxy, ServerProcess, EVENT_DEADLINE};

const PING: Duration = FAST_PING;
const STALE_AFTER: Duration = FAST_STALE_AFTER;

/// The longest a cached value may be served after the server falls silent:
/// a proof dates from a ping sent before the outage, and lasts stale_after.
fn detection_bound() -> Duration {
    STALE_AFTER + PING.mul_f64(1.1)
}

/// Reads `key` with FailFast until the session is no longer fresh, and
/// returns the start times of the reads served from cache.
async fn cached_reads_until_stale(client: &Client, key: &'static str) -> Vec<Instant> {
    let mut served = Vec::new();
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the session never went stale");
        let started = Instant::now();
        match client.read(key, ReadPolicy::FailFast).await {
            Ok(read) if read.source == Source::Cache => served.push(started),
            Ok(read) => panic!("unexpected server read while cut off: {read:?}"),
            Err(Error::SessionStale { .. }) => return served,
            Err(e) => panic!("unexpected error: {e}"),
        }
        tokio::task::yield_now().await;
    }
}

/// Waits for proof of a live server, under load as long as it takes.
const PATIENT: ReadPolicy = ReadPolicy::Wait(EVENT_DEADLINE);

async fn cache_key(client: &Client, key: &'static str, value: &'static str) {
    let first = client.read(key, PATIENT).await.unwrap();
    assert_eq!(first.value.as_deref(), Some(value.as_bytes()));
    let second = client.read(key, PATIENT).await.unwrap();
    assert_eq!(
        second.source,
        Source::Cache,
        "second read is served from cache"
    );
}

fn assert_within_bound(served: &[Instant], outage: Instant) {
    for at in served {
        let after = at.saturating_duration_since(outage);
        assert!(
            after <= detection_bound(),
            "cache served {after:?} after the outage began (bound {:?})",
            detection_bound()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_both_ways_then_heal_applies_missed_invalidations() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let a = client_via(&proxy, &server).await;
    let b = server.client().await;
    b.put("k", "v1").await.unwrap();
    cache_key(&a, "k", "v1").await;

    let outage = Instant::now();
    proxy.cut();
    let served = cached_reads_until_stale(&a, "k").await;
    assert_within_bound(&served, outage);
    let stale_at = wait_for_state(&a, SessionState::Stale).await;
    eprintln!("black hole detected after {:?}", stale_at - outage);
    let stale = a.read("k", ReadPolicy::AllowStale).await.unwrap();
    assert!(stale.stale, "AllowStale marks the value stale");

    // A write A cannot hear about while cut off.
    b.put("k", "v2").await.unwrap();
    proxy.heal();
    wait_for_state(&a, SessionState::Live).await;
    let read = a.read("k", PATIENT).await.unwrap();
    assert_eq!(
        read.value.as_deref(),
        Some(&b"v2"[..]),
        "missed invalidation applied before Live"
    );
    assert!(proxy.dropped(Direction::ToServer) > 0 && proxy.dropped(Direction::ToClient) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_noticed_and_a_thawed_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let a = Client::connect(fast(server.client_config())).await.unwrap();
    a.put("k", "v1").await.unwrap();
    cache_key(&a, "k", "v1").await;

    let outage = Instant::now();
    server.freeze();
    let served = cached_reads_until_stale(&a, "k").await;
    assert_within_bound(&served, outage);
    wait_for_state(&a, SessionState::Stale).await;
    assert!(matches!(
        a.read("k", ReadPolicy::FailFast).await,
        Err(Error::SessionStale { .. })
    ));

    server.thaw();
    wait_for_state(&a, SessionState::Live).await;
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    a.put("k", "v2").await.unwrap();
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_noticed_and_its_restart_rejoined() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let a = Client::connect(fast(server.client_config())).await.unwrap();
    a.put("k", "v1").await.unwrap();
    cache_key(&a, "k", "v1").await;

    let outage = Instant::now();
    server.kill();
    let served = cached_reads_until_stale(&a, "k").await;
    assert_within_bound(&served, outage);

    server.restart().await;
    // Another client writes before A is back: A must not serve v1.
    server.client().await.put("k", "v3").await.unwrap();
    wait_for_state(&a, SessionState::Live).await;
    assert_eq!(
        a.read("k", PATIENT).await.unwrap().value.as_deref(),
        Some(&b"v3"[..])
    );
    assert_eq!(a.session().server, Some(server.addr().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_revalidates_the_cache_instead_of_dropping_it() {
    revalidates_after_an_absence(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_server_revalidates_caches_from_its_log() {
    revalidates_after_an_absence(true).await;
}

/// A client away while one of its two cached keys changes keeps the other
/// cached when it is back; with `restart`, the server is SIGKILLed and
/// restarted meanwhile, so the change log that covers the absence exists
/// only in the server's write-ahead log.
async fn revalidates_after_an_absence(restart: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let a = client_via(&proxy, &server).await;
    let b = server.client().await;
    b.put("changed", "old").await.unwrap();
    b.put("unchanged", "same").await.unwrap();
    cache_key(&a, "changed", "old").await;
    cache_key(&a, "unchanged", "same").await;
    // The cache is revalidated from the TID its last pong proved; let a few
    // pings (300 ms apart) cover the writes above before the cut.
    tokio::time::sleep(PING * 3).await;

    // Cut long enough for the QUIC connection itself to die.
    proxy.cut();
    wait_for_state(&a, SessionState::Reconnecting).await;
    b.put("changed", "new").await.unwrap();
    b.close().await;
    if restart {
        server.kill();
        server.restart().await;
    }
    proxy.heal();
    wait_for_state(&a, SessionState::Live).await;

    let unchanged = a.read("unchanged", PATIENT).await.unwrap();
    assert_eq!(
        unchanged.source,
        Source::Cache,
        "kept: the server listed it as unchanged"
    );
    let changed = a.read("changed", PATIENT).await.unwrap();
    assert_eq!(changed.value.as_deref(), Some(&b"new"[..]));
    assert_eq!(changed.source, Source::Server, "dropped by revalidation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_write_invalidates_the_cache_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let a = Client::connect(fast(server.client_config())).await.unwrap();
    let b = server.client().await;
    b.put("k", "v1").await.unwrap();
    cache_key(&a, "k", "v1").await;

    let acked = {
        b.put("k", "v2").await.unwrap();
        Instant::now()
    };
    let mut reads = Vec::new();
    let deadline = Instant::now() + EVENT_DEADLINE;
    // Until A has seen v2 three hundred times.
    while reads.iter().filter(|(_, v, _)| v == "v2").count() < 300 {
        assert!(Instant::now() < deadline, "A never saw v2");
        let started = Instant::now();
        let read = a.read("k", ReadPolicy::Wait(EVENT_DEADLINE)).await.unwrap();
        let value = String::from_utf8(read.value.unwrap().to_vec()).unwrap();
        reads.push((started, value, read.source));
        tokio::task::yield_now().await;
    }
    let first_new = reads.iter().position(|(_, v, _)| v == "v2").unwrap();
    assert!(
        reads[first_new..].iter().all(|(_, v, _)| v == "v2"),
        "A went back to the old value after seeing the new one"
    );
    for (started, value, _) in &reads {
        if value == "v1" {
            // Only a proof from a ping sent before the ack can still cover v1.
            assert!(
                *started < acked + STALE_AFTER,
                "old value served {:?} after the write was acknowledged",
                started.duration_since(acked)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_loss_either_way_makes_the_session_stale() {
    for direction in [Direction::ToClient, Direction::ToServer] {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let a = client_via(&proxy, &server).await;
        server.client().await.put("k", "v1").await.unwrap();
        cache_key(&a, "k", "v1").await;

        let forwarded = proxy.forwarded(Direction::ToServer);
        let outage = Instant::now();
        proxy.black_hole(direction);
        let served = cached_reads_until_stale(&a, "k").await;
        assert_within_bound(&served, outage);
        wait_for_state(&a, SessionState::Stale).await;
        assert!(proxy.dropped(direction) > 0, "{direction:?} was cut");
        if direction == Direction::ToClient {
            assert!(
                proxy.forwarded(Direction::ToServer) > forwarded,
                "pings and requests still reach the server"
            );
        }
        proxy.heal();
        wait_for_state(&a, SessionState::Live).await;
        assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_uploads_never_make_a_healthy_session_stale() {
    // The buildbot failure: a keepalive queued behind a bulk upload.
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let a = Client::connect(fast(server.client_config())).await.unwrap();
    let mut states = a.watch_session();
    let left_live = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let left_live = left_live.clone();
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                let state = states.borrow_and_update().state;
                if state != SessionState::Live {
                    left_live.lock().unwrap().push(state);
                }
            }
        })
    };
    let value = Bytes::from(vec![b'x'; 4 * 1024 * 1024]);
    // One upload after another on the session's connection, as buildbot's
    // bulk transfer was, each 4 MiB.
    for i in 0..8 {
        a.put(format!("bulk/{i}"), value.clone()).await.unwrap();
    }
    watcher.abort();
    assert_eq!(*left_live.lock().unwrap(), Vec::<SessionState>::new());
    assert_eq!(a.session().state, SessionState::Live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_server_reachable_the_session_expires_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let mut config = fast(server.client_config());
    config.session.expire_after = Duration::from_secs(2);
    let a = Client::connect(config).await.unwrap();
    server.kill();
    wait_for_state(&a, SessionState::Expired).await;
    assert!(matches!(
        a.read("k", ReadPolicy::FailFast).await,
        Err(Error::SessionStale {
            state: SessionState::Expired
        })
    ));
    // It keeps dialing: a server that comes back brings it back.
    server.restart().await;
    wait_for_state(&a, SessionState::Live).await;
}

/// Polls the session state (a `watch_session` receiver would keep it from
/// resting) until it is `state`, up to [`EVENT_DEADLINE`].
async fn poll_for_state(client: &Client, state: SessionState) -> Instant {
    let deadline = Instant::now() + EVENT_DEADLINE;
    while client.session().state != state {
        assert!(Instant::now() < deadline, "session never became {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Instant::now()
}

/// `idle_after` of [`resting_client`]s.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// A [`fast`] client of `server` that rests after [`IDLE_AFTER`] unused.
async fn resting_client(server: &ServerProcess) -> Client {
    let mut config = fast(server.client_config());
    config.session.idle_after = Some(IDLE_AFTER);
    Client::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_session_rests_and_its_next_read_proves_it_again_having_applied_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let a = resting_client(&server).await;
    let b = server.client().await;
    b.put("changed", "v1").await.unwrap();
    b.put("kept", "same").await.unwrap();
    cache_key(&a, "changed", "v1").await;
    cache_key(&a, "kept", "same").await;
    let last_use = Instant::now();

    // Unused: it rests, and not before idle_after.
    let rested = poll_for_state(&a, SessionState::Idle).await;
    assert!(
        rested >= last_use + IDLE_AFTER,
        "rested {:?} after its last use",
        rested - last_use
    );
    // While it rests, another client changes a key it caches.
    b.put("changed", "v2").await.unwrap();

    // A fail-fast read finds no proof (nothing is served as fresh while
    // resting) and wakes it.
    match a.read("kept", ReadPolicy::FailFast).await {
        Err(Error::SessionStale {
            state: SessionState::Idle,
        }) => {}
        Ok(read) => assert!(read.source == Source::Server || read.stale, "{read:?}"),
        Err(e) => panic!("unexpected error: {e}"),
    }
    poll_for_state(&a, SessionState::Live).await;
    // The change made while it rested was applied: never the old value.
    let changed = a.read("changed", PATIENT).await.unwrap();
    assert_eq!(changed.value.as_deref(), Some(&b"v2"[..]));
    // What did not change is served from the cache again, with proof.
    let kept = a.read("kept", PATIENT).await.unwrap();
    assert_eq!((kept.source, kept.stale), (Source::Cache, false));
    assert_eq!(kept.value.as_deref(), Some(&b"same"[..]));

    // Resting again, a waiting read gets its proof with one ping and is
    // answered from the cache.
    poll_for_state(&a, SessionState::Idle).await;
    let kept = a.read("kept", PATIENT).await.unwrap();
    assert_eq!((kept.source, kept.stale), (Source::Cache, false));
    assert_eq!(a.session().state, SessionState::Live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_session_does_not_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let a = resting_client(&server).await;
    let mut states = a.watch_session();
    // Every change of state over several idle periods: there is none.
    let window = IDLE_AFTER * 3 + STALE_AFTER;
    let changed = tokio::time::timeout(window, states.changed()).await;
    assert!(changed.is_err(), "state changed: {:?}", a.session().state);
    assert_eq!(a.session().state, SessionState::Live);
}
