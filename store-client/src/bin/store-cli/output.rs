//! What `store-cli` prints, in text or JSON (DESIGN §8), and its exit codes.

use std::io::Write as _;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use store_client::{
    Change, ChangeOp, CommitOutcome, Error, Read, SessionState, SessionStatus, Source, StatusInfo,
    TxnId,
};

/// Exit codes scripts rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// `get`: the key does not exist.
    NotFound = 1,
    /// Usage or configuration error (clap also exits 2 on bad usage).
    Usage = 2,
    /// A definite failure: nothing applied.
    Definite = 3,
    /// The outcome of a write is unknown; stderr names `txn=ID`.
    Unknown = 4,
    /// No server answered; a write was never sent.
    Unavailable = 5,
}

/// Prints results as text or one JSON object per line.
pub struct Output {
    json: bool,
    started: Instant,
    stdout: std::io::Stdout,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output {
            json,
            started: Instant::now(),
            stdout: std::io::stdout(),
        }
    }

    fn t_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn line(&mut self, bytes: &[u8]) {
        let mut out = self.stdout.lock();
        // A closed stdout (e.g. `| head`) is not worth a panic.
        let _ = out.write_all(bytes).and_then(|()| out.write_all(b"\n"));
    }

    fn json_line(&mut self, value: &Value) {
        self.line(value.to_string().as_bytes());
    }

    /// A `get`: the value (exit 0), or nothing (exit 1) when absent.
    pub fn read(&mut self, state: SessionState, read: &Read) -> Exit {
        if self.json {
            let line = self.read_object(state, read);
            self.json_line(&line);
        } else if let Some(value) = &read.value {
            self.line(value);
        }
        match read.value {
            Some(_) => Exit::Ok,
            None => Exit::NotFound,
        }
    }

    /// One `watch` read: `T_MS STATE SOURCE[ stale] VALUE` (or `(absent)`).
    pub fn watched(&mut self, state: SessionState, read: &Read) {
        if self.json {
            let line = self.read_object(state, read);
            self.json_line(&line);
            return;
        }
        let mut line = format!("{} {} {}", self.t_ms(), state, source_name(read));
        if read.stale {
            line.push_str(" stale");
        }
        let mut line = line.into_bytes();
        line.push(b' ');
        match &read.value {
            Some(value) => line.extend_from_slice(value),
            None => line.extend_from_slice(b"(absent)"),
        }
        self.line(&line);
    }

    /// One failed `watch` read: `T_MS STATE error: MESSAGE`.
    pub fn watch_error(&mut self, state: SessionState, error: &Error) {
        if self.json {
            let line =
                json!({"t_ms": self.t_ms(), "state": state.as_str(), "error": error.to_string()});
            self.json_line(&line);
        } else {
            let line = format!("{} {} error: {error}", self.t_ms(), state);
            self.line(line.as_bytes());
        }
    }

    /// `{"t_ms", "state", "value", "source", "stale"?}`.
    fn read_object(&self, state: SessionState, read: &Read) -> Value {
        let mut object = Map::new();
        object.insert("t_ms".into(), json!(self.t_ms()));
        object.insert("state".into(), json!(state.as_str()));
        match &read.value {
            Some(value) => put_bytes(&mut object, "value", value),
            None => {
                object.insert("value".into(), Value::Null);
            }
        }
        object.insert("source".into(), json!(source_name(read)));
        if read.stale {
            object.insert("stale".into(), json!(true));
        }
        Value::Object(object)
    }

    /// One `monitor` line: `T_MS STATE SERVER`.
    pub fn monitor(&mut self, status: &SessionStatus) {
        let server = status.server.as_deref().unwrap_or("-");
        if self.json {
            let line = json!({
                "t_ms": self.t_ms(),
                "state": status.state.as_str(),
                "server": status.server,
                "epoch": status.epoch.0,
            });
            self.json_line(&line);
        } else {
            let line = format!("{} {} {server}", self.t_ms(), status.state);
            self.line(line.as_bytes());
        }
    }

    pub fn committed(&mut self, outcome: &CommitOutcome) -> Exit {
        if !outcome.confirmed {
            // Unconfirmed: handed over, its answer not awaited.
            if self.json {
                let line = json!({"sent": true, "txn": outcome.txn_id.to_string()});
                self.json_line(&line);
            } else {
                self.line(format!("sent txn={}", outcome.txn_id).as_bytes());
            }
            return Exit::Ok;
        }
        if self.json {
            let mut object = Map::new();
            object.insert("tid".into(), json!(outcome.tid.0));
            object.insert("txn".into(), json!(outcome.txn_id.to_string()));
            object.insert("replayed".into(), json!(outcome.replayed));
            if let Some(value) = outcome.counter() {
                object.insert("value".into(), json!(value));
            }
            self.json_line(&Value::Object(object));
        } else {
            let mut text = format!("committed tid={} txn={}", outcome.tid, outcome.txn_id);
            if let Some(value) = outcome.counter() {
                text.push_str(&format!(" value={value}"));
            }
            self.line(text.as_bytes());
        }
        Exit::Ok
    }

    /// `resolve` found the transaction abandoned: never applied.
    pub fn abandoned(&mut self, txn_id: TxnId) -> Exit {
        if self.json {
            let line = json!({"txn": txn_id.to_string(), "abandoned": true});
            self.json_line(&line);
        } else {
            self.line(b"abandoned");
        }
        Exit::Ok
    }

    pub fn entry(&mut self, key: &[u8], value: &[u8]) {
        if self.json {
            let mut object = Map::new();
            put_bytes(&mut object, "key", key);
            put_bytes(&mut object, "value", value);
            self.json_line(&Value::Object(object));
        } else {
            let mut line = Vec::with_capacity(key.len() + value.len() + 1);
            line.extend_from_slice(key);
            line.push(b'\t');
            line.extend_from_slice(value);
            self.line(&line);
        }
    }

    pub fn status(&mut self, status: &StatusInfo) -> Exit {
        let server_id = format!("{:016x}", status.server_id);
        if self.json {
            let mut line = json!({
                "role": status.role.to_string(),
                "epoch": status.epoch.0,
                "last_tid": status.last_tid.0,
                "server_id": server_id,
                "sessions": status.sessions,
            });
            if let Some(pair) = &status.pair {
                line["pair"] = json!({
                    "peer": pair.peer,
                    "peer_reachable": pair.peer_reachable,
                    "peer_last_tid": pair.peer_last_tid.map(|t| t.0),
                    "backup_in_sync": pair.backup_in_sync,
                    "witness_reachable": pair.witness_reachable,
                    "lag_tids": pair.lag_tids,
                    "note": pair.note,
                });
            }
            self.json_line(&line);
        } else {
            let mut text = format!(
                "role={} epoch={} last_tid={} server_id={} sessions={}",
                status.role, status.epoch, status.last_tid, server_id, status.sessions
            );
            if let Some(pair) = &status.pair {
                let yes_no = |b: bool| if b { "yes" } else { "no" };
                let lag = pair
                    .lag_tids
                    .map_or_else(|| "unknown".to_string(), |n| n.to_string());
                text.push_str(&format!(
                    " peer={} peer_reachable={} backup_in_sync={} witness_reachable={} lag_tids={lag}",
                    pair.peer,
                    yes_no(pair.peer_reachable),
                    yes_no(pair.backup_in_sync),
                    yes_no(pair.witness_reachable),
                ));
                if !pair.note.is_empty() {
                    text.push_str(&format!(" note={:?}", pair.note));
                }
            }
            self.line(text.as_bytes());
        }
        Exit::Ok
    }

    /// Reports a failure on stderr (and, in JSON mode, as `{"t_ms", "state",
    /// "error"}` on stdout) and returns its exit code.
    pub fn error(&mut self, state: SessionState, error: &Error) -> Exit {
        eprintln!("store-cli: {error}");
        if self.json {
            let line =
                json!({"t_ms": self.t_ms(), "state": state.as_str(), "error": error.to_string()});
            self.json_line(&line);
        }
        exit_for(error)
    }
}

