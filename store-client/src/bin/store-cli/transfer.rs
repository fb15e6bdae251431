//! Moving data in and out: `backup` (the server's consistent copy),
//! `dump` (JSON lines in key order) and `load` (JSON lines committed in
//! batches, each exactly once across reruns).

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};
use store_client::{Client, ClientConfig, Entry, Error, ScanRequest, WritePolicy};

use crate::output::{put_bytes, Exit, Output};

/// Most keys plus values in one `load` batch, whatever `--batch` says:
/// well inside the server's default frame and transaction limits.
const LOAD_BATCH_BYTES: usize = 1 << 20;

/// Calls `each` for every entry whose key starts with `prefix`, in key
/// order, at most `limit`, one page per request (each page bounded by
/// `timeout` from its start).
pub async fn for_each_entry(
    client: &Client,
    prefix: Bytes,
    limit: Option<u64>,
    timeout: Option<Duration>,
    mut each: impl FnMut(&Entry),
) -> Result<u64, Error> {
    let mut left = limit.unwrap_or(u64::MAX);
    let mut seen = 0u64;
    let mut scan = ScanRequest::prefix(prefix, page_size(left));
    while left > 0 {
        let page = match timeout {
            Some(timeout) => {
                let bounded = client.until(std::time::Instant::now() + timeout);
                bounded.scan(scan.clone()).await?
            }
            None => client.scan(scan.clone()).await?,
        };
        for entry in page
            .entries
            .iter()
            .take(usize::try_from(left).unwrap_or(usize::MAX))
        {
            each(entry);
            seen += 1;
        }
        left = left.saturating_sub(page.entries.len() as u64);
        match page.next_start() {
            Some(start) => {
                scan.start = start;
                scan.limit = page_size(left);
            }
            None => break,
        }
    }
    Ok(seen)
}

/// Entries asked for per scan request.
fn page_size(left: u64) -> u32 {
    left.min(1000) as u32
}

/// A progress line on stderr, redrawn at most four times a second, and
/// only when stderr is a terminal.
struct Progress {
    shown: Option<Instant>,
    enabled: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            shown: None,
            enabled: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn show(&mut self, line: impl FnOnce() -> String) {
        if !self.enabled
            || self
                .shown
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.shown = Some(Instant::now());
        let _ = write!(std::io::stderr(), "\r\x1b[2K{}", line());
    }

    fn done(&self) {
        if self.enabled && self.shown.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn config_error(detail: String) -> Error {
    Error::Config { detail }
}

/// `store-cli backup FILE`: the backup goes to `FILE.partial-PID`, is
/// synced, then renamed over `FILE`; a failed backup leaves no `FILE`
/// behind. `-` writes to stdout (and the summary to stderr).
pub async fn backup(client: &Client, file: &Path, out: &mut Output) -> Result<Exit, Error> {
    let started = Instant::now();
    let mut progress = Progress::new();
    let mut show = |tally: &store_protocol::backup::BackupTally| {
        progress.show(|| {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            format!(
                "backup: {} rows, {:.1} MiB, {:.1} MiB/s",
                tally.rows(),
                mib(tally.bytes()),
                mib(tally.bytes()) / secs
            )
        });
    };
    let tally = if file == Path::new("-") {
        let mut stdout = tokio::io::stdout();
        client.backup(&mut stdout, &mut show).await?
    } else {
        let partial = partial_path(file);
        // Readable by its owner only: it holds every key.
        let created = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .await
            .map_err(|e| config_error(format!("creating {}: {e}", partial.display())))?;
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, created);
        let taken = client.backup(&mut writer, &mut show).await;
        let kept = match taken {
            Ok(tally) => keep(writer.into_inner(), &partial, file)
                .await
                .map(|()| tally),
            Err(e) => Err(e),
        };
        match kept {
            Ok(tally) => tally,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        }
    };
    progress.done();
    let secs = started.elapsed().as_secs_f64();
    let bytes = tally.bytes() + store_protocol::backup::BACKUP_MAGIC.len() as u64;
    let tid = tally.header().map_or(0, |h| h.last_tid.0);
    let cluster = tally.header().map_or(0, |h| h.cluster_id);
    let summary = [
        ("tid", tid.into()),
        ("rows", tally.rows().into()),
        ("bytes", bytes.into()),
        ("cluster", format!("{cluster:016x}").into()),
        ("seconds", round(secs).into()),
        ("mib_per_sec", round(mib(bytes) / secs.max(1e-9)).into()),
    ];
    // With `-`, stdout is the backup: the summary must not follow it there.
    out.summary("backup", &summary, file == Path::new("-"));
    Ok(Exit::Ok)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The file a backup is written to before it is complete: its own per
/// process, so two backups to one name never write the same file.
fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

/// Syncs the written backup, renames it into place and syncs the directory.
async fn keep(file: tokio::fs::File, partial: &Path, target: &Path) -> Result<(), Error> {
    let io = |what: &str, e: std::io::Error| config_error(format!("{what}: {e}"));
    file.sync_all()
        .await
        .map_err(|e| io(&format!("syncing {}", partial.display()), e))?;
    drop(file);
    tokio::fs::rename(partial, target)
        .await
        .map_err(|e| io(&format!("renaming to {}", target.display()), e))?;
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&format!("syncing {}", dir.display()), e))
}

