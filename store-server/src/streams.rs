//! A client connection's window of concurrent request streams: small while
//! the connection is idle, doubled as its requests overlap.
//!
//! quinn sets aside the state of every stream a peer may open
//! (`max_concurrent_bidi_streams`) as soon as the connection exists: at
//! 256 streams that was about 20 KiB per connection, used or not, a third
//! of an idle session's cost. A connection starts with [`INITIAL_STREAMS`]
//! (its session stream and a few requests) and the window doubles
//! whenever open requests reach a third of it, up to `--max-streams`. A
//! third, not a half: a stream's slot comes back to the client only a
//! round trip after its answer, so a client with `k` requests in flight
//! holds about twice `k` slots. It never shrinks: quinn keeps what it set
//! aside.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Streams a client connection may open at first: the session stream
/// plus requests, one after another or a few at once.
pub const INITIAL_STREAMS: u32 = 8;

/// The stream window a connection starts with, under `max`.
pub fn initial(max: u32) -> u32 {
    INITIAL_STREAMS.min(max)
}

/// One connection's stream window and its open requests.
pub struct StreamWindow {
    connection: quinn::Connection,
    open: Arc<AtomicU32>,
    window: u32,
    max: u32,
}

/// An open request stream, counted until dropped.
pub struct OpenRequest(Arc<AtomicU32>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StreamWindow {
    /// The window of a newly accepted client connection (it was opened
    /// with [`initial`]`(max)`).
    pub fn new(connection: quinn::Connection, max: u32) -> StreamWindow {
        StreamWindow {
            connection,
            open: Arc::new(AtomicU32::new(0)),
            window: initial(max),
            max,
        }
    }

    /// Counts a newly accepted request stream as open, and doubles the
    /// window if open requests (and the session stream) reach a third of it.
    pub fn opened(&mut self) -> OpenRequest {
        let open = self.open.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let in_use = open.saturating_add(1); // the session stream
        if in_use.saturating_mul(3) >= self.window && self.window < self.max {
            self.window = self.window.saturating_mul(2).min(self.max);
            self.connection
                .set_max_concurrent_bi_streams(self.window.into());
            tracing::debug!(window = self.window, "request stream window grown");
        }
        OpenRequest(self.open.clone())
    }
}
