//! Real partitions on an HA pair (DESIGN §9): the pair and its clients run
//! in a private network namespace, and nftables drops cut links between
//! chosen members, both ways and one way, while clients still reach every
//! node they are not cut from; some cycles also SIGKILL or SIGSTOP a data
//! node. The history's checkers (exactly-once, linearizable server reads,
//! bounded staleness of cached reads, monotonic reads), the role monitor
//! (never two primaries at once) and the back-to-Live deadline run at the
//! end: see `store_tests::chaos`. Faults come from a printed seed;
//! `ZEOLITE_SEED=N` replays them (the machine's timing is not replayed).
//! `store-chaos --cycles N` is the long mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use store_tests::chaos::{Also, Chaos, Fault};
use store_tests::netns::isolated;

#[test]
fn every_partition_keeps_every_promise() {
    let seed = store_tests::test_seed("partitions");
    isolated(|| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut chaos = Chaos::start(dir.path(), seed).await;
        chaos.every_fault_once().await;
        let isolated_primary = chaos
            .figures
            .iter()
            .find(|f| f.fault == Fault::PrimaryIsolated)
            .cloned()
            .unwrap();
        let summary = chaos.finish().await;
        eprintln!("partitions: {:?}", summary.report);
        // Unless the backup itself was down, cutting the primary off
        // made the backup take over.
        if isolated_primary.also.1 == "primary" || isolated_primary.also.0 == Also::Nothing {
            assert!(
                isolated_primary.takeover.is_some(),
                "{isolated_primary}: the backup never took over"
            );
        }
        assert!(summary.report.server_reads > 0 && summary.report.cached_reads > 0);
    });
}

#[test]
fn a_member_whose_clock_drifts_one_percent_keeps_every_promise() {
    let seed = store_tests::test_seed("clock drift");
    isolated(|| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut chaos = Chaos::start(dir.path(), seed).await;
        let skew = chaos.skew_a_clock().await;
        eprintln!("{skew}");
        for fault in [
            Fault::PrimaryIsolated,
            Fault::BackupIsolated,
            Fault::Flapping,
        ] {
            chaos.cycle(fault).await;
        }
        let summary = chaos.finish().await;
        eprintln!("clock drift: {:?}", summary.report);
    });
}