impl Output {
    /// One change of a `subscribe`: `TID<TAB>put<TAB>KEY<TAB>VALUE`,
    /// `TID<TAB>append<TAB>KEY<TAB>SUFFIX` or `TID<TAB>delete<TAB>KEY`; with
    /// `--json` `{"tid", "key", "value" | "appended" | "deleted": true}`.
    pub fn change(&mut self, change: &Change) {
        if self.json {
            let mut object = Map::new();
            object.insert("tid".into(), json!(change.tid.0));
            put_bytes(&mut object, "key", &change.key);
            match &change.op {
                ChangeOp::Put(value) => put_bytes(&mut object, "value", value),
                ChangeOp::Append(suffix) => put_bytes(&mut object, "appended", suffix),
                ChangeOp::Delete => {
                    object.insert("deleted".into(), json!(true));
                }
            }
            self.json_line(&Value::Object(object));
            return;
        }
        let mut line = format!("{}\t", change.tid.0).into_bytes();
        let (verb, bytes) = match &change.op {
            ChangeOp::Put(value) => ("put", Some(value)),
            ChangeOp::Append(suffix) => ("append", Some(suffix)),
            ChangeOp::Delete => ("delete", None),
        };
        line.extend_from_slice(verb.as_bytes());
        line.push(b'\t');
        line.extend_from_slice(&change.key);
        if let Some(bytes) = bytes {
            line.push(b'\t');
            line.extend_from_slice(bytes);
        }
        self.line(&line);
    }

    /// A command's summary: `WHAT k=v ...`, or the fields as one JSON
    /// object with `--json`; on stdout, or on stderr when stdout holds the
    /// command's data.
    pub fn summary(&mut self, what: &str, fields: &[(&str, Value)], to_stderr: bool) {
        if self.json {
            let object: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect();
            let object = Value::Object(object);
            if to_stderr {
                eprintln!("{object}");
            } else {
                self.json_line(&object);
            }
        } else {
            let mut line = what.to_string();
            for (k, v) in fields {
                match v {
                    Value::String(s) => line.push_str(&format!(" {k}={s}")),
                    other => line.push_str(&format!(" {k}={other}")),
                }
            }
            if to_stderr {
                eprintln!("{line}");
            } else {
                self.line(line.as_bytes());
            }
        }
    }

    /// A line on stderr for a command whose stdout is data (`dump`).
    pub fn note(&self, text: &str) {
        eprintln!("store-cli: {text}");
    }
}

fn source_name(read: &Read) -> &'static str {
    match read.source {
        Source::Cache => "cache",
        Source::Server => "server",
    }
}

fn exit_for(error: &Error) -> Exit {
    match error {
        Error::Conflict { .. }
        | Error::Rejected(_)
        | Error::Abandoned { .. }
        | Error::Compacted { .. }
        | Error::FellBehind => Exit::Definite,
        // A forgotten outcome is an unknown one: a copy may have landed.
        Error::OutcomeUnknown { .. } | Error::Expired { .. } => Exit::Unknown,
        Error::Config { .. } | Error::Tls { .. } => Exit::Usage,
        _ => Exit::Unavailable,
    }
}

/// Inserts bytes as UTF-8 text under `name`, or base64 under `name_b64`.
pub fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.into(), json!(text)),
        Err(_) => object.insert(
            format!("{name}_b64"),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}
