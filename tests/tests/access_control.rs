//! Access control (issue "Trust boundaries", item 6): roles and key
//! prefixes from `--acl`, `PermissionDenied` (store-cli exit 3) naming the
//! identity and the key, `promote` only for admins, and transaction ids
//! bound to the identity that owns them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use store_protocol::{content_digest, CommitRequest, Request, Response, TxnId, WireError, Write};
use store_tests::{binary, cli_with, raw, CliOutput, ServerProcess};

const ACL: &str = r#"
[identities.zeolite-client]
role = "readwrite"
prefixes = ["app/"]

[identities.reader]
role = "read"

[identities.ops]
role = "admin"
"#;

/// Issues a client certificate for `name` from the server's development CA
/// into its own TLS directory.
fn issue(server: &ServerProcess, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("tls-{name}"));
    let status = Command::new(binary("store-server"))
        .args(["certs", "issue", "--role", "client", "--name", name])
        .arg("--tls-dir")
        .arg(server.tls_dir())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn as_identity(server: &ServerProcess, tls: &Path, args: &[&str]) -> CliOutput {
    cli_with(&server.addr().to_string(), tls, args, None)
}

fn denied(out: &CliOutput, identity: &str, what: &str) {
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("permission denied")
            && out.stderr.contains(identity)
            && out.stderr.contains(what),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_prefixes_from_the_acl_decide_who_does_what() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL).unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--acl", acl.to_str().unwrap()]).await;
    let app = server.tls_dir();
    let reader = issue(&server, dir.path(), "reader");
    let ops = issue(&server, dir.path(), "ops");
    let stranger = issue(&server, dir.path(), "stranger");

    // The development client may write under app/ only.
    assert_eq!(as_identity(&server, &app, &["put", "app/k", "v"]).code, 0);
    denied(
        &as_identity(&server, &app, &["put", "other/k", "v"]),
        "zeolite-client",
        "other/k",
    );
    denied(
        &as_identity(&server, &app, &["promote"]),
        "zeolite-client",
        "promote",
    );
    // A change feed tells only of keys the identity may read.
    denied(
        &as_identity(&server, &app, &["subscribe", "other/", "--from", "0"]),
        "zeolite-client",
        "other/",
    );
    // A backup holds every key: admins only, and a refused one leaves no file.
    let backup = dir.path().join("refused.backup");
    let refused = as_identity(&server, &app, &["backup", backup.to_str().unwrap()]);
    denied(&refused, "zeolite-client", "backup");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("refused.backup")
        })
        .collect();
    assert!(left.is_empty(), "a refused backup left {left:?}");
    // A reader reads anything and writes nothing.
    let got = as_identity(&server, &reader, &["get", "app/k"]);
    assert_eq!((got.code, got.stdout.as_str()), (0, "v\n"), "{got:?}");
    denied(
        &as_identity(&server, &reader, &["put", "app/k", "w"]),
        "reader",
        "app/k",
    );
    denied(
        &as_identity(&server, &reader, &["incr", "app/n"]),
        "reader",
        "app/n",
    );
    // An identity the file does not name may only ask for status.
    denied(
        &as_identity(&server, &stranger, &["get", "app/k"]),
        "stranger",
        "app/k",
    );
    assert_eq!(as_identity(&server, &stranger, &["status"]).code, 0);
    // An admin passes the permission check (and a standalone server then
    // explains that promote means nothing to it).
    let promote = as_identity(&server, &ops, &["promote"]);
    assert_eq!(promote.code, 3, "{promote:?}");
    assert!(!promote.stderr.contains("permission denied"), "{promote:?}");
    // Nothing refused was written.
    let got = as_identity(&server, &ops, &["get", "app/k"]);
    assert_eq!(got.stdout, "v\n");
    let taken = as_identity(&server, &ops, &["backup", backup.to_str().unwrap()]);
    assert_eq!(taken.code, 0, "{taken:?}");
    assert!(taken.stdout.starts_with("backup tid=1 rows="), "{taken:?}");
    assert_eq!(as_identity(&server, &ops, &["get", "other/k"]).code, 1);
}

