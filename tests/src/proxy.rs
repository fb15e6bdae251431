//! A fault-injecting UDP proxy on 127.0.0.1, between clients and a server.
//!
//! Each client address gets its own upstream socket, so the server sees one
//! peer per client. On command it drops a fraction of datagrams, delays
//! them, or black-holes either direction, and heals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng as _;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Which way datagrams travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server.
    ToServer,
    /// Server → client.
    ToClient,
}

/// What happens to datagrams going one way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFault {
    /// Fraction dropped, 0.0 (none) to 1.0 (a black hole).
    pub drop: f64,
    /// Added delay.
    pub delay: Duration,
}

#[derive(Default)]
struct Faults {
    to_server: Mutex<LinkFault>,
    to_client: Mutex<LinkFault>,
    forwarded: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
}

impl Faults {
    fn link(&self, direction: Direction) -> &Mutex<LinkFault> {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    /// Decides one datagram's fate: `None` to drop it, else its delay.
    fn judge(&self, direction: Direction) -> Option<Duration> {
        let fault = *self
            .link(direction)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = direction as usize;
        if fault.drop > 0.0 && rand::thread_rng().gen::<f64>() < fault.drop {
            self.dropped[index].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.forwarded[index].fetch_add(1, Ordering::Relaxed);
        Some(fault.delay)
    }
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `server`.
    pub async fn start(server: SocketAddr) -> FaultProxy {
        let listen = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind the proxy socket"),
        );
        let addr = listen.local_addr().expect("proxy address");
        let faults = Arc::new(Faults::default());
        let task = tokio::spawn(run(listen, server, faults.clone()));
        FaultProxy { addr, faults, task }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the fault for one direction.
    pub fn set(&self, direction: Direction, fault: LinkFault) {
        *self
            .faults
            .link(direction)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    /// Drops everything going `direction`.
    pub fn black_hole(&self, direction: Direction) {
        self.set(
            direction,
            LinkFault {
                drop: 1.0,
                delay: Duration::ZERO,
            },
        );
    }

    /// Drops everything both ways.
    pub fn cut(&self) {
        self.black_hole(Direction::ToServer);
        self.black_hole(Direction::ToClient);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.set(Direction::ToServer, LinkFault::default());
        self.set(Direction::ToClient, LinkFault::default());
    }

    /// Datagrams forwarded so far going `direction`.
    pub fn forwarded(&self, direction: Direction) -> u64 {
        self.faults.forwarded[direction as usize].load(Ordering::Relaxed)
    }

    /// Datagrams dropped so far going `direction`.
    pub fn dropped(&self, direction: Direction) -> u64 {
        self.faults.dropped[direction as usize].load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;

async fn run(listen: Arc<UdpSocket>, server: SocketAddr, faults: Arc<Faults>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut replies = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, client)) = listen.recv_from(&mut buf).await else {
            return;
        };
        let upstream = match upstreams.get(&client) {
            Some(upstream) => upstream.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if socket.connect(server).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                upstreams.insert(client, socket.clone());
                replies.spawn(relay_replies(
                    socket.clone(),
                    listen.clone(),
                    client,
                    faults.clone(),
                ));
                socket
            }
        };
        match faults.judge(Direction::ToServer) {
            None => {}
            Some(delay) if delay.is_zero() => {
                let _ = upstream.send(&buf[..len]).await;
            }
            Some(delay) => send_later(delay, buf[..len].to_vec(), move |packet| async move {
                let _ = upstream.send(&packet).await;
            }),
        }
    }
}

async fn relay_replies(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    faults: Arc<Faults>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let len = match upstream.recv(&mut buf).await {
            Ok(len) => len,
            // The server is down (ICMP port unreachable): it may come back.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        };
        match faults.judge(Direction::ToClient) {
            None => {}
            Some(delay) if delay.is_zero() => {
                let _ = listen.send_to(&buf[..len], client).await;
            }
            Some(delay) => {
                let listen = listen.clone();
                send_later(delay, buf[..len].to_vec(), move |packet| async move {
                    let _ = listen.send_to(&packet, client).await;
                });
            }
        }
    }
}

/// Sends after `delay`, without holding up later datagrams.
fn send_later<F, Fut>(delay: Duration, packet: Vec<u8>, send: F)
where
    F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        send(packet).await;
    });
}
