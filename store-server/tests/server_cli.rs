//! The `store-server` command line: flags, defaults and refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The server binary, with no metrics listener: tests run at once, and
/// the default `127.0.0.1:9447` would be taken by whichever ran first.
fn server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_store-server"));
    command.env("ZEOLITE_METRICS_LISTEN", "off");
    command
}

#[test]
fn help_lists_the_documented_flags() {
    let out = server().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--listen",
        "--tls-dir",
        "--ca",
        "--cert",
        "--key",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("./zeolite-data") && help.contains("127.0.0.1:7447"));
}

#[test]
fn usage_errors_exit_2() {
    let out = server().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = server().args(["--ca", "x.pem"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--ca alone is refused");
    let out = server()
        .args(["--max-frame-bytes", "1000", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-frame-bytes"));
}

#[test]
fn an_unusable_data_dir_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = server()
        .arg("--data-dir")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("creating data dir"), "{stderr}");
}

/// Runs a standalone server on `data_dir` until it listens, then stops it
/// with SIGTERM.
fn run_once(data_dir: &std::path::Path) {
    let log = data_dir.with_extension("log");
    let mut child = server()
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "server never listened"
        );
        assert!(child.try_wait().unwrap().is_none(), "server exited early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_damaged_store_refuses_to_start_naming_the_file_and_no_store_is_world_readable() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_once(&data);
    let store = data.join("store.redb");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&store), 0o600, "store file");
    let good = std::fs::read(&store).unwrap();
    assert!(good.len() > 8192, "a store of {} bytes", good.len());

    let mut zero_paged = good.clone();
    zero_paged[..4096].fill(0);
    let damages: [(&str, Vec<u8>); 3] = [
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("zero-paged", zero_paged),
    ];
    for (what, bytes) in damages {
        std::fs::write(&store, &bytes).unwrap();
        let out = server()
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("{} is damaged", store.display())),
            "{what}: {stderr}"
        );
        // Refused, not taken as new: the damaged bytes are still there.
        assert_eq!(std::fs::read(&store).unwrap(), bytes, "{what}");
    }
}

#[test]
fn a_member_refuses_to_start_with_another_members_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    store_server::ensure_dev_certs(&ca).unwrap();
    let other = dir.path().join("other");
    store_server::issue(&ca, "127.0.0.1:7601", store_server::CertRole::Node, &other).unwrap();
    let out = server()
        .args(["--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:7602",
            "--cluster",
            "127.0.0.1:7601,127.0.0.1:7602",
            "--witness",
            "127.0.0.1:7603",
            "--ca",
        ])
        .arg(ca.join("ca.pem"))
        .arg("--cert")
        .arg(other.join("node.pem"))
        .arg("--key")
        .arg(other.join("node.key"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("names node 127.0.0.1:7601, not node 127.0.0.1:7602"),
        "{stderr}"
    );
}

#[test]
fn check_tells_a_sound_store_from_a_damaged_or_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let check = |data: &std::path::Path| {
        let out = server()
            .arg("check")
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = check(&data);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("there is no store"), "{text}");

    run_once(&data);
    let (code, text) = check(&data);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("server_id=") && text.contains("keys=0") && text.ends_with("healthy\n"));

    let store = data.join("store.redb");
    let bytes = std::fs::read(&store).unwrap();
    std::fs::write(&store, &bytes[..bytes.len() / 3]).unwrap();
    let (code, text) = check(&data);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("{} is damaged", store.display())),
        "{text}"
    );
}
