//! The change feed from the client's side: a [`Subscription`] that goes
//! on across reconnects and failovers, resuming from the last TID the
//! server said it had read, so that no change is missed, none delivered
//! twice, none out of order.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use store_protocol::feed::{Change, FeedEvent, Subscribe, FEED_RESET_TOO_SLOW};
use store_protocol::{read_frame, FrameError, Request, Tid, WireError};
use tokio::time::Instant;

use crate::client::{read_error, Client};
use crate::connection::Connection;
use crate::error::Error;
use crate::retry::Backoff;

/// The changes to keys under a prefix, commit by commit in TID order;
/// from [`Client::subscribe`].
pub struct Subscription {
    client: Client,
    prefix: Bytes,
    /// The server has read the history up to here: a new subscription
    /// starts after it.
    resume: Tid,
    /// Every commit up to here has been handed out whole.
    delivered: Tid,
    /// The changes of the last frame not handed out yet, and its `through`.
    buffer: VecDeque<Change>,
    buffered_through: Tid,
    stream: Option<(Arc<Connection>, quinn::RecvStream)>,
    backoff: Backoff,
    ended: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("prefix", &self.prefix)
            .field("through", &self.delivered)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Client {
    /// Subscribes to every change of a key under `prefix` made by a commit
    /// after `from` (`Tid::ZERO`: the whole retained history; the current
    /// [`StatusInfo::last_tid`](crate::StatusInfo): from now on). Nothing
    /// is sent until the first [`Subscription::next`].
    ///
    /// ```no_run
    /// # async fn run(client: store_client::Client) -> Result<(), store_client::Error> {
    /// use store_client::{ChangeOp, Tid};
    /// let mut feed = client.subscribe("orders/", Tid::ZERO);
    /// while let Some(change) = feed.next().await {
    ///     let change = change?;
    ///     match change.op {
    ///         ChangeOp::Put(value) => println!("{} = {value:?}", change.tid),
    ///         ChangeOp::Append(tail) => println!("{} += {tail:?}", change.tid),
    ///         ChangeOp::Delete => println!("{} deleted", change.tid),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, prefix: impl Into<Bytes>, from: Tid) -> Subscription {
        Subscription {
            client: self.clone(),
            prefix: prefix.into(),
            resume: from,
            delivered: from,
            buffer: VecDeque::new(),
            buffered_through: from,
            stream: None,
            backoff: Backoff::default(),
            ended: false,
        }
    }
}

impl Subscription {
    /// A checkpoint: every commit up to this TID has been handed out
    /// whole (it moves at commit boundaries only). Saved with a view built
    /// from the feed, a new subscription from it after a restart goes on
    /// after the last whole commit (the changes of a commit only partly
    /// handed out come again).
    pub fn through(&self) -> Tid {
        self.delivered
    }

    /// The next change. Waits as long as it takes for one; across a lost
    /// connection or a failover it subscribes again where it stopped.
    /// `Some(Err(Unavailable))` when no server could be reached within the
    /// client's timeout: the subscription stays usable, call again. It
    /// ends (`None` after the error) on [`Error::Compacted`] (the history
    /// from here is no longer retained), [`Error::FellBehind`] (this
    /// reader took too long) or a refusal such as `PermissionDenied`.
    pub async fn next(&mut self) -> Option<Result<Change, Error>> {
        loop {
            if let Some(change) = self.buffer.pop_front() {
                self.delivered = match self.buffer.front() {
                    None => self.buffered_through,
                    Some(next) if next.tid != change.tid => change.tid,
                    Some(_) => self.delivered,
                };
                return Some(Ok(change));
            }
            if self.ended {
                return None;
            }
            let Some((connection, recv)) = self.stream.as_mut() else {
                if let Err(e) = self.open().await {
                    return Some(Err(e));
                }
                continue;
            };
            let limit = connection.frame_limit();
            let failure = match read_frame::<_, FeedEvent>(recv, limit).await {
                Ok(Some(FeedEvent::Changes { through, changes })) => {
                    self.backoff.reset();
                    self.resume = self.resume.max(through);
                    self.buffered_through = self.resume;
                    if changes.is_empty() {
                        self.delivered = self.resume;
                    }
                    self.buffer.extend(changes);
                    continue;
                }
                Ok(Some(FeedEvent::Compacted { oldest })) => {
                    return self.end(Error::Compacted { oldest });
                }
                Ok(Some(FeedEvent::Failed(e))) => match e {
                    WireError::NotPrimary { .. } | WireError::ShuttingDown => {
                        self.client.not_primary(connection);
                        e.to_string()
                    }
                    WireError::InProgress | WireError::Overloaded | WireError::Internal { .. } => {
                        e.to_string()
                    }
                    other => return self.end(read_error(other)),
                },
                Ok(None) => "the server ended the feed".into(),
                Err(e) if reset_for_falling_behind(&e) => return self.end(Error::FellBehind),
                Err(e) => e.to_string(),
            };
            tracing::debug!(%failure, resume = %self.resume, "feed interrupted; subscribing again");
            self.stream = None;
            let delay = self.backoff.next_delay(&mut rand::thread_rng());
            tokio::time::sleep(delay).await;
        }
    }

    fn end(&mut self, error: Error) -> Option<Result<Change, Error>> {
        self.ended = true;
        self.stream = None;
        Some(Err(error))
    }

    /// Subscribes on the current session from `through`.
    async fn open(&mut self) -> Result<(), Error> {
        let timeout = self.client.config().timeout;
        let deadline = Instant::now() + timeout;
        let policy = crate::ReadPolicy::Wait(timeout);
        let connection = self.client.connection(policy, deadline, None).await?;
        let request = Request::Subscribe(Subscribe {
            prefix: self.prefix.clone(),
            from: self.resume,
        });
        let recv = connection.hand_over(&request, deadline).await?;
        self.stream = Some((connection, recv));
        Ok(())
    }
}

/// Whether the server reset the stream because this reader fell behind.
fn reset_for_falling_behind(error: &FrameError) -> bool {
    let FrameError::Io(io) = error else {
        return false;
    };
    matches!(
        io.get_ref().and_then(|e| e.downcast_ref::<quinn::ReadError>()),
        Some(quinn::ReadError::Reset(code)) if *code == quinn::VarInt::from_u32(FEED_RESET_TOO_SLOW)
    )
}
