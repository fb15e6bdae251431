//! Writing a long answer (a backup, a change feed) frame by frame to a
//! reader that may stop reading: nothing is buffered for it beyond QUIC's
//! flow control, it is cut off once it takes nothing for
//! `--stall-timeout`, and the write is given up when the server drains.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::server::Shared;

/// How often a blocked write looks at the drain and its deadline.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Why a paced write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The reader went away, or the server is draining.
    Gone,
    /// The reader took nothing for the stall timeout.
    Stalled,
}

/// Writes `frame` to `send`, counting its bytes as response bytes out.
pub(crate) async fn write_paced(
    shared: &Shared,
    send: &mut quinn::SendStream,
    frame: &[u8],
) -> Result<(), Cut> {
    metrics::counter!(crate::metrics::REQUEST_BYTES, "direction" => "out")
        .increment(frame.len() as u64);
    let stalled = tokio::time::Instant::now() + shared.stall_timeout;
    let written = send.write_all(frame);
    tokio::pin!(written);
    loop {
        tokio::select! {
            result = &mut written => return result.map_err(|_| Cut::Gone),
            () = tokio::time::sleep(CHECK_EVERY) => {
                if shared.draining.load(Ordering::Acquire) {
                    return Err(Cut::Gone);
                }
                if tokio::time::Instant::now() >= stalled {
                    return Err(Cut::Stalled);
                }
            }
        }
    }
}
