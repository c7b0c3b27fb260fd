//! A fault-injecting TCP proxy for the links between cluster nodes.
//!
//! A [`Proxy`] listens on a loopback port of its own and forwards every connection
//! to one upstream address, byte for byte, on plain threads (it keeps working while
//! the test's runtime is busy or blocked).
//!
//! Faults:
//! - [`Proxy::cut`] closes every connection it carries (both sides see the socket
//!   shut down) and, until [`Proxy::heal`], closes each new connection as soon as it
//!   is accepted, without connecting upstream.
//! - With an admission filter ([`Proxy::start_filtered`]), each new connection is
//!   first shown to the filter, which sees the connecting process (its pid, found in
//!   `/proc` on Linux): a refused connection is closed at once. [`Proxy::drop_where`]
//!   closes the open connections a predicate picks. A cluster uses this to cut the
//!   links of one node even when every node reaches a peer at the same address (one
//!   proxy per node, shared by the other two).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// A connection as the admission filter and [`Proxy::drop_where`] see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The connecting side's address.
    pub peer: SocketAddr,
    /// The process that owns the connecting socket, when it could be found
    /// (Linux `/proc`, and the process readable by us).
    pub client_pid: Option<u32>,
}

/// Decides whether a new connection may pass.
pub type Filter = Arc<dyn Fn(&ConnInfo) -> bool + Send + Sync>;

/// One listening port forwarding to one upstream address.
pub struct Proxy {
    inner: Arc<Inner>,
    /// Where the proxy listens: give this address to the side that connects.
    pub listen: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

struct Inner {
    name: String,
    listen: SocketAddr,
    upstream: SocketAddr,
    filter: Option<Filter>,
    state: Mutex<State>,
    stop: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    unknown_client: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
struct State {
    cut: bool,
    next_id: u64,
    /// Both sockets of every live connection, to shut them down on `cut`.
    conns: HashMap<u64, (ConnInfo, TcpStream, TcpStream)>,
}

/// Counters of a proxy, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections forwarded upstream.
    pub accepted: u64,
    /// Connections closed at once: cut, refused by the filter, or upstream down.
    pub refused: u64,
    /// Connections (forwarded or not) whose connecting process was not found.
    pub unknown_client: u64,
    /// Bytes forwarded, both directions.
    pub bytes: u64,
    /// Connections open now.
    pub open: usize,
    pub cut: bool,
}

impl Proxy {
    /// Listens on a fresh loopback port and forwards to `upstream`. `name` appears in
    /// diagnostics (e.g. `"to node 3"`).
    pub fn start(name: &str, upstream: SocketAddr) -> Proxy {
        Self::launch(name, upstream, None)
    }

    /// Like [`start`](Self::start), and every new connection must pass `filter`.
    pub fn start_filtered(name: &str, upstream: SocketAddr, filter: Filter) -> Proxy {
        Self::launch(name, upstream, Some(filter))
    }

