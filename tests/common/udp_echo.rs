//! "Does this source get through?" over UDP: an echo server in one
//! namespace, and a probe, run in another, that sends from a chosen source
//! address and waits for its own datagram to come back.
//!
//! Use it from tests with `mod common { pub mod netns; pub mod udp_echo; }`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xdpguard::testing::netns::NetNs;

/// A UDP echo server on [::]:port in a namespace, counting the datagrams it
/// gets per source; stops on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<IpAddr, u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Starts the server; it is bound when this returns, so no probe can
    /// race it.
    pub fn start(ns: &NetNs, port: u16) -> UdpEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<HashMap<IpAddr, u64>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            ns.spawn(move || {
                // [::] is dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d.
                let sock = UdpSocket::bind(("::", port)).expect("bind udp");
                sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        *seen.lock().unwrap().entry(from.ip().to_canonical()).or_default() += 1;
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            })
        };
        ready_rx.recv().unwrap();
        UdpEcho { stop, seen, thread: Some(thread) }
    }

    /// How many datagrams arrived from `src` (IPv4 as IPv4, not mapped).
    pub fn seen(&self, src: IpAddr) -> u64 {
        self.seen.lock().unwrap().get(&src).copied().unwrap_or_default()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends up to `tries` datagrams from `src` to an echo server at `dst`, one
/// at a time, each waiting `wait` for its echo; true when one came back.
/// Call it inside the sender's namespace (`NetNs::run`).
pub fn udp_echo_reaches(src: IpAddr, dst: SocketAddr, tries: u32, wait: Duration) -> bool {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind client udp");
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..tries {
        let token = format!("probe-{src}-{i}");
        sock.send_to(token.as_bytes(), dst).expect("send");
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == token.as_bytes() => return true,
                Ok(_) => continue, // a late echo of an earlier try
                Err(_) => break,
            }
        }
    }
    false
}
