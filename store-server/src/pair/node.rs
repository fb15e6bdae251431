//! A data node's tasks: renewing the lease as primary, standing for
//! election, asking the peer how it stands, answering peers, and manual
//! failover.

use std::sync::Arc;
use std::time::Duration;

use super::clock::Instant;

use store_protocol::peer::{PeerRequest, PeerResponse, PeerStatus};
use store_protocol::{read_frame, write_frame, Epoch, WireError};

use super::link::PEER_FRAME_LIMIT;
use super::replicator::{serve_join, Joiner};
use super::role::{Action, Standing};
use super::{Pair, Voucher};
use crate::identity::admit_node;

/// How often the peer is asked for its status (lag, reachability).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Runs the standing's timers forever: sleeps until the standing's
/// `poll_timeout` (or the next status probe), or until the standing
/// changes, then carries out what it asks.
pub(super) async fn run(pair: Arc<Pair>) {
    let mut changed = pair.changed.subscribe();
    let mut next_probe = Instant::now();
    loop {
        let now = Instant::now();
        let action = pair.standing().tick(now);
        match action {
            Some(Action::RenewLease) => {
                tokio::spawn(renew(pair.clone(), now));
            }
            Some(Action::Campaign { force }) => {
                pair.changed.send_modify(|n| *n += 1);
                tokio::spawn(campaign(pair.clone(), now, force));
            }
            None => {}
        }
        if now >= next_probe {
            next_probe = now + PROBE_EVERY;
            tokio::spawn(probe_peer(pair.clone()));
        }
        let wake = pair
            .standing()
            .poll_timeout()
            .map_or(next_probe, |at| at.min(next_probe));
        tokio::select! {
            () = tokio::time::sleep(wake.remaining()) => {}
            _ = changed.changed() => {}
        }
    }
}

/// Asks the backup and the witness to renew the lease; one grant is a
/// majority with this node's own vote.
async fn renew(pair: Arc<Pair>, sent_at: Instant) {
    let epoch = pair.standing().epoch();
    // Never more than this node holds (a snapshot may have replaced it).
    let acked = pair.acked().min(pair.storage.history_end().position());
    let request = PeerRequest::Lease { epoch, acked };
    let timeout = pair.config.lease.renew_every * 2;
    let (peer, witness) = tokio::join!(
        pair.peer.request(&request, timeout),
        pair.witness.request(&request, timeout)
    );
    let mut unreachable = Vec::new();
    for (who, voucher, answer) in [
        ("backup", Voucher::Peer, peer),
        ("witness", Voucher::Witness, witness),
    ] {
        match answer {
            Ok(answer) => {
                // A later epoch deposes this node once it is recorded; one
                // nobody granted deposes no one.
                match &answer {
                    PeerResponse::Denied { epoch, primary, .. } if *epoch > pair.epoch() => {
                        if pair.accept_epoch(*epoch, *primary, voucher).await.is_ok() {
                            tracing::warn!(
                                epoch = epoch.0,
                                ?primary,
                                "deposed: a later epoch exists"
                            );
                        }
                    }
                    _ => pair.update(|s| s.renewal_answered(sent_at, &answer)),
                }
            }
            Err(e) => unreachable.push(format!("{who}: {e}")),
        }
    }
    if pair.standing().is_primary() {
        pair.set_note(if unreachable.len() == 2 && !pair.serving() {
            format!("no majority, not serving: {}", unreachable.join("; "))
        } else {
            String::new()
        });
    }
}

/// Asks the witness to make this node primary of the next epoch.
async fn campaign(pair: Arc<Pair>, sent_at: Instant, force: bool) {
    let epoch = pair.standing().epoch();
    let request = PeerRequest::Elect {
        epoch,
        force,
        cluster_id: pair.storage.cluster_id(),
        end: pair.storage.history_end().position(),
    };
    let answer = pair.witness.request(&request, Duration::from_secs(1)).await;
    let answer = match answer {
        Ok(PeerResponse::Elected {
            epoch, cluster_id, ..
        }) => {
            // The new epoch (and, on a fresh cluster, its id) is durable
            // here before this node acts on it.
            let storage = pair.storage.clone();
            let recorded = tokio::task::spawn_blocking(move || {
                storage.adopt_cluster(cluster_id)?;
                storage.raise_epoch(epoch)
            })
            .await;
            match recorded {
                Ok(Ok(())) => answer.ok(),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "elected, but cannot record it");
                    None
                }
                Err(_) => None,
            }
        }
        Ok(PeerResponse::Denied {
            epoch,
            primary,
            ref reason,
        }) => {
            let _ = pair.accept_epoch(epoch, primary, Voucher::Witness).await;
            pair.set_note(format!("not taking over: {reason}"));
            answer.ok()
        }
        Ok(_) => None,
        Err(e) => {
            pair.set_note(format!(
                "no majority: the witness is unreachable ({e}); not taking over"
            ));
            None
        }
    };
    let elected = pair.update(|s| {
        s.campaign_answered(Instant::now(), sent_at, answer.as_ref());
        s.is_primary()
    });
    if elected {
        pair.set_note("");
        tracing::warn!(epoch = pair.epoch().0, "elected primary");
    }
}

