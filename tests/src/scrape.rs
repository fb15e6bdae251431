//! A plain HTTP/1.1 GET for the server's `/metrics`, `/health` and
//! `/ready`, and a reader of Prometheus text.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::EVENT_DEADLINE;

/// Sends `request` (a whole request head, or anything) and returns the
/// status code and body of the answer.
pub async fn send(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    let answer = tokio::time::timeout(EVENT_DEADLINE, exchange)
        .await
        .expect("an HTTP answer within the deadline")
        .expect("an HTTP exchange");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
    .await
}

/// The value of the sample named exactly `series` (name and labels, as
/// printed: `zeolite_commits_total{outcome="committed"}`), 0 if absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
