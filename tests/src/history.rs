//! Histories of concurrent clients under faults, and their checker
//! (DESIGN §9): clients append unique tokens to lists and increment
//! counters; every operation is recorded as Jepsen records it (invoke, then
//! ok, fail or info); the checker resolves every unknown outcome and fails
//! on a duplicate token, a lost acknowledged write, an applied definite
//! failure, a replay that answered differently from the original, or a
//! counter that does not add up.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use store_client::{
    Client, ClientConfig, CommitError, CommitOutcome, Error, ReadPolicy, Source, WriteResult,
};

use crate::registers;
use crate::EVENT_DEADLINE;

/// Upper bound on operations per client, so the loop ends even if the
/// fault schedule misbehaves (and the history stays a few hundred MB at
/// most); a run that exhausts it says so in its [`Report`].
const MAX_OPS_PER_CLIENT: usize = 200_000;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ok {
        tid: u64,
        replayed: bool,
        result: WriteResult,
    },
    /// A read returned `value` (from the cache if `cached`).
    Read {
        value: Option<String>,
        cached: bool,
    },
    Fail(String),
    Info(String, store_client::TxnId),
}

/// One operation of the history.
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

/// What the clients did, in Jepsen's shape.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// Transactions with unknown outcomes, held so that their outcomes stay
    /// on the server until the checker resolves them.
    unknown: Mutex<Vec<store_client::PreparedTxn>>,
    /// Clients that ran out of operations before they were stopped.
    exhausted: std::sync::atomic::AtomicUsize,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            unknown: Mutex::new(Vec::new()),
            exhausted: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u128 {
        self.start.elapsed().as_nanos()
    }

    /// Jepsen's shape: an invoke and a completion event per operation.
    fn to_json(&self) -> Value {
        let mut events = Vec::new();
        for op in self.ops.lock().unwrap().iter() {
            let reading = op.f.starts_with("read");
            let value = if reading {
                json!([op.key, null])
            } else {
                json!([op.key, op.token])
            };
            events.push(json!({"type": "invoke", "f": op.f, "value": value, "process": op.process, "time": op.invoked_ns as u64}));
            let (kind, extra) = match &op.kind {
                Kind::Ok { tid, replayed, .. } => ("ok", json!({"tid": tid, "replayed": replayed})),
                Kind::Read { value, cached } => {
                    ("ok", json!({"value": [op.key, value], "cached": cached}))
                }
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

/// How long a read waits for proof of liveness before it fails.
const READ_WAIT: Duration = Duration::from_secs(10);

/// Operation `n` of client `process`: what it does and to which key.
/// Client 0 only reads the registers through its cache, about once a
/// millisecond (never held up by a write of its own, it shows how far a
/// cache can lag); the others
/// interleave writes (appends, increments, register puts) and reads of
/// the registers, from the server and through the cache.
fn step(process: usize, n: usize) -> (&'static str, String) {
    if process == 0 {
        return ("read-cached", format!("register/{}", n % 2));
    }
    match n % 6 {
        0 | 3 => ("append", format!("list/{}", n % 3)),
        1 => ("incr", format!("counter/{}", n % 3)),
        2 => ("write", format!("register/{}", n % 2)),
        4 => ("read", format!("register/{}", n % 2)),
        _ => ("read-cached", format!("register/{}", n % 2)),
    }
}

/// Runs one client's operations until `stop`.
async fn run_client(process: usize, client: Client, history: Arc<History>, stop: Arc<AtomicBool>) {
    for n in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (f, key) = step(process, n);
        let token = format!("p{process}-{n};");
        let invoked_ns = history.now();
        let kind = match f {
            "read" => read(&client, &key, false).await,
            "read-cached" => read(&client, &key, true).await,
            _ => {
                let result = match f {
                    "append" => client.append(key.clone(), token.clone()).await,
                    "incr" => client.incr(key.clone(), 1).await,
                    _ => client.put(key.clone(), token.clone()).await,
                };
                written(result, &history)
            }
        };
        history.ops.lock().unwrap().push(Op {
            process,
            f,
            key,
            token,
            invoked_ns,
            completed_ns: history.now(),
            kind,
        });
        if process == 0 {
            // About a read a millisecond: the resolution of the staleness
            // measure, and a history that stays small over long runs.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    history.exhausted.fetch_add(1, Ordering::Relaxed);
}

/// Reads a register: from the server (bypassing the cache), or as an
/// application reads, through the cache while the session is proven live.
async fn read(client: &Client, key: &str, through_cache: bool) -> Kind {
    let text = |b: Bytes| String::from_utf8(b.to_vec()).expect("registers hold text");
    if through_cache {
        match client
            .read(key.to_string(), ReadPolicy::Wait(READ_WAIT))
            .await
        {
            Ok(read) => {
                assert!(!read.stale, "a waiting read is never answered stale");
                Kind::Read {
                    value: read.value.map(text),
                    cached: read.source == Source::Cache,
                }
            }
            Err(e) => Kind::Fail(e.to_string()),
        }
    } else {
        match client.get_versioned(key.to_string()).await {
            Ok(found) => Kind::Read {
                value: found.map(|v| text(v.value)),
                cached: false,
            },
            Err(e) => Kind::Fail(e.to_string()),
        }
    }
}

/// How a write ended; an unknown outcome's transaction is kept for the
/// checker to resolve.
fn written(result: Result<CommitOutcome, CommitError>, history: &History) -> Kind {
    match result {
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
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// Clients appending and incrementing into one [`History`] until stopped.
pub struct Workload {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    clients: Vec<Client>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stale_after: Duration,
}

impl Workload {
    /// Connects `clients` clients with `config` and starts them.
    pub async fn start(clients: usize, config: ClientConfig) -> Workload {
        Workload::start_each(vec![config; clients]).await
    }

    /// Connects one client per configuration and starts them (all with the
    /// same session timers).
    pub async fn start_each(configs: Vec<ClientConfig>) -> Workload {
        let history = Arc::new(History::new());
        let stop = Arc::new(AtomicBool::new(false));
        let mut workload = Workload {
            history,
            stop,
            clients: Vec::new(),
            tasks: Vec::new(),
            stale_after: configs[0].session.stale_after,
        };
        for (process, config) in configs.into_iter().enumerate() {
            let client = Client::connect(config).await.unwrap();
            workload.clients.push(client.clone());
            workload.tasks.push(tokio::spawn(run_client(
                process,
                client,
                workload.history.clone(),
                workload.stop.clone(),
            )));
        }
        workload
    }

    /// The clients, for watching their sessions.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Waits (up to the event deadline) until at least `oks` operations
    /// were acknowledged.
    pub async fn wait_for_oks(&self, oks: usize) {
        let deadline = std::time::Instant::now() + EVENT_DEADLINE;
        loop {
            let done = self
                .history
                .ops
                .lock()
                .unwrap()
                .iter()
                .filter(|op| matches!(op.kind, Kind::Ok { .. }))
                .count();
            if done >= oks {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {done} of {oks} operations acknowledged"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops the clients, then checks their history against what `checker`
    /// reads (every unknown outcome resolved first; any violation panics)
    /// and keeps it as JSON in `json`.
    pub async fn finish(self, checker: &Client, json: &Path) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            tokio::time::timeout(EVENT_DEADLINE, task)
                .await
                .unwrap()
                .unwrap();
        }
        let report = check(&self.history, checker, json, self.stale_after).await;
        for client in self.clients {
            client.close().await;
        }
        report
    }
}

/// What the checker found; it has already asserted that nothing is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Operations in the history.
    pub ops: usize,
    /// Acknowledged.
    pub oks: usize,
    /// Acknowledged by a replay of an earlier copy.
    pub replays: usize,
    /// Definite failures.
    pub fails: usize,
    /// Unknown outcomes, resolved afterwards.
    pub unknown: usize,
    /// Of those, committed.
    pub unknown_committed: usize,
    /// Register reads answered by the server.
    pub server_reads: usize,
    /// Register reads answered from a client's cache.
    pub cached_reads: usize,
    /// The most any cached read lagged behind an acknowledged write (the
    /// bound is `stale_after`).
    pub max_staleness: Duration,
    /// The 99th percentile of the time operations that succeeded took.
    pub p99: Duration,
    /// The longest any operation that succeeded took.
    pub max_latency: Duration,
    /// Clients that ran out of operations (200,000 each) before
    /// the end: the rest of the run had no workload from them.
    pub exhausted: usize,
}

/// Checks `history` against the store as `checker` reads it (resolving
/// every unknown outcome first), writes it as JSON to `json`, and panics
/// on any violation.
async fn check(history: &History, checker: &Client, json: &Path, stale_after: Duration) -> Report {
    // Unknown outcomes: ask the server what happened to each.
    let ops = history.ops.lock().unwrap().clone();
    // The TID each one committed at, or `None`.
    let mut resolved: HashMap<String, Option<u64>> = HashMap::new();
    for op in &ops {
        if let Kind::Info(_, txn_id) = &op.kind {
            let committed = match checker.resolve(*txn_id).await {
                Ok(outcome) => Some(outcome.tid.0),
                Err(Error::Abandoned { .. }) => None,
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

    // How often each token appears in each list (a token is `p<i>-<n>;`,
    // and `p` starts every token, so a split finds them all).
    let tokens: HashMap<&str, HashMap<&str, usize>> = lists
        .iter()
        .map(|(key, list)| {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for token in list.split(';').filter(|t| !t.is_empty()) {
                *counts.entry(token).or_default() += 1;
            }
            (key.as_str(), counts)
        })
        .collect();
    let (mut duplicates, mut lost, mut phantom, mut bad_replays) = (0, 0, 0, 0);
    let mut counted: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut incr_values: HashMap<&str, Vec<i64>> = HashMap::new();
    for op in ops.iter().filter(|op| op.f == "append" || op.f == "incr") {
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
                Kind::Info(..) if resolved.get(&op.token).is_some_and(Option::is_some) => {
                    entry.0 += 1
                }
                _ => {}
            }
            continue;
        }
        let list = &lists[&op.key];
        let found = tokens[op.key.as_str()]
            .get(op.token.trim_end_matches(';'))
            .copied()
            .unwrap_or(0);
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
                let committed = resolved[&op.token].is_some();
                if usize::from(committed) != found {
                    lost += 1;
                }
            }
            Kind::Read { .. } => unreachable!("lists are not read"),
        }
    }
    let registers = check_registers(&ops, &resolved, stale_after);
    // Kept before any verdict: a failing history is the one to read.
    std::fs::write(json, serde_json::to_vec_pretty(&history.to_json()).unwrap()).unwrap();
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
    assert!(oks > 100, "the clients made progress");
    assert_eq!((duplicates, lost, phantom, bad_replays), (0, 0, 0, 0));
    assert!(
        registers.violations.is_empty(),
        "register reads:\n{}",
        registers.violations.join("\n")
    );
    Report {
        ops: ops.len(),
        oks,
        replays,
        fails,
        unknown: resolved.len(),
        unknown_committed: resolved.values().filter(|c| c.is_some()).count(),
        server_reads: registers.server_reads,
        cached_reads: registers.cached_reads,
        max_staleness: registers.max_staleness,
        p99: latency(&ops, 0.99),
        max_latency: latency(&ops, 1.0),
        exhausted: history.exhausted.load(Ordering::Relaxed),
    }
}

/// The `quantile` of the time successful operations took.
fn latency(ops: &[Op], quantile: f64) -> Duration {
    let mut took: Vec<u128> = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Ok { .. } | Kind::Read { .. }))
        .map(|op| op.completed_ns - op.invoked_ns)
        .collect();
    took.sort_unstable();
    let index = ((took.len() as f64 * quantile) as usize).min(took.len().saturating_sub(1));
    took.get(index)
        .map_or(Duration::ZERO, |ns| Duration::from_nanos(*ns as u64))
}

/// Checks every register's reads against its writes (see [`registers`]);
/// the verdicts of all keys in one.
fn check_registers(
    ops: &[Op],
    resolved: &HashMap<String, Option<u64>>,
    stale_after: Duration,
) -> registers::Verdict {
    let mut keys: HashMap<&str, (Vec<registers::Write>, Vec<registers::Read>)> = HashMap::new();
    for op in ops.iter().filter(|op| op.key.starts_with("register/")) {
        let (writes, reads) = keys.entry(&op.key).or_default();
        match &op.kind {
            Kind::Read { value, cached } => reads.push(registers::Read {
                process: op.process,
                value: value.clone(),
                cached: *cached,
                invoked: op.invoked_ns,
                completed: op.completed_ns,
            }),
            Kind::Fail(_) if op.f.starts_with("read") => {}
            kind => writes.push(registers::Write {
                value: op.token.clone(),
                tid: match kind {
                    Kind::Ok { tid, .. } => Some(*tid),
                    Kind::Info(..) => resolved[&op.token],
                    _ => None,
                },
                invoked: op.invoked_ns,
                acked: matches!(kind, Kind::Ok { .. }).then_some(op.completed_ns),
            }),
        }
    }
    let mut all = registers::Verdict::default();
    for (key, (writes, reads)) in &keys {
        let verdict = registers::check(key, writes, reads, stale_after);
        all.server_reads += verdict.server_reads;
        all.cached_reads += verdict.cached_reads;
        all.max_staleness = all.max_staleness.max(verdict.max_staleness);
        all.violations.extend(verdict.violations);
    }
    all
}
