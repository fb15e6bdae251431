//! Bytes of requests held in memory. Each request frame reserves its
//! announced length from its connection's budget (`--max-connection-bytes`)
//! and from the server's (`--max-request-bytes`) before a byte of its body
//! is read, and gives them back once it is answered: a client that opens
//! many streams of large frames waits for its own earlier requests, and
//! all clients together never hold more than the server's budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One connection's share and the server's, as semaphores of bytes.
pub struct ByteBudget {
    connection: Arc<Semaphore>,
    server: Arc<Semaphore>,
}

/// Bytes reserved for one request until dropped.
pub struct Reserved {
    _connection: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
}

/// Most bytes one semaphore can hand out.
fn capped(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// The server's budget of `bytes`, shared by every connection.
pub fn server_budget(bytes: u64) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(capped(bytes)))
}

impl ByteBudget {
    /// A new connection's budget of `bytes`, within `server`'s.
    pub fn for_connection(server: &Arc<Semaphore>, bytes: u64) -> ByteBudget {
        ByteBudget {
            connection: Arc::new(Semaphore::new(capped(bytes))),
            server: server.clone(),
        }
    }

    /// Waits until `len` bytes are free in both budgets and reserves them.
    /// The configuration guarantees both hold at least one whole frame, so
    /// every frame eventually fits.
    pub async fn reserve(&self, len: u32) -> Option<Reserved> {
        let connection = self.connection.clone().acquire_many_owned(len).await.ok()?;
        let server = self.server.clone().acquire_many_owned(len).await.ok()?;
        Some(Reserved {
            _connection: connection,
            _server: server,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_request_waits_for_bytes_its_connection_or_the_server_holds() {
        let server = server_budget(100);
        let a = ByteBudget::for_connection(&server, 60);
        let b = ByteBudget::for_connection(&server, 60);
        let first = a.reserve(50).await.unwrap();
        // The connection's own share is spent: its next request waits.
        let waiting = tokio::time::timeout(Duration::from_millis(50), a.reserve(20)).await;
        assert!(waiting.is_err());
        // Another connection fits in the server's rest (50), not beyond.
        let second = b.reserve(50).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.reserve(1)).await;
        assert!(waiting.is_err());
        drop((first, second));
        assert!(a.reserve(60).await.is_some());
    }
}
