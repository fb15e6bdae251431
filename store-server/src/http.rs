//! The operator's HTTP listener (`--metrics-listen`, default
//! 127.0.0.1:9447): `GET /metrics` (Prometheus text), `GET /health` (the
//! process serves and its storage has not failed) and `GET /ready` (this
//! node takes traffic: a primary holding its lease, a standalone server,
//! or a backup in sync), with status codes a load balancer or a
//! Kubernetes probe reads.
//!
//! A request is its head only (no body is read), at most
//! [`MAX_HEAD_BYTES`], within [`HEAD_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] are served at once; every answer closes its
//! connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use store_protocol::Role;

use crate::server::Shared;

/// Largest request head read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, handle: PrometheusHandle) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (shared, handle) = (shared.clone(), handle.clone());
        tokio::spawn(async move {
            let _permit = permit;
            answer(stream, &shared, &handle).await;
        });
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared, handle: &PrometheusHandle) {
    let path = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(path))) => path,
        Ok(Ok(None)) => {
            let _ = write(&mut stream, 405, "text/plain", "only GET\n").await;
            return;
        }
        _ => {
            let _ = write(&mut stream, 400, "text/plain", "bad request\n").await;
            return;
        }
    };
    let (status, content_type, body) = route(&path, shared, handle);
    let _ = write(&mut stream, status, content_type, &body).await;
}

/// What `GET path` answers: status, content type, body.
fn route(path: &str, shared: &Shared, handle: &PrometheusHandle) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            crate::metrics::scrape(handle, shared),
        ),
        "/health" => match health(shared) {
            Ok(()) => (200, "text/plain", "ok\n".into()),
            Err(why) => (503, "text/plain", format!("{why}\n")),
        },
        "/ready" => match ready(shared) {
            Ok(what) => (200, "text/plain", format!("{what}\n")),
            Err(why) => (503, "text/plain", format!("{why}\n")),
        },
        _ => (
            404,
            "text/plain",
            "not found: /metrics, /health, /ready\n".into(),
        ),
    }
}

/// Up, and the storage takes writes (it has not failed an `fsync`).
fn health(shared: &Shared) -> Result<(), String> {
    shared
        .storage
        .failure()
        .map_or(Ok(()), |e| Err(format!("storage failed: {e}")))
}

/// Takes traffic now: a serving primary (or standalone server), or a
/// backup that reaches its primary and has applied its stream up to the
/// last frame; not while draining. A primary whose lease ran out is
/// neither.
fn ready(shared: &Shared) -> Result<&'static str, String> {
    health(shared)?;
    if shared.draining.load(Ordering::Acquire) {
        return Err("draining".into());
    }
    if shared.serving() {
        return Ok(if shared.pair.is_some() {
            "primary"
        } else {
            "standalone"
        });
    }
    let Some(pair) = &shared.pair else {
        return Err("not serving".into());
    };
    let status = pair.status();
    match shared.role() {
        Role::Backup if status.backup_in_sync && status.peer_reachable => Ok("backup in sync"),
        Role::Backup if !status.peer_reachable => Err("backup without its primary".into()),
        Role::Backup => Err(format!("backup not in sync: {}", status.note)),
        role => Err(format!(
            "not serving ({role}, epoch {}): {}",
            shared.epoch().0,
            status.note
        )),
    }
}

/// Reads the request head; `Some(path)` for a GET (query dropped), `None`
/// for another method.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD_BYTES {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the head ended"));
        }
        head.extend_from_slice(&chunk[..n.min(MAX_HEAD_BYTES - head.len())]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Err(std::io::Error::other("bad request line"));
    };
    if method != "GET" {
        return Ok(None);
    }
    Ok(Some(
        target.split('?').next().unwrap_or_default().to_string(),
    ))
}

async fn write(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