/// `store-cli dump [PREFIX]`: a JSON line per key, in key order.
pub async fn dump(
    client: &Client,
    prefix: Bytes,
    timeout: Duration,
    out: &mut Output,
) -> Result<Exit, Error> {
    let mut progress = Progress::new();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    let keys = for_each_entry(client, prefix, None, Some(timeout), |entry| {
        let mut line = Map::new();
        put_bytes(&mut line, "key", &entry.key);
        put_bytes(&mut line, "value", &entry.value);
        line.insert("serial".into(), entry.serial.0.into());
        if failed.is_none() {
            if let Err(e) = writeln!(stdout, "{}", Value::Object(line)) {
                failed = Some(e);
            }
        }
    })
    .await;
    let flushed = stdout.flush();
    drop(stdout);
    let keys = keys?;
    progress.show(|| format!("dump: {keys} keys"));
    progress.done();
    if let Some(e) = failed.or(flushed.err()) {
        return Err(config_error(format!("writing stdout: {e}")));
    }
    out.note(&format!("dumped keys={keys}"));
    Ok(Exit::Ok)
}

/// Bytes from `name` (UTF-8 text) or `name_b64` (base64).
fn take_bytes(object: &Map<String, Value>, name: &str) -> Result<Bytes, String> {
    match (object.get(name), object.get(&format!("{name}_b64"))) {
        (Some(Value::String(text)), None) => Ok(Bytes::from(text.clone().into_bytes())),
        (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| format!("{name}_b64: {e}")),
        (None, None) => Err(format!("no \"{name}\" or \"{name}_b64\"")),
        _ => Err(format!(
            "\"{name}\" must be a string, given either as \"{name}\" or \"{name}_b64\""
        )),
    }
}

/// One line of a dump: a key and its value.
fn parse_line(line: &str) -> Result<(Bytes, Bytes), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".into());
    };
    Ok((take_bytes(&object, "key")?, take_bytes(&object, "value")?))
}

/// Which lines go in which batch: closes a batch at `batch` lines or
/// [`LOAD_BATCH_BYTES`], so the same file and `--batch` always make the
/// same batches (and so the same transaction ids).
struct Batcher {
    lines: usize,
    bytes: usize,
    max_lines: usize,
}

impl Batcher {
    /// Whether a line of `size` bytes starts a new batch.
    fn starts_new(&mut self, size: usize) -> bool {
        let full = self.lines > 0
            && (self.lines >= self.max_lines || self.bytes + size > LOAD_BATCH_BYTES);
        if full {
            self.lines = 0;
            self.bytes = 0;
        }
        self.lines += 1;
        self.bytes += size;
        full
    }
}

/// What a first read of the file found: every line parses, how many
/// there are, and the instance id its batches are committed under.
struct Plan {
    lines: u64,
    instance: u64,
}

/// Reads `file` once: checks every line, counts them, and derives the
/// instance id from the file's bytes and the batch size.
fn plan(file: &Path, batch: u32) -> Result<Plan, Error> {
    let opened = std::fs::File::open(file)
        .map_err(|e| config_error(format!("opening {}: {e}", file.display())))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(b"zeolite load v1");
    hasher.update(&batch.to_le_bytes());
    let mut lines = 0u64;
    for (number, line) in std::io::BufReader::new(opened).lines().enumerate() {
        let line = line.map_err(|e| config_error(format!("reading {}: {e}", file.display())))?;
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
        if line.trim().is_empty() {
            continue;
        }
        parse_line(&line)
            .map_err(|e| config_error(format!("{} line {}: {e}", file.display(), number + 1)))?;
        lines += 1;
    }
    Ok(Plan {
        lines,
        instance: hasher.digest(),
    })
}