/// Asks the peer and the witness how they stand: the peer's last TID (for
/// lag), and any later epoch (or, to a node that just restarted, the
/// primary of its own) either knows of.
async fn probe_peer(pair: Arc<Pair>) {
    let (peer, witness) = tokio::join!(
        pair.peer.request(&PeerRequest::Status, PROBE_EVERY),
        pair.witness.request(&PeerRequest::Status, PROBE_EVERY)
    );
    if let Ok(PeerResponse::Status(status)) = &peer {
        pair.set_peer_last_tid(status.last_tid);
    }
    // The witness's word first: a later epoch the peer reports is then
    // usually confirmed already, without asking the witness again.
    for (voucher, answer) in [(Voucher::Witness, witness), (Voucher::Peer, peer)] {
        if let Ok(PeerResponse::Status(status)) = answer {
            let known = pair.epoch();
            let unknown = pair.standing().primary().is_none();
            if status.epoch > known || (status.epoch == known && unknown) {
                let _ = pair
                    .accept_epoch(status.epoch, status.primary, voucher)
                    .await;
            }
        }
    }
}

impl Pair {
    /// A refusal naming what this node knows.
    pub(super) fn denied(&self, reason: String) -> PeerResponse {
        let standing = self.standing();
        PeerResponse::Denied {
            epoch: standing.epoch(),
            primary: standing.primary(),
            reason,
        }
    }

    /// What this node knows, for a peer.
    fn peer_status(&self) -> PeerStatus {
        let standing = self.standing();
        let end = self.storage.history_end();
        let mut in_sync = [false; 2];
        in_sync[usize::from(standing.me())] = true;
        PeerStatus {
            role: standing.role(Instant::now()),
            epoch: standing.epoch(),
            primary: standing.primary(),
            in_sync,
            lsn: end.lsn,
            last_tid: end.last_tid,
            cluster_id: self.storage.cluster_id(),
            members: [false; 2],
            cluster: self.config.cluster.to_vec(),
        }
    }

    /// Makes this node primary at an operator's request (`store-cli
    /// promote`). Without `force`, the primary steps down first and this
    /// node waits until it holds everything the primary made durable;
    /// with `force`, it stands for election without the primary (the
    /// witness still waits for the old lease to run out).
    pub async fn promote(self: &Arc<Pair>, force: bool) -> Result<(), WireError> {
        if self.serving() {
            return Ok(());
        }
        let refuse = |reason: String| WireError::PromoteRefused { reason };
        if !force {
            let request = PeerRequest::StepDown {
                epoch: self.epoch(),
            };
            let answer = self
                .peer
                .request(&request, Duration::from_secs(5))
                .await
                .map_err(|e| {
                    refuse(format!(
                        "the primary cannot be reached ({e}); `promote --force` takes over \
                         without it and may lose acknowledged writes"
                    ))
                })?;
            let lsn = match answer {
                PeerResponse::SteppedDown { lsn } => lsn,
                PeerResponse::Denied { reason, .. } => {
                    return Err(refuse(format!(
                        "the primary refused to step down: {reason}"
                    )))
                }
                other => return Err(refuse(format!("unexpected answer {other:?}"))),
            };
            let caught_up = wait_until(Duration::from_secs(5), || {
                self.storage.history_end().lsn >= lsn
            })
            .await;
            if !caught_up {
                return Err(refuse(format!(
                    "this node has not caught up with the primary (lsn {} < {lsn}); \
                     `promote --force` would lose acknowledged writes",
                    self.storage.history_end().lsn
                )));
            }
        } else {
            tracing::warn!("forced promotion: acknowledged writes this node lacks will be lost");
        }
        self.update(|s| s.promote(Instant::now(), !force));
        let deadline = self.config.lease.duration * 3 + Duration::from_secs(1);
        if wait_until(deadline, || self.serving()).await {
            Ok(())
        } else {
            let note = self
                .note
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            Err(refuse(format!("not elected: {note}")))
        }
    }

    /// Steps down at the backup's request once it holds every batch.
    async fn step_down(self: &Arc<Pair>) -> PeerResponse {
        let stepped = self.update(|standing| {
            let primary = standing.is_primary();
            if primary {
                standing.step_down(Instant::now());
            }
            primary.then(|| standing.epoch())
        });
        let Some(epoch) = stepped else {
            return self.denied("not the primary".into());
        };
        tracing::warn!("stepping down at the backup's request");
        let release = PeerRequest::Release { epoch };
        let _ = self.witness.request(&release, Duration::from_secs(1)).await;
        PeerResponse::SteppedDown {
            lsn: self.storage.history_end().lsn,
        }
    }
}

