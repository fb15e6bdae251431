//! Server processes and `store-cli` runs.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use store_client::{Client, ClientConfig};

use crate::EVENT_DEADLINE;

/// The path of a workspace binary (`store-server`, `store-cli`), built by the
/// same `cargo test`/`cargo nextest` run. `ZEOLITE_BIN_DIR` overrides.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("ZEOLITE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test binary> or target/<profile>/<binary>
            // → target/<profile>
            let exe = std::env::current_exe().expect("current exe");
            let dir = exe.parent().expect("the executable has a folder");
            match dir.file_name() {
                Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
                _ => dir.to_path_buf(),
            }
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace --bins` (or the README's test command)",
        path.display()
    );
    path
}

/// A free UDP port on 127.0.0.1 (bound once, then released), below the
/// kernel's ephemeral range: a port given to a server is never handed to a
/// client's socket while that server is down, so a restarted server finds
/// it free (with clients dialing all the time, an ephemeral one was taken
/// during a SIGKILL now and then).
pub fn free_udp_port() -> u16 {
    free_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// A free TCP port on 127.0.0.1, chosen as [`free_udp_port`] is (a
/// server's metrics listener).
pub fn free_tcp_port() -> u16 {
    free_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A port below the ephemeral range for which `is_free` holds.
fn free_port(is_free: impl Fn(u16) -> bool) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(20_000).max(1024);
    if ephemeral_low <= low {
        // An unusual range: any port from its top down.
        return (1024..u16::MAX)
            .rev()
            .find(|port| is_free(*port))
            .expect("a free port");
    }
    for _ in 0..10_000 {
        let port = rand::random::<u16>() % (ephemeral_low - low) + low;
        if is_free(port) {
            return port;
        }
    }
    panic!("no free UDP port in {low}..{ephemeral_low}");
}

/// A `store-server` process with its own data directory.
pub struct ServerProcess {
    child: Option<Child>,
    data_dir: PathBuf,
    tls_dir: PathBuf,
    addr: SocketAddr,
    /// `store-server witness` instead of a data node.
    witness: bool,
    /// Where a data node serves `/metrics`, `/health` and `/ready`.
    metrics_addr: SocketAddr,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts a server on a free loopback port with data in `dir/data`, and
    /// waits until it answers `status`.
    pub async fn start(dir: &Path) -> ServerProcess {
        Self::start_with(dir, &[]).await
    }

    /// Like [`ServerProcess::start`], with extra flags.
    pub async fn start_with(dir: &Path, extra_args: &[&str]) -> ServerProcess {
        std::fs::create_dir_all(dir).expect("create the test directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let mut server = ServerProcess {
            child: None,
            data_dir: dir.join("data"),
            tls_dir: dir.join("data").join("tls"),
            addr,
            witness: false,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            log: dir.join("server.log"),
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    /// Starts a member of an HA pair (a data node, or with `witness` the
    /// witness) listening on `addr`, with data in `dir/data`, certificates
    /// in the shared `tls_dir` and `args` (`--cluster`, `--witness`, ...).
    /// Does not wait: see [`ServerProcess::wait_ready`].
    pub fn spawn_member(
        dir: &Path,
        addr: SocketAddr,
        tls_dir: &Path,
        witness: bool,
        args: Vec<String>,
    ) -> ServerProcess {
        std::fs::create_dir_all(dir).expect("create the test directory");
        let mut extra_args = vec!["--tls-dir".to_string(), tls_dir.display().to_string()];
        extra_args.extend(args);
        let mut server = ServerProcess {
            child: None,
            data_dir: dir.join("data"),
            tls_dir: tls_dir.to_path_buf(),
            addr,
            witness,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            extra_args,
            env: Vec::new(),
            log: dir.join("server.log"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        let mut command = Command::new(binary("store-server"));
        if self.witness {
            command.arg("witness");
        } else {
            command
                .arg("--metrics-listen")
                .arg(self.metrics_addr.to_string());
        }
        let child = command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.extra_args)
            .env("RUST_LOG", "store_server=debug,info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn store-server");
        self.child = Some(child);
    }

    /// Waits until a fresh client gets an answer to `status` (from this
    /// server whatever its role), or for a witness, until it listens.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + EVENT_DEADLINE;
        for attempt in 0u32.. {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "store-server exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
            if self.witness {
                if self.log_text().contains("witness listening") {
                    return;
                }
            } else if self.tls_dir().join("client.key").exists() {
                let mut config = self.client_config().timeout(Duration::from_secs(2));
                config.any_role = true;
                if let Ok(client) = Client::connect(config).await {
                    if client.status().await.is_ok() {
                        client.close().await;
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not ready after {attempt} attempts; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where a data node serves `/metrics`, `/health` and `/ready`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Its development TLS directory.
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir.clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A client configuration for this server.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new([self.addr.to_string()]).tls_dir(self.tls_dir())
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(self.client_config())
            .await
            .expect("connect to test server")
    }

    /// SIGSTOP: the process stays alive but silent (the case TCP keepalive
    /// never notices).
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            signal(child.id() as i32, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`ServerProcess::freeze`].
    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            signal(child.id() as i32, libc::SIGCONT);
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for the exit status (None if it had to be killed
    /// after the deadline).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + EVENT_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the server again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts a killed server again without waiting for it.
    pub fn respawn(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sets an environment variable for every later start.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    /// Adds `args` to the flags of every later start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Waits (up to the event deadline) for the process to exit by itself,
    /// and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("the server was started");
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `sig` to process `pid` (a child the test started).
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

/// What a `store-cli` run printed.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for CliOutput {
    fn from(out: Output) -> Self {
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `store-cli --server ADDR --tls-dir DIR ARGS...` with `stdin` as its
/// standard input, and waits for it (it bounds itself with `--timeout`).
pub fn cli(server: &ServerProcess, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    cli_with(&server.addr().to_string(), &server.tls_dir(), args, stdin)
}

/// Runs `store-cli --server SERVERS --tls-dir DIR ARGS...`.
pub fn cli_with(servers: &str, tls_dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    use std::io::Write as _;
    let mut child = Command::new(binary("store-cli"))
        .arg("--server")
        .arg(servers)
        .arg("--tls-dir")
        .arg(tls_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn store-cli");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait for store-cli").into()
}
