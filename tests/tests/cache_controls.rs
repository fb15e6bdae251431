//! What an application controls of its cache: counts it can read
//! (`cache_stats`), prefixes never cached, a time-to-live beside the
//! session's proof, `invalidate_all`, and `read_many` answering from the
//! cache by the same rule as `read` (stale under `AllowStale` with no
//! server, where `get_many` used to fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use store_client::{Client, ReadPolicy, SessionState, Source};
use store_tests::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_hits_and_misses_and_never_cached_prefixes_always_ask() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let writer = server.client().await;
    writer.put("a", "1").await.unwrap();
    writer.put("nc/b", "2").await.unwrap();
    let client = Client::connect(server.client_config().never_cache("nc/"))
        .await
        .unwrap();
    let policy = ReadPolicy::default();
    assert_eq!(
        client.read("a", policy).await.unwrap().source,
        Source::Server
    );
    assert_eq!(
        client.read("a", policy).await.unwrap().source,
        Source::Cache
    );
    for _ in 0..2 {
        let read = client.read("nc/b", policy).await.unwrap();
        assert_eq!(
            (read.source, read.value.unwrap()),
            (Source::Server, "2".into())
        );
    }
    let stats = client.cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 3), "{stats:?}");
    assert_eq!(stats.entries, 1, "{stats:?}");
    assert!(stats.bytes > 0);
    // Dropped at once: the next read asks the server.
    client.invalidate_all();
    assert_eq!(
        client.read("a", policy).await.unwrap().source,
        Source::Server
    );
    assert_eq!(client.cache_stats().misses, 4);
    client.close().await;
    writer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_older_than_its_time_to_live_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let ttl = Duration::from_millis(300);
    let client = Client::connect(server.client_config().cache_ttl(ttl))
        .await
        .unwrap();
    client.put("k", "v").await.unwrap();
    let policy = ReadPolicy::default();
    let asked = Instant::now();
    assert_eq!(
        client.read("k", policy).await.unwrap().source,
        Source::Server
    );
    // The entry was filled before the read returned: it is at least this old.
    let filled = Instant::now();
    let second = client.read("k", policy).await.unwrap();
    // Filled after `asked`: younger than the TTL until `asked + ttl`, so
    // served from the cache (unless this machine stalled for that long).
    if asked.elapsed() < ttl {
        assert_eq!(second.source, Source::Cache);
    }
    tokio::time::sleep_until((filled + ttl + Duration::from_millis(50)).into()).await;
    let expired = client.read("k", policy).await.unwrap();
    assert_eq!(expired.source, Source::Server);
    assert_eq!(expired.value.unwrap(), "v");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_many_answers_stale_from_the_cache_when_no_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let mut config = server.client_config().timeout(Duration::from_secs(2));
    config.read_policy = ReadPolicy::AllowStale;
    let client = Client::connect(config).await.unwrap();
    client.put("a", "1").await.unwrap();
    client.put("b", "2").await.unwrap();
    let fresh = client
        .read_many(["a", "b"], ReadPolicy::AllowStale)
        .await
        .unwrap();
    assert!(fresh.iter().all(|r| !r.stale));
    let mut states = client.watch_session();
    server.kill();
    let deadline = Instant::now() + store_tests::EVENT_DEADLINE;
    while states.borrow_and_update().state == SessionState::Live {
        assert!(Instant::now() < deadline, "the session stayed live");
        let _ = tokio::time::timeout(Duration::from_secs(1), states.changed()).await;
    }
    let stale = client
        .read_many(["a", "b"], ReadPolicy::AllowStale)
        .await
        .unwrap();
    let values: Vec<_> = stale.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, ["1", "2"]);
    assert!(stale.iter().all(|r| r.stale && r.source == Source::Cache));
    assert_eq!(client.get_many(["a", "b"]).await.unwrap().len(), 2);
    // Nothing cached for a key: it must ask, and no server answers.
    assert!(client
        .read_many(["a", "c"], ReadPolicy::AllowStale)
        .await
        .is_err());
    client.close().await;
}