fn commit(client_id: u128, seq: u64, acked_below: u64, key: &str) -> Request {
    let writes = vec![Write::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"x"),
    }];
    Request::Commit(CommitRequest {
        txn_id: TxnId { client_id, seq },
        acked_below,
        digest: content_digest(&[], &writes),
        read_set: vec![],
        writes,
    })
}

/// The issue's reproduction: one client named another's `client_id` with a
/// huge `acked_below`, and every later commit of the victim failed with
/// `Expired`. Now a certificate may only use ids of its own identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identity_can_commit_resolve_or_expire_anothers_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let victim_tls = issue(&server, dir.path(), "victim");
    let victim = store_client::Client::connect(server.client_config().tls_dir(&victim_tls))
        .await
        .unwrap();
    victim.put("a", "1").await.unwrap();

    let attacker = raw::connect(&server, true).await.unwrap();
    let _session = raw::open_session(&attacker).await;
    let forged = commit(victim.client_id(), u64::MAX - 1, u64::MAX - 1, "b");
    match raw::request(&attacker, &forged).await {
        Response::Error(WireError::PermissionDenied { identity, .. }) => {
            assert_eq!(identity, "zeolite-client");
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let resolve = Request::Resolve {
        txn_id: TxnId {
            client_id: victim.client_id(),
            seq: 2,
        },
    };
    assert!(matches!(
        raw::request(&attacker, &resolve).await,
        Response::Error(WireError::PermissionDenied { .. })
    ));
    // Its own space works as ever.
    assert!(matches!(
        raw::request(&attacker, &commit(raw::dev_client_id(9), 1, 1, "c")).await,
        Response::Committed(_)
    ));
    // The victim's next commits are untouched.
    for i in 0..3 {
        victim.put("a", format!("{i}")).await.unwrap();
    }
    assert_eq!(victim.get("b").await.unwrap(), None);
    victim.close().await;
}

/// A session hears of changes only to keys its identity may read, even when
/// it asks for every invalidation (`holds_cache`) or to revalidate from the
/// start of the change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hears_only_of_keys_its_identity_may_read() {
    use store_protocol::{
        read_frame, write_frame, Hello, SessionEvent, SessionRequest, Tid, PROTOCOL_VERSION,
    };
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL).unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--acl", acl.to_str().unwrap()]).await;
    let ops = issue(&server, dir.path(), "ops");
    assert_eq!(
        as_identity(&server, &ops, &["put", "secret/early", "x"]).code,
        0
    );

    // The development client may read app/ only.
    let connection = raw::connect(&server, true).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let hello = SessionRequest::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: raw::dev_client_id(1),
        last_seen_tid: Tid::ZERO,
        cached_tid: Tid::ZERO,
        holds_cache: true,
    });
    write_frame(&mut send, &hello, 1 << 16).await.unwrap();
    match read_frame::<_, SessionEvent>(&mut recv, 1 << 24)
        .await
        .unwrap()
    {
        Some(SessionEvent::Welcome(welcome)) => {
            let changed = welcome.changed_since_cached.unwrap_or_default();
            assert!(changed.is_empty(), "{changed:?}");
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    assert_eq!(
        as_identity(&server, &ops, &["put", "secret/k", "x"]).code,
        0
    );
    assert_eq!(as_identity(&server, &ops, &["put", "app/k", "y"]).code, 0);
    // The first invalidation it hears of is app/k's; secret/k's never came.
    let event = tokio::time::timeout(
        store_tests::EVENT_DEADLINE,
        read_frame::<_, SessionEvent>(&mut recv, 1 << 24),
    )
    .await
    .unwrap()
    .unwrap();
    match event {
        Some(SessionEvent::Invalidate { keys, .. }) => {
            assert_eq!(keys, vec![Bytes::from_static(b"app/k")]);
        }
        other => panic!("expected an invalidation, got {other:?}"),
    }
}
