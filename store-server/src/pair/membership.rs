//! Start-up checks of a pair member's store against the cluster: a member
//! that comes back with an empty store has lost its data and must not pass
//! for a new node; a store of another cluster or another member is refused.

use std::time::Duration;

use super::clock::Instant;

use store_protocol::peer::{PeerRequest, PeerResponse};

use super::Pair;
use crate::error::ServerError;

/// How long a starting member with an empty store tries to ask the
/// witness whether it has been a member before.
const ASK_WITNESS_FOR: Duration = Duration::from_secs(5);

impl Pair {
    /// Checks this node's store before it serves: it must be this
    /// `--cluster` member's, of this cluster; an empty store of a node the
    /// witness knows as a member is refused unless `join` (then it joins
    /// as a backup and receives a snapshot). If the witness cannot be asked,
    /// the node starts: the witness never elects an empty store anyway.
    pub async fn check_membership(
        &self,
        join: bool,
        data_dir: &std::path::Path,
    ) -> Result<(), ServerError> {
        let storage = self.storage.clone();
        let me = self.config.me;
        tokio::task::spawn_blocking(move || storage.claim_node(me))
            .await
            .map_err(|e| ServerError::Config(e.to_string()))??;
        let deadline = Instant::now() + ASK_WITNESS_FOR;
        let status = loop {
            match self
                .witness
                .request(&PeerRequest::Status, Duration::from_secs(1))
                .await
            {
                Ok(PeerResponse::Status(status)) => break Some(status),
                answer if Instant::now() >= deadline => {
                    tracing::warn!(
                        ?answer,
                        "cannot ask the witness about this store's membership; starting anyway"
                    );
                    break None;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let Some(status) = status else {
            return Ok(());
        };
        if status.cluster != self.config.cluster {
            return Err(ServerError::Config(format!(
                "the witness serves --cluster {}, but this node was started with --cluster {},{}: \
                 every member needs the same two addresses in the same order",
                status
                    .cluster
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                self.config.cluster[0],
                self.config.cluster[1]
            )));
        }
        let ours = self.storage.cluster_id();
        let data_dir = data_dir.display();
        if ours != 0 && status.cluster_id != 0 && ours != status.cluster_id {
            return Err(ServerError::Config(format!(
                "the store in {data_dir} belongs to cluster {ours:016x}, but the witness \
                 serves cluster {:016x}: point --data-dir at this cluster's store, or move \
                 it away and start with --join to copy the primary's",
                status.cluster_id
            )));
        }
        if ours == 0 && status.members[usize::from(me)] && !join {
            return Err(ServerError::Config(format!(
                "the store in {data_dir} is empty, but the witness knows this node \
                 ({}) as a member of cluster {:016x}: its data is lost or misplaced. \
                 Point --data-dir at its store, or start it with --join to copy the \
                 primary's (it joins as a backup)",
                self.config.cluster[usize::from(me)],
                status.cluster_id
            )));
        }
        if ours == 0 && join {
            tracing::warn!("empty store started with --join: joining as a backup");
        }
        Ok(())
    }
}