impl Pair {
    /// Hands the lease to an in-sync backup as this primary stops
    /// (SIGTERM), after its in-flight commits drained: steps down (it
    /// stops serving at once), releases its lease at the witness, and
    /// asks the backup to stand for election now instead of a lease from
    /// now. Clients move on their next request, without an error. Does
    /// nothing on a backup, or when the backup is out of sync (the witness
    /// would not elect it: the pair waits for this node to return).
    pub async fn hand_over(self: &Arc<Pair>) {
        if !self.serving() || !self.status().backup_in_sync {
            return;
        }
        let epoch = self.update(|standing| {
            standing.stop(Instant::now());
            standing.epoch()
        });
        let lsn = self.storage.history_end().lsn;
        tracing::warn!(
            epoch = epoch.0,
            lsn,
            "stopping: handing the lease to the backup"
        );
        let release = PeerRequest::Release { epoch };
        if let Err(e) = self.witness.request(&release, Duration::from_secs(1)).await {
            tracing::warn!(error = %e, "the witness did not take the release; the backup takes over when the lease runs out");
        }
        let hand_over = PeerRequest::HandOver { epoch, lsn };
        match self.peer.request(&hand_over, Duration::from_secs(2)).await {
            Ok(PeerResponse::Recorded) => tracing::info!("the backup is standing for election"),
            Ok(other) => tracing::warn!(answer = ?other, "the backup refused the hand-over"),
            Err(e) => tracing::warn!(error = %e, "the backup did not answer the hand-over"),
        }
    }

    /// The primary of `epoch` stopped and handed its lease over: once this
    /// node holds its history up to `lsn`, stand for election at once.
    async fn take_over(self: &Arc<Pair>, epoch: Epoch, lsn: u64) -> PeerResponse {
        let peer = self.peer_id();
        let backs_it =
            move |s: &Standing| !s.is_primary() && s.epoch() == epoch && s.primary() == Some(peer);
        if !backs_it(&self.standing()) {
            return self.denied(format!(
                "not the backup of the primary of epoch {}",
                epoch.0
            ));
        }
        let caught_up = wait_until(Duration::from_secs(5), || {
            self.storage.history_end().lsn >= lsn
        })
        .await;
        if !caught_up {
            return self.denied(format!(
                "behind the primary (lsn {} < {lsn})",
                self.storage.history_end().lsn
            ));
        }
        // Checked again: while this node caught up, the epoch may have
        // moved on (and this node granted a lease it must keep).
        let promoted = self.update(|s| {
            let still = backs_it(s);
            if still {
                s.promote(Instant::now(), true);
            }
            still
        });
        if !promoted {
            return self.denied("the epoch moved on while this node caught up".into());
        }
        tracing::warn!(
            epoch = epoch.0,
            "the primary handed over: standing for election"
        );
        PeerResponse::Recorded
    }
}

/// Polls `done` until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves a connection from the other data node; any other certificate
/// (a client's, the witness's, a node of another cluster) is closed with
/// [`crate::identity::CLOSE_NOT_A_NODE`] right after the handshake.
pub(crate) async fn serve(pair: Arc<Pair>, connection: quinn::Connection) {
    if admit_node(&connection, &[pair.config.peer()]).is_none() {
        return;
    }
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(serve_stream(pair.clone(), send, recv));
    }
}

async fn serve_stream(pair: Arc<Pair>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let request = match read_frame::<_, PeerRequest>(&mut recv, PEER_FRAME_LIMIT).await {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "bad peer request");
            return;
        }
    };
    let answer = match request {
        PeerRequest::Lease { epoch, .. } => {
            let peer = pair.peer_id();
            match pair.accept_epoch(epoch, Some(peer), Voucher::Peer).await {
                Ok(()) => pair.update(|s| s.lease_requested(Instant::now(), epoch, peer)),
                Err(reason) => pair.denied(reason),
            }
        }
        PeerRequest::Status => PeerResponse::Status(pair.peer_status()),
        PeerRequest::Join {
            epoch,
            batch_epoch,
            lsn,
            cluster_id,
        } => {
            let joiner = Joiner {
                epoch,
                batch_epoch,
                lsn,
                cluster_id,
            };
            return serve_join(pair, send, recv, joiner).await;
        }
        PeerRequest::StepDown { .. } => pair.step_down().await,
        PeerRequest::HandOver { epoch, lsn } => pair.take_over(epoch, lsn).await,
        PeerRequest::Elect { .. } | PeerRequest::SetInSync { .. } | PeerRequest::Release { .. } => {
            pair.denied("a data node holds no votes; ask the witness".into())
        }
    };
    if write_frame(&mut send, &answer, PEER_FRAME_LIMIT)
        .await
        .is_ok()
    {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}
