//! Taking a backup: the server's consistent copy at one TID, streamed into
//! a writer and checked frame by frame on the way
//! ([`store_protocol::backup`]).

use store_protocol::backup::{BackupPiece, BackupTally, BACKUP_MAGIC};
use store_protocol::{decode_body, read_frame_bytes, read_frame_len, BackupError, Request};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use crate::client::Client;
use crate::error::Error;

impl Client {
    /// Streams a backup of the whole store into `out`: [`BACKUP_MAGIC`],
    /// then the server's frames as they arrive, each checked (order, row
    /// count, CRC-32C) before it is written. Needs the `admin` role; one
    /// backup runs at a time per server. `progress` sees the tally after
    /// every frame. Returns the tally once the end arrived and matched;
    /// anything else is an error, and what was written is not a backup.
    ///
    /// The copy holds every commit up to the header's TID and none after,
    /// while the server goes on serving. No retries: a backup cut short is
    /// taken again. The wait for each frame is bounded by the call's
    /// timeout, or a minute if longer; the whole backup is not.
    ///
    /// ```no_run
    /// # async fn run(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let mut file = tokio::fs::File::create("zeolite.backup").await.map_err(|e| {
    ///     store_client::Error::Config { detail: e.to_string() }
    /// })?;
    /// let tally = client.backup(&mut file, |_| {}).await?;
    /// println!("{} rows at tid {:?}", tally.rows(), tally.header().map(|h| h.last_tid));
    /// # Ok(()) }
    /// ```
    pub async fn backup<W: AsyncWrite + Unpin>(
        &self,
        out: &mut W,
        mut progress: impl FnMut(&BackupTally),
    ) -> Result<BackupTally, Error> {
        // A server checkpoints before its first frame: give that a minute
        // on a busy machine, whatever the call's timeout.
        let stall = self
            .config()
            .timeout
            .max(std::time::Duration::from_secs(60));
        let deadline = Instant::now() + stall;
        let policy = self.config().read_policy;
        let connection = self.connection(policy, deadline, None).await?;
        let limit = connection.frame_limit();
        let mut recv = connection.hand_over(&Request::Backup, deadline).await?;
        let cut = |detail: String| Error::Unavailable {
            detail: format!("backup cut short: {detail}"),
        };
        let written = |e: std::io::Error| Error::Config {
            detail: format!("writing the backup: {e}"),
        };
        out.write_all(&BACKUP_MAGIC).await.map_err(written)?;
        let mut tally = BackupTally::default();
        loop {
            let frame = timeout(stall, async {
                let Some(len) = read_frame_len(&mut recv, limit).await? else {
                    return Ok(None);
                };
                let body = read_frame_bytes(&mut recv, len).await?;
                let mut frame = len.to_be_bytes().to_vec();
                frame.extend_from_slice(&body);
                Ok::<_, store_protocol::FrameError>(Some(frame))
            })
            .await
            .map_err(|_| cut(format!("no frame for {}", humanize(stall))))?
            .map_err(|e| cut(e.to_string()))?;
            let Some(frame) = frame else {
                return Err(cut("the stream ended before the backup's end".into()));
            };
            let piece: BackupPiece = decode_body(&frame[store_protocol::LENGTH_PREFIX_BYTES..])
                .map_err(|e| Error::Protocol {
                    detail: e.to_string(),
                })?;
            let end = tally.add(&frame, &piece).map_err(|e| match e {
                BackupError::Server(e) => crate::client::read_error(e),
                other => Error::Protocol {
                    detail: other.to_string(),
                },
            })?;
            out.write_all(&frame).await.map_err(written)?;
            progress(&tally);
            if end.is_some() {
                out.flush().await.map_err(written)?;
                return Ok(tally);
            }
        }
    }
}

fn humanize(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
