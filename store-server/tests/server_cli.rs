//! The `store-server` command line: flags, defaults and refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_store-server"))
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