/// `store-cli load FILE`: commits the lines in batches under transaction
/// ids derived from the file, so a rerun after an interruption finds the
/// batches already applied (replayed, or forgotten as expired) and applies
/// only the rest.
pub async fn load(
    mut config: ClientConfig,
    file: &Path,
    batch: u32,
    out: &mut Output,
) -> Result<Exit, Error> {
    let started = Instant::now();
    let plan = plan(file, batch)?;
    config.instance_id = Some(plan.instance);
    let timeout = config.timeout;
    let client = Client::connect(config).await?;
    let result = commit_batches(&client, file, batch, &plan, timeout).await;
    client.close().await;
    let counts = result?;
    let secs = started.elapsed().as_secs_f64();
    out.summary(
        "loaded",
        &[
            ("lines", plan.lines.into()),
            ("batches", counts.batches.into()),
            ("applied", counts.applied.into()),
            ("already_applied", counts.already.into()),
            ("seconds", round(secs).into()),
        ],
        false,
    );
    Ok(Exit::Ok)
}

/// What became of one batch.
enum Batch {
    /// Applied now.
    Applied,
    /// Applied by an earlier run: replayed, or forgotten since (expired).
    Already,
}

/// Commits one batch under [`WritePolicy::FailFast`], resending the same
/// transaction itself until `timeout`, and never asking `resolve`: so no
/// batch of a load is ever recorded as abandoned, and the only decision a
/// batch of plain puts can get is "committed". A rerun that finds its id
/// forgotten (expired) therefore finds it applied. Out of time, the error
/// names the transaction, and a rerun finishes the load.
async fn commit_batch(
    client: &Client,
    rows: Vec<(Bytes, Bytes)>,
    timeout: Duration,
) -> Result<Batch, Error> {
    let deadline = Instant::now() + timeout;
    let handle = client
        .with_write_policy(WritePolicy::FailFast)
        .until(deadline);
    let mut txn = handle.txn();
    for (key, value) in rows {
        txn.put(key, value);
    }
    let mut attempt = txn.commit().await;
    let mut pause = Duration::from_millis(50);
    loop {
        let failed = match attempt {
            Ok(outcome) if outcome.replayed => return Ok(Batch::Already),
            Ok(_) => return Ok(Batch::Applied),
            Err(failed) => failed,
        };
        if matches!(failed.error(), Error::Expired { .. }) {
            return Ok(Batch::Already);
        }
        let error = failed.error().clone();
        let Some(prepared) = failed.into_prepared() else {
            return Err(error);
        };
        if Instant::now() + pause >= deadline {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        attempt = handle.recommit(prepared).await;
    }
}

#[derive(Default)]
struct Counts {
    batches: u64,
    applied: u64,
    already: u64,
}

async fn commit_batches(
    client: &Client,
    file: &Path,
    batch: u32,
    plan: &Plan,
    timeout: Duration,
) -> Result<Counts, Error> {
    let opened = std::fs::File::open(file)
        .map_err(|e| config_error(format!("opening {}: {e}", file.display())))?;
    let mut batcher = Batcher {
        lines: 0,
        bytes: 0,
        max_lines: batch.max(1) as usize,
    };
    let mut progress = Progress::new();
    let mut counts = Counts::default();
    let mut pending: Vec<(Bytes, Bytes)> = Vec::new();
    let mut done = 0u64;
    let mut lines = std::io::BufReader::new(opened).lines();
    loop {
        let next = match lines.next() {
            Some(line) => {
                let line =
                    line.map_err(|e| config_error(format!("reading {}: {e}", file.display())))?;
                if line.trim().is_empty() {
                    continue;
                }
                // Checked whole by `plan`; a file changed since is refused.
                Some(parse_line(&line).map_err(|e| {
                    config_error(format!("{} changed while loading: {e}", file.display()))
                })?)
            }
            None => None,
        };
        let flush = match &next {
            Some((key, value)) => batcher.starts_new(key.len() + value.len()),
            None => !pending.is_empty(),
        };
        if flush {
            let rows = std::mem::take(&mut pending);
            let n = rows.len() as u64;
            match commit_batch(client, rows, timeout).await? {
                Batch::Applied => counts.applied += n,
                Batch::Already => counts.already += n,
            }
            counts.batches += 1;
            done += n;
            progress.show(|| format!("load: {done} of {} lines", plan.lines));
        }
        match next {
            Some(row) => pending.push(row),
            None => break,
        }
    }
    progress.done();
    Ok(counts)
}
