//! Chaos: four clients append unique tokens and increment counters through
//! a fault-injecting proxy while the network black-holes (1–5 s), loses 5 %
//! of datagrams, and the server is killed once and restarted. A checker over
//! the history fails the test on any duplicate token, any acknowledged
//! token missing, any definitely-failed token present, and any replay whose
//! result differs from the original. The history is kept as Jepsen-shaped
//! JSON (invoke/ok/fail/info per operation) in the test's temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{json, Value};
use store_client::{Client, ClientConfig, Error, WriteResult};
use store_tests::{Direction, FaultProxy, LinkFault, ServerProcess, EVENT_DEADLINE};

const CLIENTS: usize = 4;
const FAULT_CYCLES: usize = 20;
/// Upper bound on operations per client, so the loop ends even if the
/// fault schedule misbehaves.
const MAX_OPS_PER_CLIENT: usize = 5_000;

fn config(proxy: &FaultProxy, server: &ServerProcess) -> ClientConfig {
    let mut config = store_tests::session::fast(server.client_config());
    config.servers = vec![proxy.addr().to_string()];
    // Long enough to ride out most black holes, short enough that some
    // operations end with an unknown outcome.
    config.timeout = Duration::from_secs(4);
    config
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ok {
        tid: u64,
        replayed: bool,
        result: WriteResult,
    },
    Fail(String),
    Info(String, store_client::TxnId),
}

#[derive(Debug, Clone)]
struct Op {
    process: usize,
    f: &'static str,
    key: String,
    token: String,
    invoked_ns: u128,
    completed_ns: u128,
    kind: Kind,
}

struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// Transactions with unknown outcomes, held so that their outcomes stay
    /// on the server until the checker resolves them.
    unknown: Mutex<Vec<store_client::PreparedTxn>>,
}

impl History {
    fn now(&self) -> u128 {
        self.start.elapsed().as_nanos()
    }

    /// Jepsen's shape: an invoke and a completion event per operation.
    fn to_json(&self) -> Value {
        let mut events = Vec::new();
        for op in self.ops.lock().unwrap().iter() {
            let value = json!([op.key, op.token]);
            events.push(json!({"type": "invoke", "f": op.f, "value": value, "process": op.process, "time": op.invoked_ns as u64}));
            let (kind, extra) = match &op.kind {
                Kind::Ok { tid, replayed, .. } => ("ok", json!({"tid": tid, "replayed": replayed})),
                Kind::Fail(e) => ("fail", json!({"error": e})),
                Kind::Info(e, txn) => ("info", json!({"error": e, "txn": txn.to_string()})),
            };
            let mut event = json!({"type": kind, "f": op.f, "value": value, "process": op.process, "time": op.completed_ns as u64});
            if let (Value::Object(e), Value::Object(x)) = (&mut event, extra) {
                e.extend(x);
            }
            events.push(event);
        }
        Value::Array(events)
    }
}

