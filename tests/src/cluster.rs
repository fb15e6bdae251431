//! An HA pair in processes: a witness and two data nodes on loopback,
//! sharing one development CA, optionally with a [`FaultProxy`] on each
//! direction of the link between the data nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use store_client::{Client, ClientConfig, StatusInfo};
use store_protocol::Role;

use crate::{cli_with, free_udp_port, CliOutput, FaultProxy, ServerProcess, EVENT_DEADLINE};

/// A witness and two data nodes.
pub struct Cluster {
    /// The witness.
    pub witness: ServerProcess,
    /// The data nodes, in `--cluster` order (node 0 starts as primary).
    pub nodes: Vec<ServerProcess>,
    /// With [`Cluster::start_with_link_proxies`]: node 0 reaches node 1
    /// through `link[0]`, node 1 reaches node 0 through `link[1]`.
    pub link: Vec<FaultProxy>,
    tls_dir: PathBuf,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_udp_port()))
}

impl Cluster {
    /// Starts a fresh pair in `dir` and waits until node 0 is primary.
    pub async fn start(dir: &Path) -> Cluster {
        Self::start_inner(dir, false).await
    }

    /// Like [`Cluster::start`], with the data nodes' traffic to each other
    /// passing through fault proxies (see [`Cluster::link`]).
    pub async fn start_with_link_proxies(dir: &Path) -> Cluster {
        Self::start_inner(dir, true).await
    }

    async fn start_inner(dir: &Path, proxies: bool) -> Cluster {
        let tls_dir = dir.join("tls");
        let addrs = [loopback(), loopback()];
        let witness_addr = loopback();
        let cluster_arg = format!("{},{}", addrs[0], addrs[1]);
        let mut witness = ServerProcess::spawn_member(
            &dir.join("witness"),
            witness_addr,
            &tls_dir,
            true,
            vec!["--cluster".into(), cluster_arg.clone()],
        );
        witness.wait_ready().await;
        let mut link = Vec::new();
        if proxies {
            link.push(FaultProxy::start(addrs[1]).await);
            link.push(FaultProxy::start(addrs[0]).await);
        }
        let mut nodes: Vec<ServerProcess> = (0..2)
            .map(|i| {
                let mut args = vec![
                    "--cluster".to_string(),
                    cluster_arg.clone(),
                    "--witness".to_string(),
                    witness_addr.to_string(),
                ];
                if let Some(proxy) = link.get(i) {
                    args.push("--peer-address".into());
                    args.push(proxy.addr().to_string());
                }
                ServerProcess::spawn_member(
                    &dir.join(format!("node{i}")),
                    addrs[i],
                    &tls_dir,
                    false,
                    args,
                )
            })
            .collect();
        for node in &mut nodes {
            node.wait_ready().await;
        }
        let cluster = Cluster {
            witness,
            nodes,
            link,
            tls_dir,
        };
        cluster.wait_for_primary(Some(0)).await;
        cluster
    }

    /// Both data nodes, as `--server` takes them.
    pub fn servers(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr().to_string()).collect()
    }

    /// A client configuration for the pair.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.servers()).tls_dir(&self.tls_dir)
    }

    /// A connected client of the pair.
    pub async fn client(&self) -> Client {
        Client::connect(self.client_config())
            .await
            .expect("connect to the pair")
    }

    /// The status of node `i` whatever its role, or `None` if it does not
    /// answer within a second or two.
    pub async fn status(&self, i: usize) -> Option<StatusInfo> {
        let mut config = self.nodes[i]
            .client_config()
            .timeout(Duration::from_secs(2));
        config.any_role = true;
        config.connect_timeout = Duration::from_secs(1);
        let client = Client::connect(config).await.ok()?;
        let status = client.status().await.ok();
        client.close().await;
        status
    }

    /// Waits until a node reports itself primary (`expected`, if given);
    /// returns its index.
    pub async fn wait_for_primary(&self, expected: Option<usize>) -> usize {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            for i in 0..self.nodes.len() {
                if expected.is_some_and(|e| e != i) {
                    continue;
                }
                if self
                    .status(i)
                    .await
                    .is_some_and(|s| s.role == Role::Primary)
                {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no primary{} in time; logs:\n{}",
                expected.map(|e| format!(" (node {e})")).unwrap_or_default(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `check` holds for node `i`'s status.
    pub async fn wait_for_status(
        &self,
        i: usize,
        what: &str,
        check: impl Fn(&StatusInfo) -> bool,
    ) -> StatusInfo {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            if let Some(status) = self.status(i).await.filter(|s| check(s)) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never {what}; last status {:?}; logs:\n{}",
                self.status(i).await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `primary` records its backup in sync, at the same
    /// last TID.
    pub async fn wait_in_sync(&self, primary: usize) {
        let backup = 1 - primary;
        let status = self
            .wait_for_status(primary, "had its backup in sync", |s| {
                s.pair.as_ref().is_some_and(|p| p.backup_in_sync)
            })
            .await;
        self.wait_for_status(backup, "caught up", |s| s.last_tid >= status.last_tid)
            .await;
    }

    /// Runs `store-cli --server A1,A2 ARGS...`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli_with(&self.servers().join(","), &self.tls_dir, args, None)
    }

    /// Runs `store-cli --server NODE ARGS...` against node `i` alone.
    pub fn cli_node(&self, i: usize, args: &[&str]) -> CliOutput {
        cli_with(&self.nodes[i].addr().to_string(), &self.tls_dir, args, None)
    }

    /// The shared development TLS directory.
    pub fn tls_dir(&self) -> &Path {
        &self.tls_dir
    }

    /// The node certificate and key the development CA issued to the
    /// member listening on `addr` (a data node or the witness).
    pub fn node_cert(&self, addr: SocketAddr) -> (PathBuf, PathBuf) {
        let dir = self
            .tls_dir
            .with_file_name("tls-private")
            .join("nodes")
            .join(addr.to_string().replace(':', "_"));
        (dir.join("node.pem"), dir.join("node.key"))
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = format!("--- witness\n{}", tail(&self.witness.log_text()));
        for (i, node) in self.nodes.iter().enumerate() {
            text.push_str(&format!(
                "--- node {i} ({})\n{}",
                process_state(node.pid()),
                tail(&node.log_text())
            ));
        }
        text
    }
}

/// A process's state as the kernel reports it (running, sleeping, stopped,
/// zombie), for failure messages.
fn process_state(pid: Option<u32>) -> String {
    let Some(pid) = pid else {
        return "not running".into();
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("State:"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("pid {pid} gone"))
}

/// The last lines of a log, debug lines left out.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
