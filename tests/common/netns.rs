//! Throwaway network namespaces joined by veth pairs, for tests, demos and
//! benchmarks. Every namespace is created here and deleted on drop (also
//! when a test panics); the root namespace's interfaces are never touched:
//! veth pairs are created directly inside the namespaces.
//!
//! Shared by `tests/`, `examples/` and `benches/` through
//! `#[path = "../tests/common/netns.rs"] mod netns;`.

#![allow(dead_code)]

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nix::sched::{setns, CloneFlags};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Makes sure bpffs is mounted (CI machines may start without it).
pub fn ensure_bpffs() {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")))
        .unwrap_or(false);
    if !mounted {
        let _ = std::fs::create_dir_all("/sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A network namespace that exists for the lifetime of this value.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `xg<tag>-<pid>-<n>` with its loopback up. The pid and counter
    /// keep names unique across parallel tests and test binaries.
    pub fn new(tag: &str) -> NetNs {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("xg{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// Like `exec`, but returns the output whatever the exit status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Sets a sysctl inside the namespace, e.g. ("net.ipv4.ip_forward", "1").
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }


    /// Runs `f` on a thread inside the namespace and waits for it. Sockets,
    /// interface lookups and XDP attaches made there belong to the namespace.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        match self.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts `f` on a thread inside the namespace.
    pub fn spawn<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> thread::JoinHandle<R> {
        let name = self.name.clone();
        thread::spawn(move || {
            enter(&name);
            f()
        })
    }

    /// The index of an interface inside the namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':').next().and_then(|s| s.trim().parse().ok()).expect("ifindex")
    }

    /// The MAC address of an interface inside the namespace.
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mac = text.split("link/ether ").nth(1).and_then(|s| s.split_whitespace().next()).expect("mac");
        let mut b = [0u8; 6];
        for (i, part) in mac.split(':').enumerate() {
            b[i] = u8::from_str_radix(part, 16).expect("hex");
        }
        b
    }

    /// Adds an address (IPv6 without duplicate-address detection, so it is
    /// usable at once) and brings the interface up.
    pub fn addr(&self, ifname: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", ifname, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", ifname]);
        }
        self.ip(&["link", "set", ifname, "up"]);
    }

    /// Permanent neighbour entries: each of `addrs` on `dev` resolves to
    /// `mac` without asking, so address resolution can never be half done
    /// (e.g. when a filter drops the peer's replies).
    pub fn static_neighbours(&self, dev: &str, addrs: &[impl std::fmt::Display], mac: [u8; 6]) {
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        for a in addrs {
            self.ip(&["neigh", "replace", &a.to_string(), "lladdr", &mac, "dev", dev, "nud", "permanent"]);
        }
    }
}

/// Moves the calling thread into namespace `name`. Only threads this module
/// spawns call it, so a test's own thread never changes namespace.
fn enter(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).expect("netns file");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Creates a veth pair with one end in each namespace (made inside `a`, so
/// the root namespace never holds it), both ends up.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Two namespaces joined by one veth pair, the usual shape of a test:
/// `client` (eth0, 192.0.2.1/24, 2001:db8::1/64) talks to `server` (eth0,
/// 192.0.2.2/24, 2001:db8::2/64), where the program under test runs.
pub struct Pair {
    pub client: NetNs,
    pub server: NetNs,
}

impl Pair {
    pub fn new(tag: &str) -> Pair {
        let client = NetNs::new(&format!("{tag}c"));
        let server = NetNs::new(&format!("{tag}s"));
        veth(&client, "eth0", &server, "eth0");
        client.addr("eth0", "192.0.2.1/24");
        client.addr("eth0", "2001:db8::1/64");
        server.addr("eth0", "192.0.2.2/24");
        server.addr("eth0", "2001:db8::2/64");
        Pair { client, server }
    }
}