async fn run_client(process: usize, client: Client, history: Arc<History>, stop: Arc<AtomicBool>) {
    for n in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let append = n % 2 == 0;
        let key = if append {
            format!("list/{}", n % 3)
        } else {
            format!("counter/{}", n % 3)
        };
        let token = format!("p{process}-{n};");
        let invoked_ns = history.now();
        let result = if append {
            client.append(key.clone(), token.clone()).await
        } else {
            client.incr(key.clone(), 1).await
        };
        let kind = match result {
            Ok(outcome) => Kind::Ok {
                tid: outcome.tid.0,
                replayed: outcome.replayed,
                result: outcome.results[0],
            },
            Err(failed) => match failed.error().clone() {
                Error::OutcomeUnknown { txn_id, detail } => {
                    history
                        .unknown
                        .lock()
                        .unwrap()
                        .extend(failed.into_prepared());
                    Kind::Info(detail, txn_id)
                }
                other => {
                    assert!(
                        other.is_not_applied(),
                        "only unknown outcomes may be unclear: {other}"
                    );
                    Kind::Fail(other.to_string())
                }
            },
        };
        history.ops.lock().unwrap().push(Op {
            process,
            f: if append { "append" } else { "incr" },
            key,
            token,
            invoked_ns,
            completed_ns: history.now(),
            kind,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_never_loses_duplicates_or_invents_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let history = Arc::new(History {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
        unknown: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut workers = Vec::new();
    for process in 0..CLIENTS {
        let client = Client::connect(config(&proxy, &server)).await.unwrap();
        clients.push(client.clone());
        workers.push(tokio::spawn(run_client(
            process,
            client,
            history.clone(),
            stop.clone(),
        )));
    }

    let kill_at = rand::thread_rng().gen_range(5..FAULT_CYCLES - 5);
    for cycle in 0..FAULT_CYCLES {
        let (fault, length) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_range(0..3),
                Duration::from_millis(rng.gen_range(1000..=5000)),
            )
        };
        match fault {
            0 => proxy.cut(),
            1 => {
                let lossy = LinkFault {
                    drop: 0.05,
                    delay: Duration::ZERO,
                };
                proxy.set(Direction::ToServer, lossy);
                proxy.set(Direction::ToClient, lossy);
            }
            _ => proxy.black_hole(if cycle % 2 == 0 {
                Direction::ToClient
            } else {
                Direction::ToServer
            }),
        }
        // The fault's length is the experiment, not a wait for an event.
        tokio::time::sleep(length).await;
        proxy.heal();
        if cycle == kill_at {
            server.kill();
            server.restart().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(EVENT_DEADLINE, worker)
            .await
            .unwrap()
            .unwrap();
    }

    // Unknown outcomes: ask the server what happened to each.
    let checker = server.client().await;
    let ops = history.ops.lock().unwrap().clone();
    let mut resolved: HashMap<String, bool> = HashMap::new();
    for op in &ops {
        if let Kind::Info(_, txn_id) = &op.kind {
            let committed = match checker.resolve(*txn_id).await {
                Ok(_) => true,
                Err(Error::Abandoned { .. }) => false,
                Err(e) => panic!("resolving {txn_id}: {e}"),
            };
            resolved.insert(op.token.clone(), committed);
        }
    }

    let mut lists = HashMap::new();
    let mut counters = HashMap::new();
    for i in 0..3 {
        let list = checker
            .get(format!("list/{i}"))
            .await
            .unwrap()
            .unwrap_or_default();
        lists.insert(
            format!("list/{i}"),
            String::from_utf8(list.to_vec()).unwrap(),
        );
        let counter = checker.get(format!("counter/{i}")).await.unwrap();
        let counter: i64 = counter.map_or(0, |c| std::str::from_utf8(&c).unwrap().parse().unwrap());
        counters.insert(format!("counter/{i}"), counter);
    }

    let (mut duplicates, mut lost, mut phantom, mut bad_replays) = (0, 0, 0, 0);
    let mut counted: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut incr_values: HashMap<&str, Vec<i64>> = HashMap::new();
    for op in &ops {
        if op.f == "incr" {
            let entry = counted.entry(&op.key).or_default();
            match &op.kind {
                Kind::Ok {
                    result: WriteResult::Counter(v),
                    ..
                } => {
                    entry.0 += 1;
                    incr_values.entry(&op.key).or_default().push(*v);
                }
                Kind::Info(..) if resolved.get(&op.token) == Some(&true) => entry.0 += 1,
                _ => {}
            }
            continue;
        }
        let list = &lists[&op.key];
        let found = list.matches(op.token.as_str()).count();
        if found > 1 {
            duplicates += 1;
        }
        match &op.kind {
            Kind::Ok { result, .. } => {
                if found != 1 {
                    lost += 1;
                }
                // A replay must answer exactly what the original returned:
                // the list's length just after this token was appended.
                let WriteResult::Appended { len } = result else {
                    panic!("{result:?}")
                };
                let end = *len as usize;
                if list.get(end.saturating_sub(op.token.len())..end) != Some(op.token.as_str()) {
                    bad_replays += 1;
                }
            }
            Kind::Fail(_) => {
                if found != 0 {
                    phantom += 1;
                }
            }
            Kind::Info(..) => {
                let committed = resolved[&op.token];
                if usize::from(committed) != found {
                    lost += 1;
                }
            }
        }
    }
    for (key, (applied, _)) in &counted {
        assert_eq!(
            counters[*key], *applied,
            "{key}: every increment applied exactly once"
        );
    }
    for (key, values) in &mut incr_values {
        let before = values.len();
        values.sort_unstable();
        values.dedup();
        assert_eq!(
            values.len(),
            before,
            "{key}: two increments returned the same value"
        );
    }

    let path = dir.path().join("history.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&history.to_json()).unwrap(),
    )
    .unwrap();
    let oks = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Ok { .. }))
        .count();
    let replays = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Ok { replayed: true, .. }))
        .count();
    let fails = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Fail(_)))
        .count();
    eprintln!(
        "chaos: {} ops ({oks} ok, {replays} replayed, {fails} failed, {} unknown then resolved: {} committed); \
         duplicates={duplicates} lost={lost} phantom={phantom} bad_replays={bad_replays}; history {}",
        ops.len(),
        resolved.len(),
        resolved.values().filter(|c| **c).count(),
        path.display()
    );
    assert!(oks > 100, "the clients made progress");
    assert_eq!((duplicates, lost, phantom, bad_replays), (0, 0, 0, 0));
    for client in clients {
        client.close().await;
    }
}
