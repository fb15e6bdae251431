//! `store-cli` usage errors and help, without a server.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_store-cli"))
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(cli().output().unwrap().status.code(), Some(2));
    assert_eq!(
        cli().args(["frobnicate"]).output().unwrap().status.code(),
        Some(2)
    );
    let bad_duration = cli()
        .args(["--timeout", "soon", "status"])
        .output()
        .unwrap();
    assert_eq!(bad_duration.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_duration.stderr).contains("250ms"));
}

#[test]
fn missing_certificates_are_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli()
        .arg("--tls-dir")
        .arg(dir.path())
        .args(["--server", "127.0.0.1:9", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ca.pem"), "{stderr}");
}

#[test]
fn help_names_every_command() {
    let out = cli().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["get", "put", "delete", "incr", "append", "scan", "status"] {
        assert!(help.contains(command), "{command} missing:\n{help}");
    }
    for flag in [
        "--server",
        "--tls-dir",
        "--timeout",
        "--json",
        "--ca",
        "--cert",
        "--key",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}