    fn launch(name: &str, upstream: SocketAddr, filter: Option<Filter>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let listen = listener.local_addr().expect("proxy local_addr");
        let inner = Arc::new(Inner {
            name: name.to_string(),
            listen,
            upstream,
            filter,
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unknown_client: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let accept_inner = inner.clone();
        let accept_thread = std::thread::Builder::new()
            .name(format!("proxy {name} accept"))
            .spawn(move || accept_loop(listener, accept_inner))
            .expect("spawn the proxy's accept thread");
        Proxy {
            inner,
            listen,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn upstream(&self) -> SocketAddr {
        self.inner.upstream
    }

    /// Drops every open connection and refuses new ones until [`heal`](Self::heal).
    pub fn cut(&self) {
        let mut state = self.inner.lock();
        state.cut = true;
        for (_, (_, a, b)) in state.conns.drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.inner.lock().cut = false;
    }

    pub fn is_cut(&self) -> bool {
        self.inner.lock().cut
    }

    /// Closes the open connections for which `pred` is true; returns how many.
    pub fn drop_where(&self, pred: impl Fn(&ConnInfo) -> bool) -> usize {
        let mut state = self.inner.lock();
        let doomed: Vec<u64> = state
            .conns
            .iter()
            .filter(|(_, (info, _, _))| pred(info))
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed {
            if let Some((_, a, b)) = state.conns.remove(id) {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
        doomed.len()
    }

    /// The open connections.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.inner
            .lock()
            .conns
            .values()
            .map(|(info, _, _)| *info)
            .collect()
    }

    pub fn stats(&self) -> ProxyStats {
        let state = self.inner.lock();
        ProxyStats {
            accepted: self.inner.accepted.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            unknown_client: self.inner.unknown_client.load(Ordering::Relaxed),
            bytes: self.inner.bytes.load(Ordering::Relaxed),
            open: state.conns.len(),
            cut: state.cut,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, id: u64) {
        if let Some((_, a, b)) = self.lock().conns.remove(&id) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    fn refuse(&self, client: &TcpStream) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for incoming in listener.incoming() {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        if inner.lock().cut {
            inner.refuse(&client);
            continue;
        }
        let Ok(peer) = client.peer_addr() else {
            inner.refuse(&client);
            continue;
        };
        let mut info = ConnInfo {
            peer,
            client_pid: None,
        };
        if let Some(filter) = &inner.filter {
            info.client_pid = client_pid(peer, inner.listen);
            if info.client_pid.is_none() {
                inner.unknown_client.fetch_add(1, Ordering::Relaxed);
            }
            if !filter(&info) {
                inner.refuse(&client);
                continue;
            }
        }
        let Ok(upstream) = TcpStream::connect_timeout(&inner.upstream, Duration::from_secs(2))
        else {
            // The node behind the proxy is down: so is the connection.
            inner.refuse(&client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) else {
            continue;
        };
        let id = {
            let mut state = inner.lock();
            // Cut, or refused by the filter, while we were connecting upstream.
            let refused_now = inner.filter.as_ref().is_some_and(|f| !f(&info));
            if state.cut || refused_now {
                drop(state);
                inner.refuse(&client);
                let _ = upstream.shutdown(Shutdown::Both);
                continue;
            }
            state.next_id += 1;
            let id = state.next_id;
            state.conns.insert(id, (info, c3, u3));
            id
        };
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        let (i1, i2) = (inner.clone(), inner.clone());
        let n = inner.name.clone();
        let _ = std::thread::Builder::new()
            .name(format!("proxy {n} up"))
            .spawn(move || pump(client, u2, id, i1));
        let _ = std::thread::Builder::new()
            .name(format!("proxy {n} down"))
            .spawn(move || pump(upstream, c2, id, i2));
    }
}

/// Copies `from` to `to` until either side ends, then closes the connection.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, inner: Arc<Inner>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                inner.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    inner.forget(id);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_millis(500));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Proxy({} {} -> {}, {:?})",
            self.inner.name,
            self.listen,
            self.inner.upstream,
            self.stats()
        )
    }
}

// ---- who is connecting (Linux) -----------------------------------------------------

/// The process owning the TCP socket whose local address is `client` and remote
/// address `server` (a connection to us, seen from the other end): the socket's
/// inode from `/proc/net/tcp{,6}`, then the process holding `socket:[inode]` among
/// its file descriptors. `None` where `/proc` cannot tell.
pub fn client_pid(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    // The connecting socket is established before our accept returns; still, try
    // twice in case the kernel's tables lag.
    for attempt in 0..2 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(inode) = socket_inode(client, server) {
            if let Some(pid) = pid_holding_socket(inode) {
                return Some(pid);
            }
        }
    }
    None
}

fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            if parse_proc_addr(cols[1]) == Some(local) && parse_proc_addr(cols[2]) == Some(remote) {
                if let Ok(inode) = cols[9].parse::<u64>() {
                    if inode != 0 {
                        return Some(inode);
                    }
                }
            }
        }
    }
    None
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6; IPv4-mapped addresses
/// become IPv4), as `/proc/net/tcp*` writes them.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn pid_holding_socket(inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    fn is_dead(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 8];
        matches!(
            s.write_all(b"x").and_then(|_| s.read(&mut buf)),
            Ok(0) | Err(_)
        )
    }

    #[test]
    fn forwards_cuts_existing_connections_refuses_new_ones_and_heals() {
        let proxy = Proxy::start("test", echo_server());
        let mut a = TcpStream::connect(proxy.listen).expect("connect");
        a.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(roundtrip(&mut a, b"hello").expect("echo"), b"hello");

        proxy.cut();
        assert!(is_dead(&mut a), "the open connection must be closed");
        let mut b = TcpStream::connect(proxy.listen).expect("connect while cut");
        assert!(is_dead(&mut b), "a new connection must be closed at once");
        assert!(proxy.stats().refused >= 1);

        proxy.heal();
        let mut c = TcpStream::connect(proxy.listen).expect("connect after heal");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(roundtrip(&mut c, b"again").expect("echo"), b"again");
        assert_eq!(proxy.stats().accepted, 2);
    }

    #[test]
    fn parses_proc_net_tcp_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:0050"),
            Some("127.0.0.1:80".parse().expect("addr"))
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().expect("addr"))
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_filter_sees_the_connecting_process_and_drop_where_closes_connections() {
        let me = std::process::id();
        let allow = Arc::new(AtomicBool::new(true));
        let allow_f = allow.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_f = seen.clone();
        let proxy = Proxy::start_filtered(
            "filtered",
            echo_server(),
            Arc::new(move |info: &ConnInfo| {
                seen_f.lock().expect("lock").push(info.client_pid);
                allow_f.load(Ordering::SeqCst)
            }),
        );
        let mut a = TcpStream::connect(proxy.listen).expect("connect");
        a.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(roundtrip(&mut a, b"hi").expect("echo"), b"hi");
        // Asked on accept, and again just before forwarding.
        let asked = seen.lock().expect("lock").clone();
        assert!(
            !asked.is_empty() && asked.iter().all(|p| *p == Some(me)),
            "{asked:?}"
        );
        assert_eq!(proxy.connections()[0].client_pid, Some(me));

        allow.store(false, Ordering::SeqCst);
        let mut b = TcpStream::connect(proxy.listen).expect("connect");
        assert!(is_dead(&mut b), "refused by the filter");
        // The open one still works until dropped.
        assert_eq!(roundtrip(&mut a, b"still").expect("echo"), b"still");
        assert_eq!(proxy.drop_where(|i| i.client_pid == Some(me)), 1);
        assert!(is_dead(&mut a), "closed by drop_where");
    }
}
