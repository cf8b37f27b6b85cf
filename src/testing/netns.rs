//! Throwaway network namespaces joined by veth pairs, for tests, demos and
//! benchmarks that send real traffic.
//!
//! Every namespace is created here and deleted when its [`NetNs`] drops
//! (also when a test panics); the root namespace's interfaces are never
//! touched: veth pairs are created directly inside the namespaces. Code
//! runs inside a namespace on a thread of its own ([`NetNs::run`],
//! [`NetNs::spawn`]), so the test's own thread never changes namespace.
//!
//! Every veth end the helpers create gets `ethtool -K DEV tx off gso off gro
//! on`: a NIC hands XDP finished frames (checksums complete, no GSO
//! super-frames, which XDP drops when bigger than a page), and XDP_TX and
//! XDP_REDIRECT into a veth deliver promptly only with GRO (or an XDP
//! program) on its peer. [`VethOptions::kernel_offloads`] keeps the
//! kernel's defaults instead.
//!
//! Needs root, `ip` (iproute2) and `ethtool`. The helpers panic with the
//! failing command and its output: they are meant for tests, where a panic
//! is a failed test.
//!
//! ```no_run
//! use xdpguard::testing::netns::{veth, NetNs};
//! use xdpguard::Filter;
//!
//! let client = NetNs::new("demo-c");
//! let server = NetNs::new("demo-s");
//! veth(&client, "eth0", &server, "eth0");
//! client.addr("eth0", "192.0.2.1/24");
//! server.addr("eth0", "192.0.2.2/24");
//! let filter = server.run(|| Filter::builder().interface("eth0").attach())?;
//! filter.blocklist().insert("192.0.2.1/32".parse()?)?;
//! // ... traffic from the client now stops at the server's XDP hook.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Display;
use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nix::sched::{setns, CloneFlags};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Makes sure bpffs is mounted at /sys/fs/bpf (CI machines may start
/// without it).
///
/// # Panics
/// When it is not mounted and `mount` fails.
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
///
/// # Panics
/// When the command cannot start or exits unsuccessfully.
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
    /// Its name (`ip netns list` shows it).
    pub name: String,
}

impl NetNs {
    /// Creates `xg<tag>-<pid>-<n>` with its loopback up. The pid and counter
    /// keep names unique across parallel tests and test binaries; the `xg`
    /// prefix lets a CI script delete what a killed run left.
    ///
    /// # Panics
    /// When `ip netns add` fails (not root?).
    pub fn new(tag: &str) -> NetNs {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("xg{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    ///
    /// # Panics
    /// When the command fails.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a program inside the namespace.
    ///
    /// # Panics
    /// When the program fails.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// Like [`NetNs::exec`], but returns the output whatever the exit status.
    ///
    /// # Panics
    /// When `ip netns exec` cannot start.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().expect("ip netns exec")
    }

    /// Sets a sysctl inside the namespace, e.g. ("net.ipv4.ip_forward", "1").
    ///
    /// # Panics
    /// When `sysctl` fails.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread inside the namespace and waits for it. Sockets,
    /// interface lookups and XDP attaches made there belong to the
    /// namespace. A panic in `f` is resumed on the caller's thread.
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
    ///
    /// # Panics
    /// When there is no such interface.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':').next().and_then(|s| s.trim().parse().ok()).expect("ifindex")
    }

    /// The MAC address of an interface inside the namespace.
    ///
    /// # Panics
    /// When there is no such interface.
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
    ///
    /// # Panics
    /// When `ip` refuses the address.
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
    ///
    /// # Panics
    /// When `ip` refuses an entry.
    pub fn static_neighbours(&self, dev: &str, addrs: &[impl Display], mac: [u8; 6]) {
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        for a in addrs {
            self.ip(&["neigh", "replace", &a.to_string(), "lladdr", &mac, "dev", dev, "nud", "permanent"]);
        }
    }

    /// Sets an interface to send finished frames: `ethtool -K DEV tx off
    /// gso off gro on` (see the module docs).
    ///
    /// # Panics
    /// When `ethtool` fails.
    pub fn finished_frames(&self, dev: &str) {
        self.exec(&["ethtool", "-K", dev, "tx", "off", "gso", "off", "gro", "on"]);
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

/// How [`veth_with`] makes a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethOptions {
    /// Transmit and receive queues per end (`None`: the kernel's default,
    /// one). One queue keeps frames in send order; one per CPU lets every
    /// CPU receive.
    pub queues: Option<u32>,
    /// `ethtool -K tx off gso off gro on` on both ends (the default; see
    /// the module docs).
    pub finished_frames: bool,
}

impl Default for VethOptions {
    fn default() -> Self {
        VethOptions { queues: None, finished_frames: true }
    }
}

impl VethOptions {
    /// With `n` queues per end.
    pub fn queues(mut self, n: u32) -> Self {
        self.queues = Some(n);
        self
    }

    /// The kernel's offload defaults (checksum offload, GSO on, GRO off):
    /// only for a test about those.
    pub fn kernel_offloads(mut self) -> Self {
        self.finished_frames = false;
        self
    }
}

/// Creates a veth pair with one end in each namespace (made inside `a`, so
/// the root namespace never holds it), both ends up and sending finished
/// frames.
///
/// # Panics
/// When `ip` or `ethtool` fails.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    veth_with(a, a_if, b, b_if, VethOptions::default());
}

/// [`veth`] with options (queues, offloads).
///
/// # Panics
/// When `ip` or `ethtool` fails.
pub fn veth_with(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str, options: VethOptions) {
    let queues = options.queues.map(|q| q.to_string());
    let mut args = vec!["link", "add", a_if];
    if let Some(q) = &queues {
        args.extend(["numtxqueues", q, "numrxqueues", q]);
    }
    args.extend(["type", "veth", "peer", "name", b_if]);
    if let Some(q) = &queues {
        args.extend(["numtxqueues", q, "numrxqueues", q]);
    }
    args.extend(["netns", &b.name]);
    a.ip(&args);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
    if options.finished_frames {
        a.finished_frames(a_if);
        b.finished_frames(b_if);
    }
}

/// Two namespaces joined by one veth pair, the usual shape of a test:
/// `client` (eth0, 192.0.2.1/24, 2001:db8::1/64) talks to `server` (eth0,
/// 192.0.2.2/24, 2001:db8::2/64), where the program under test runs.
#[derive(Debug)]
pub struct Pair {
    /// The sending side.
    pub client: NetNs,
    /// The side the program under test runs on.
    pub server: NetNs,
}

impl Pair {
    /// Creates both namespaces (`<tag>c`, `<tag>s`), the veth pair and the
    /// addresses.
    ///
    /// # Panics
    /// When a command fails.
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
