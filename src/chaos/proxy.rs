//! A TCP proxy that sits between the workers and RabbitMQ or PostgreSQL and misbehaves on
//! request, the way a real network does: it adds latency, stalls (bytes stop flowing but every
//! socket stays open: a half-open link), and drops connections (both sides see a reset).
//!
//! It listens on 127.0.0.1 only and forwards to one upstream address, so fault injection
//! never touches anything but this machine's loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How the link behaves right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow as they arrive.
    Healthy,
    /// Every chunk waits this long before it is forwarded, in both directions.
    Slow(Duration),
    /// Nothing is forwarded; sockets stay open and bytes queue up (in the kernel, then here)
    /// until the link is healthy again.
    Stalled,
}

/// A running proxy. Dropping it stops accepting and closes every connection.
pub struct Proxy {
    address: SocketAddr,
    link: watch::Sender<Link>,
    /// Cancelled to drop the connections open at that moment; replaced by a fresh one.
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
    accepted: Arc<AtomicU64>,
    /// While set, the link is cut: open connections were dropped and new ones are closed
    /// at once, as when a peer's host is unreachable.
    cut: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (link, watching) = watch::channel(Link::Healthy);
        let stop = CancellationToken::new();
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let proxy = Self {
            address,
            link,
            generation: generation.clone(),
            stop: stop.clone(),
            accepted: accepted.clone(),
            cut: cut.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                if cut.load(Ordering::Relaxed) {
                    continue; // dropping `client` closes it
                }
                accepted.fetch_add(1, Ordering::Relaxed);
                let dropped = generation.lock().expect("generation lock").clone();
                let watching = watching.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, watching.clone()) => {}
                        () = pump(server_read, client_write, watching) => {}
                        () = dropped.cancelled() => {}
                        () = stop.cancelled() => {}
                    }
                    // Both halves are dropped here: the peers see the connection close.
                });
            }
        });
        Ok(proxy)
    }

    /// The address to give clients instead of the upstream's.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Cuts the link: drops every connection and closes new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.drop_all();
    }

    /// Ends a [`Proxy::cut`]: new connections are forwarded again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }

    /// Closes every connection open now; new ones are accepted as usual.
    pub fn drop_all(&self) {
        let old = std::mem::take(&mut *self.generation.lock().expect("generation lock"));
        old.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies one direction, obeying the link's state between chunks.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // While stalled, do not even read: the sender's kernel buffers fill, as on a real
        // link that stopped delivering.
        loop {
            let state = *link.borrow_and_update();
            if state != Link::Stalled {
                break;
            }
            if link.changed().await.is_err() {
                return;
            }
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let state = *link.borrow_and_update();
            match state {
                Link::Healthy => break,
                Link::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Link::Stalled => {
                    if link.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
