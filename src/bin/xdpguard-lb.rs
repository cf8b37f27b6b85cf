//! `xdpguard-lb`: manage a pinned xdpguard load balancer from the command line.
//!
//! Every command works on a load balancer pinned in bpffs, so one attached
//! by one invocation keeps balancing after it exits, and any later
//! invocation can change its VIPs and backends or read its counters. Built
//! on the public API only. Installed with `cargo install xdpguard --features
//! cli` (from a checkout: `cargo install --path . --features cli`); shares
//! `common/` with `xdpguard`.
//!
//! ```text
//! xdpguard-lb attach --iface eth0 [--iface eth1] [--redirect IF] [--ipip-source CIDR] [--netns NAME] [--pin DIR]
//!                                                       (on a pin dir holding an LB: attaches that one, state kept)
//! xdpguard-lb attach --behind-filter [...]              (pinned, attached nowhere: for `xdpguard next`)
//! xdpguard-lb vip add 203.0.113.10:80 [--proto tcp|udp] --mode dsr|ipip|nat [--table-size P] [--hash source] [--force]
//! xdpguard-lb vip del 203.0.113.10:80 [--proto udp]      xdpguard-lb vip list [--json]
//! xdpguard-lb backend add 203.0.113.10:80 198.51.100.11 [--weight 2]   (NAT: 198.51.100.11:8080)
//! xdpguard-lb backend weight 203.0.113.10:80 198.51.100.11 0            (0 drains)
//! xdpguard-lb backend del 203.0.113.10:80 198.51.100.11  xdpguard-lb backend list 203.0.113.10:80 [--json]
//! xdpguard-lb which 203.0.113.10:80 --from 192.0.2.1:40000 [--json]     (the VIP and backend a new flow gets)
//! xdpguard-lb which 203.0.113.13:* --to-port 443 --from 192.0.2.1:40000  (all-ports VIPs: the port counts)
//! xdpguard-lb stats [--json] [--reset] [--watch [--interval SECS]]
//! xdpguard-lb status [--json] [--exit-code [--config FILE | --expect-digest HEX]]   (the BGP health hook)
//! xdpguard-lb detach                                    xdpguard-lb upgrade   (a newer build takes over)
//! xdpguard-lb digest [--json] [--config FILE]            (what decides where flows go: compare LB nodes)
//! xdpguard-lb health [--netns NAME] [--interval 1s --timeout 500ms --rise 2 --fall 3] [--tcp | --http PATH] [--port N]
//! xdpguard-lb decap attach --iface eth0 --local 198.51.100.11 [--pin DIR] [--netns NAME]   (on a backend)
//! xdpguard-lb decap stats [--json]                       xdpguard-lb decap detach | upgrade
//! ```
//! A VIP is `ADDR:PORT`, `[V6-ADDR]:PORT`, or `ADDR:*` for all ports
//! (`Vip::parse_with`); modes and policies are the names their types parse
//! (`ForwardingMode`, `EchoPolicy`, ...: `FromStr`).
//!
//! Over 600 lines on purpose: half is the clap definitions, which are the
//! help text, and the other half one match arm per command, read top to
//! bottom; what the tools share is in `common/`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use common::Result;
use serde_json::{json, Value};
use xdpguard::{
    BackendAddr, BackendStats, Counter, Decap, Digest, EchoPolicy, Flow, ForwardingMode, FragmentPolicy, HashInput,
    IpNetwork, LbDigest, LbError, LbStats, LoadBalancer, OptionsPolicy, Protocol, Vip, VipConfig, VipStats,
};

const DEFAULT_PIN: &str = "/sys/fs/bpf/xdpguard-lb";
const DEFAULT_DECAP_PIN: &str = "/sys/fs/bpf/xdpguard-decap";

#[derive(Parser)]
#[command(name = "xdpguard-lb", version, about = "Manage a pinned xdpguard load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Pin {
    /// The load balancer's bpffs pin directory.
    #[arg(long, default_value = DEFAULT_PIN)]
    pin: PathBuf,
}

#[derive(Args)]
struct VipArg {
    /// The VIP: ADDR:PORT, [V6-ADDR]:PORT, or ADDR:* for every port.
    vip: String,
    /// Its protocol: tcp or udp.
    #[arg(long, short, default_value_t = Protocol::Tcp)]
    proto: Protocol,
}

impl VipArg {
    /// The VIP ([`Vip::parse_with`]: a bare address, which would take
    /// every port of it, is refused).
    fn vip(&self) -> Result<Vip> {
        Ok(Vip::parse_with(&self.vip, self.proto)?)
    }
}

#[derive(Args)]
struct DecapPin {
    /// The decapsulator's bpffs pin directory.
    #[arg(long, default_value = DEFAULT_DECAP_PIN)]
    pin: PathBuf,
}

#[derive(Subcommand)]
enum DecapCommand {
    /// Load a decapsulator, attach it and pin it: it keeps running after this exits.
    Attach {
        #[command(flatten)]
        target: common::Target,
        /// Local tunnel endpoint to decapsulate for (repeatable): the address the LB sends to.
        #[arg(long = "local", required = true)]
        locals: Vec<std::net::IpAddr>,
        #[command(flatten)]
        pin: DecapPin,
    },
    /// Show its interfaces, local endpoints and counters.
    Stats {
        #[command(flatten)]
        pin: DecapPin,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Detach from every interface and remove the pins.
    Detach {
        #[command(flatten)]
        pin: DecapPin,
        /// Detach from this interface only (repeatable; by the name it was
        /// attached with): the program stays pinned, its state kept.
        /// Without it: from every interface, and the pins removed.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
    },
    /// Add local endpoints to a running decapsulator, or remove them (`--del`).
    Local {
        #[command(flatten)]
        pin: DecapPin,
        /// The addresses.
        #[arg(required = true)]
        addrs: Vec<std::net::IpAddr>,
        /// Remove them instead.
        #[arg(long)]
        del: bool,
    },
    /// Take over a decapsulator pinned by another (older) xdpguard, swapping its program in place.
    Upgrade {
        #[command(flatten)]
        pin: DecapPin,
    },
}

/// Where `attach` puts the load balancer: as every tool's attach
/// (`common::Target`), or nowhere (`--behind-filter`).
#[derive(Args)]
struct LbTarget {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", required_unless_present = "behind_filter")]
    ifaces: Vec<String>,
    /// Load and pin it without attaching it anywhere: it serves behind a
    /// filter once that filter passes its packets on to it (`xdpguard
    /// next PIN`).
    #[arg(long, conflicts_with = "ifaces")]
    behind_filter: bool,
    /// XDP mode: native, generic, offload or auto (native where the driver
    /// has it, else generic).
    #[arg(long, default_value_t = xdpguard::AttachMode::Auto)]
    mode: xdpguard::AttachMode,
    /// Attach inside this named network namespace (/run/netns/NAME).
    /// Use this rather than `ip netns exec`, which hides /sys/fs/bpf.
    #[arg(long)]
    netns: Option<String>,
}

impl LbTarget {
    /// As `common::Target::enter_netns`.
    fn enter_netns(&self) -> Result<()> {
        self.netns.as_deref().map_or(Ok(()), common::enter_netns)
    }
}

/// `attach`'s arguments.
#[derive(Args)]
struct AttachArgs {
    #[command(flatten)]
    target: LbTarget,
    /// Interface to send out of without attaching (repeatable); the
    /// --iface interfaces are sent out of too.
    #[arg(long = "redirect")]
    redirect: Vec<String>,
    #[command(flatten)]
    pin: Pin,
    /// Prefix for IPIP outer sources (one per family; repeatable).
    #[arg(long = "ipip-source", value_name = "PREFIX", value_parser = prefix)]
    ipip_sources: Vec<IpNetwork>,
    /// Connection-table entries.
    #[arg(long, default_value_t = xdpguard::DEFAULT_CONNECTIONS)]
    connections: u32,
    /// Maximum VIPs.
    #[arg(long, default_value_t = xdpguard::DEFAULT_MAX_VIPS)]
    max_vips: u32,
    /// Maximum backends over all VIPs.
    #[arg(long, default_value_t = xdpguard::DEFAULT_MAX_BACKENDS)]
    max_backends: u32,
    /// Flow hash seed (the same on every LB node of a service).
    #[arg(long, default_value_t = 0)]
    hash_seed: u32,
    /// ICMP echo to a VIP: answer, pass or drop.
    #[arg(long, default_value_t = EchoPolicy::Answer)]
    echo: EchoPolicy,
    /// Fragments to a VIP: forward (to all-ports DSR/IPIP VIPs) or drop.
    #[arg(long, default_value_t = FragmentPolicy::ForwardAllPorts)]
    fragments: FragmentPolicy,
    /// IPv4 options to a VIP: forward or drop.
    #[arg(long, default_value_t = OptionsPolicy::Forward)]
    options: OptionsPolicy,
    /// UDP idle timeout, seconds (1 to 2592000, 30 days).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=MAX_UDP_TIMEOUT_SECS))]
    udp_timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Load the load balancer, attach it to interfaces and pin it. On a pin
    /// directory that already holds one (its interfaces were made again,
    /// say), attach that one: VIPs, backends and connections kept.
    Attach(AttachArgs),
    /// Detach from every interface and remove the pins.
    Detach {
        #[command(flatten)]
        pin: Pin,
        /// Detach from this interface only (repeatable; by the name it was
        /// attached with): the program stays pinned, its state kept.
        /// Without it: from every interface, and the pins removed.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
    },
    /// Take over a load balancer pinned by another (older) xdpguard: VIPs,
    /// backends and connections stay, its program is swapped for this
    /// build's on every interface at once, without a packet going
    /// unbalanced.
    Upgrade {
        #[command(flatten)]
        pin: Pin,
    },
    /// Add, remove or list VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// On a backend: strip the IPIP headers the LB adds (no ipip module needed).
    #[command(subcommand)]
    Decap(DecapCommand),
    /// Add, remove, reweight or list a VIP's backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Name the VIP and backend a new flow from a client gets (as the kernel will).
    ///
    /// The destination is ADDR:PORT ([V6-ADDR]:PORT): the VIP of that port
    /// takes the flow, else the all-ports VIP of the address. An all-ports
    /// VIP sends each flow by the port it connects to, so ADDR:* needs
    /// --to-port. A flow the connection table tracks also gets the backend
    /// its packets go to now ("tracked"), which can differ after backend
    /// changes.
    Which {
        #[command(flatten)]
        pin: Pin,
        /// Where the client connects to: ADDR:PORT, [V6-ADDR]:PORT, or ADDR:* with --to-port.
        #[arg(value_name = "DEST")]
        dest: String,
        /// The protocol: tcp or udp.
        #[arg(long, short, default_value_t = Protocol::Tcp)]
        proto: Protocol,
        /// The client's ADDR:PORT.
        #[arg(long)]
        from: SocketAddr,
        /// The destination port, when the destination is given as ADDR:*.
        #[arg(long)]
        to_port: Option<u16>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show counters: global (drops by reason, events), per VIP, per backend.
    Stats {
        #[command(flatten)]
        pin: Pin,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Reset the counters after reading them.
        #[arg(long)]
        reset: bool,
        /// Repeat every --interval seconds, showing packet rates, until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between two rounds of --watch (1 or more).
        #[arg(long, value_name = "SECS", default_value_t = 1, requires = "watch",
              value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
    },
    /// Check the backends and drain the failing ones; runs in the foreground (an agent).
    ///
    /// Every backend of every TCP VIP (or of each --vip) is checked at its
    /// own address, on --port, else its own port (NAT), else the VIP's.
    /// `fall` failed checks in a row drain it (weight 0: tracked flows
    /// continue), `rise` passed checks in a row restore the weight it had,
    /// unless an operator set another weight meanwhile. One line per change
    /// on stderr. Run it where the LB runs (--netns for a named namespace).
    Health(HealthArgs),
    /// Show interfaces, policies, capacities and memory.
    ///
    /// With --exit-code, a health check (the hook a BGP speaker's agent
    /// polls, dist/bird/): exits 0 when attached and at least one VIP has
    /// an active backend whose share of new flows is not lost, 3 when
    /// attached to no interface, 6 when an interface it was attached to is
    /// lost (deleted; `detach --iface` is not a loss), 7 when no VIP is
    /// left serving and IP forwarding is off on an interface it is attached
    /// to, or on every one it receives on (sysctl
    /// net.ipv4.conf.IF.forwarding or net.ipv6.conf.IF.forwarding, for its
    /// backends' families: VIP packets for backends of that family go to
    /// the stack; off for one family while the other's backends serve a
    /// VIP is a warning, off on only some of a chaining filter's interfaces
    /// a note), 8 when no VIP is left serving and an L2 DSR VIP's
    /// backend was lost for being routed out of an interface that is not a
    /// redirect interface (e.g. deleted and made again: `set --redirect
    /// IF`), 4 when no VIP is left serving otherwise (no active backend, or
    /// none routed: both route checks ask the data plane's own lookup, as
    /// for a packet received where it receives; a lost backend beside a
    /// working one, or a lost VIP beside a serving one, is a warning), 5
    /// when serving but its state digest differs from the one --config or
    /// --expect-digest expects (the node does not hold the fleet's
    /// configuration), 1 when no LB is pinned (detached) or it cannot be
    /// read.
    Status {
        #[command(flatten)]
        pin: Pin,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Exit non-zero unless the LB is serving (see above).
        #[arg(long)]
        exit_code: bool,
        /// Also require the state digest the configuration file's section
        /// (`[[lb]]`) pinned at --pin promises (`digest --config FILE`).
        #[arg(long, value_name = "FILE", conflicts_with = "expect_digest")]
        config: Option<PathBuf>,
        /// Also require this overall state digest (64 hex digits, as
        /// `digest` shows it).
        #[arg(long, value_name = "HEX")]
        expect_digest: Option<Digest>,
    },
    /// Change a running load balancer's settings, live (VIPs, backends and
    /// connections kept): redirect interfaces, IPIP outer sources, policies
    /// and the UDP timeout. What is not given stays as it is; `status` shows
    /// them all.
    Set(SetArgs),
    /// Show the state digests: per VIP (its settings, the hash seed, its
    /// backends and weights, its Maglev table) and overall. LB nodes with
    /// equal digests send every new flow to the same backend.
    Digest {
        #[command(flatten)]
        pin: Pin,
        /// Instead of a running LB's, the digests the configuration file's
        /// section (`[[lb]]`) pinned at --pin promises (no LB needed).
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct SetArgs {
    #[command(flatten)]
    pin: Pin,
    /// Prefix for IPIP outer sources of its family (repeatable: one per
    /// family); replaces that family's prefix.
    #[arg(long = "ipip-source", value_name = "PREFIX", value_parser = prefix)]
    ipip_sources: Vec<IpNetwork>,
    /// Forget the IPIP outer source prefix of a family (ipv4 or ipv6);
    /// refused while an IPIP VIP has a backend of that family.
    #[arg(long = "clear-ipip-source", value_name = "FAMILY", value_parser = ["ipv4", "ipv6"])]
    clear_ipip_sources: Vec<String>,
    /// ICMP echo to a VIP: answer, pass or drop.
    #[arg(long)]
    echo: Option<EchoPolicy>,
    /// Fragments to a VIP: forward (to all-ports DSR/IPIP VIPs) or drop.
    #[arg(long)]
    fragments: Option<FragmentPolicy>,
    /// IPv4 options to a VIP: forward or drop.
    #[arg(long)]
    options: Option<OptionsPolicy>,
    /// UDP idle timeout, seconds (1 to 2592000, 30 days).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_UDP_TIMEOUT_SECS))]
    udp_timeout: Option<u64>,
    /// Let the LB send out of this interface too (repeatable; by name, in
    /// the LB's network namespace), without attaching to it: an egress
    /// toward backends that was deleted and made again must be given again.
    #[arg(long = "redirect", value_name = "IF")]
    redirect: Vec<String>,
    /// Stop sending out of this interface (repeatable): the packets the FIB
    /// sends there go to the kernel's stack.
    #[arg(long = "no-redirect", value_name = "IF")]
    no_redirect: Vec<String>,
}

/// A VIP as `--vip ADDR:PORT` gives it (TCP unless its protocol is
/// written, `ADDR:PORT/udp`).
fn tcp_vip(text: &str) -> std::result::Result<Vip, String> {
    text.parse::<Vip>().or_else(|e| {
        Vip::parse_with(text, Protocol::Tcp).map_err(|bare| match bare {
            xdpguard::ParseError::VipWithoutPort { .. } => bare.to_string(),
            _ => e.to_string(),
        })
    })
}

/// A prefix as the filter's tools parse it (the error says what is wrong).
fn prefix(text: &str) -> std::result::Result<IpNetwork, String> {
    xdpguard::parse_prefix(text).map_err(|e| e.to_string())
}

/// The longest UDP idle timeout the tools take (the library clamps what
/// the kernel's 32-bit tick difference can count, about 49 days at 1000 Hz).
const MAX_UDP_TIMEOUT_SECS: u64 = 30 * 86_400;

/// The settings `set` changes (and `attach` on a running LB), in turn: the
/// redirect interfaces, the IPIP sources (clearing one can be refused:
/// then nothing after it is changed, and what was given before it stays),
/// then the policies, which cannot be refused.
#[derive(Default)]
struct Settings {
    redirect: Vec<String>,
    no_redirect: Vec<String>,
    ipip_sources: Vec<IpNetwork>,
    clear_ipip_sources: Vec<bool>,
    echo: Option<EchoPolicy>,
    fragments: Option<FragmentPolicy>,
    options: Option<OptionsPolicy>,
    udp_timeout: Option<u64>,
}

impl Settings {
    /// Applies them to `lb`; returns what changed, as `status` words it.
    /// What can be refused without changing anything is, first (two IPIP
    /// sources of one family, of which the last would silently win; a
    /// family both set and cleared; an interface to redirect out of that
    /// the namespace lacks); the IPIP sources go before the redirects, as
    /// the library may refuse them (a cleared family an IPIP backend
    /// needs); a refusal after that names what was applied before it.
    fn apply(&self, lb: &LoadBalancer) -> Result<Vec<String>> {
        self.check()?;
        let mut done = Vec::new();
        let mut step = |what: String, r: std::result::Result<(), xdpguard::Error>| -> Result<()> {
            match r {
                Ok(()) => {
                    done.push(what);
                    Ok(())
                }
                Err(e) if done.is_empty() => Err(e.into()),
                Err(e) => Err(format!("{e}; applied before it: {} (nothing after it)", done.join(", ")).into()),
            }
        };
        for &ipv6 in &self.clear_ipip_sources {
            let r = lb.clear_ipip_source(ipv6).map_err(Into::into);
            step(format!("IPIP source (IPv{}) cleared", if ipv6 { 6 } else { 4 }), r)?;
        }
        for prefix in &self.ipip_sources {
            step(format!("IPIP source {prefix}"), lb.set_ipip_source(*prefix).map_err(Into::into))?;
        }
        for iface in &self.redirect {
            let r = lb.add_redirect_interface(iface.as_str());
            let what = format!("redirect out of {iface} (ifindex {})", r.as_ref().copied().unwrap_or(0));
            step(what, r.map(drop))?;
        }
        for iface in &self.no_redirect {
            step(format!("no redirect out of {iface}"), lb.remove_redirect_interface(iface.as_str()))?;
        }
        if let Some(p) = self.echo {
            lb.set_echo_policy(p);
            done.push(format!("echo {p}"));
        }
        if let Some(p) = self.fragments {
            lb.set_fragment_policy(p);
            done.push(format!("fragments {p}"));
        }
        if let Some(p) = self.options {
            lb.set_options_policy(p);
            done.push(format!("options {p}"));
        }
        if let Some(secs) = self.udp_timeout {
            lb.set_udp_timeout(Duration::from_secs(secs));
            done.push(format!("UDP timeout {:?}", lb.udp_timeout()));
        }
        Ok(done)
    }

    /// What [`Self::apply`] refuses before changing anything.
    fn check(&self) -> Result<()> {
        for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
            let given: Vec<String> =
                self.ipip_sources.iter().filter(|p| p.is_ipv6() == v6).map(ToString::to_string).collect();
            if given.len() > 1 {
                return Err(format!(
                    "--ipip-source given {} times for {family} ({}): an LB has one outer source prefix per family; \
                     give one. Nothing changed",
                    given.len(),
                    given.join(", ")
                )
                .into());
            }
            if !given.is_empty() && self.clear_ipip_sources.contains(&v6) {
                return Err(format!(
                    "--ipip-source {} and --clear-ipip-source {}: set the {family} source or clear it, not both. \
                     Nothing changed",
                    given[0],
                    family.to_lowercase()
                )
                .into());
            }
        }
        if let Some(iface) = self.redirect.iter().find(|i| nix::net::if_::if_nametoindex(i.as_str()).is_err()) {
            return Err(format!(
                "no interface `{iface}` to redirect out of in the LB's network namespace (`ip link show`). \
                 Nothing changed"
            )
            .into());
        }
        Ok(())
    }
}

#[derive(Args)]
struct HealthArgs {
    #[command(flatten)]
    pin: Pin,
    /// Run in this named network namespace (/run/netns/NAME). The checks
    /// start in the LB's namespace wherever the agent runs. Use this
    /// rather than `ip netns exec`, which hides /sys/fs/bpf.
    #[arg(long)]
    netns: Option<String>,
    /// Time between rounds of checks, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Time a check may take (at most the interval).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Passed checks in a row that restore a drained backend.
    #[arg(long, default_value_t = xdpguard::health_check::DEFAULT_RISE)]
    rise: u32,
    /// Failed checks in a row that drain a backend.
    #[arg(long, default_value_t = xdpguard::health_check::DEFAULT_FALL)]
    fall: u32,
    /// Check with a TCP connect (the default).
    #[arg(long, conflicts_with = "http")]
    tcp: bool,
    /// Check with an HTTP GET of PATH (2xx or 3xx passes).
    #[arg(long, value_name = "PATH")]
    http: Option<String>,
    /// The port to check on every backend (default: the backend's, else the VIP's).
    #[arg(long)]
    port: Option<u16>,
    /// Check only this VIP's backends (repeatable): ADDR:PORT (TCP, as
    /// the other commands take it), or with its protocol, 203.0.113.10:80/tcp.
    #[arg(long = "vip", value_parser = tcp_vip)]
    vips: Vec<Vip>,
    /// A JSON file the state is written to at every change (the weights of
    /// the backends it drained among it), and read back at start, so a
    /// restarted agent restores what the previous one drained.
    #[arg(long)]
    state: Option<PathBuf>,
}

#[derive(Subcommand)]
enum VipCommand {
    /// Add a VIP.
    Add {
        #[command(flatten)]
        pin: Pin,
        #[command(flatten)]
        vip: VipArg,
        /// Forwarding mode: dsr, ipip or nat.
        #[arg(long)]
        mode: ForwardingMode,
        /// Maglev table size (a prime).
        #[arg(long, default_value_t = xdpguard::DEFAULT_TABLE_SIZE)]
        table_size: u32,
        /// Hash input: five-tuple or source (the client's address only).
        /// Default: source for an all-ports VIP (its fragments, hashed
        /// without ports, then reach the backend the flow's whole packets
        /// do), five-tuple otherwise.
        #[arg(long)]
        hash: Option<HashInput>,
        /// Do not track connections (not for NAT).
        #[arg(long)]
        no_conntrack: bool,
        /// Add it also at an address of the LB host itself, taking that
        /// address's packets (to the VIP's port, or every port) from the
        /// host's own services.
        #[arg(long)]
        force: bool,
    },
    /// Remove a VIP and its backends.
    Del {
        #[command(flatten)]
        pin: Pin,
        #[command(flatten)]
        vip: VipArg,
    },
    /// List VIPs with their backends.
    List {
        #[command(flatten)]
        pin: Pin,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend (NAT: ADDR:PORT to change the port).
    Add {
        #[command(flatten)]
        pin: Pin,
        #[command(flatten)]
        vip: VipArg,
        /// The backend.
        backend: BackendAddr,
        /// Its weight (0 adds it drained).
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend.
    Del {
        #[command(flatten)]
        pin: Pin,
        #[command(flatten)]
        vip: VipArg,
        /// The backend.
        backend: BackendAddr,
    },
    /// Set a backend's weight (0 drains it).
    Weight {
        #[command(flatten)]
        pin: Pin,
        #[command(flatten)]
        vip: VipArg,
        /// The backend.
        backend: BackendAddr,
        /// The new weight.
        weight: u32,
    },
    /// List a VIP's backends.
    List {
        #[command(flatten)]
        pin: Pin,
        #[command(flatten)]
        vip: VipArg,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    common::default_sigpipe();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The `attach` options given on the command line (not defaulted): on a
    // pin directory that already holds an LB, only those are applied.
    let attach = matches.subcommand_matches("attach");
    let given = |id: &str| attach.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    // `status` and `digest` with --config and no --pin: the file's only [[lb]].
    let pin_given = matches.subcommand().is_some_and(|(name, m)| {
        matches!(name, "status" | "digest") && m.value_source("pin") == Some(ValueSource::CommandLine)
    });
    let command = match cli.command {
        Command::Status { pin, json, exit_code, config, expect_digest } => {
            let pin = config_pin(pin, config.as_deref(), pin_given);
            Command::Status { pin, json, exit_code, config, expect_digest }
        }
        Command::Digest { pin, config, json } => {
            let pin = config_pin(pin, config.as_deref(), pin_given);
            Command::Digest { pin, config, json }
        }
        other => other,
    };
    match command {
        Command::Status { pin, json, exit_code: true, config, expect_digest } => {
            health(&pin, json, config.as_deref(), expect_digest)
        }
        command => common::exit_code(run(command, &given)),
    }
}

/// The pin directory a `--config` command is about: `--pin` when given,
/// else the file's `[[lb]]` when it has only one (a file it cannot read
/// is reported by the command itself).
fn config_pin(pin: Pin, config: Option<&Path>, pin_given: bool) -> Pin {
    let Some(file) = config.filter(|_| !pin_given) else { return pin };
    match xdpguard::config::Config::from_file(file) {
        Ok(c) if c.lbs.len() == 1 => Pin { pin: c.lbs[0].pin.clone() },
        _ => pin,
    }
}

/// `status --exit-code`: the status, and the health verdict as the exit
/// code `Health::exit_code` documents (2 when the expected digest cannot
/// be had: a usage error; 1 on any other error).
fn health(pin: &Pin, json: bool, config: Option<&Path>, expect: Option<Digest>) -> ExitCode {
    let expect = match expected(pin, config, expect) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match status(pin, json, expect) {
        Ok(h) => ExitCode::from(h.exit_code()),
        Err(e) => common::exit_code(Err(e)),
    }
}

/// The overall digest `status` is to expect: given, or what the file's
/// section pinned at --pin promises.
fn expected(pin: &Pin, config: Option<&Path>, expect: Option<Digest>) -> Result<Option<Digest>> {
    Ok(match config {
        Some(file) => Some(config_digest(file, &pin.pin)?.overall),
        None => expect,
    })
}

/// The digests the configuration file's `[[lb]]` pinned at `pin` promises.
fn config_digest(file: &Path, pin: &Path) -> Result<LbDigest> {
    let config = xdpguard::config::Config::from_file(file)?;
    let lb = config.lbs.iter().find(|l| l.pin == pin).ok_or_else(|| {
        let pins: Vec<String> = config.lbs.iter().map(|l| l.pin.display().to_string()).collect();
        format!(
            "{} has no [[lb]] pinned at {} (its [[lb]] sections are pinned at: {}; give the one meant with --pin)",
            file.display(),
            pin.display(),
            if pins.is_empty() { "none".to_owned() } else { pins.join(", ") }
        )
    })?;
    Ok(lb.expected_digest())
}

fn run(command: Command, given: &dyn Fn(&str) -> bool) -> Result<()> {
    match command {
        Command::Attach(args) => {
            args.target.enter_netns()?;
            if let Some(lb) = common::pinned_there(&args.pin.pin, || LoadBalancer::open_pinned(&args.pin.pin))? {
                return reattach(lb, &args, given);
            }
            let (target, pin) = (&args.target, &args.pin);
            let mut b = LoadBalancer::builder()
                .mode(target.mode)
                .pin(&pin.pin)
                .connections(args.connections)
                .max_vips(args.max_vips)
                .max_backends(args.max_backends)
                .hash_seed(args.hash_seed)
                .echo_policy(args.echo)
                .fragment_policy(args.fragments)
                .options_policy(args.options)
                .udp_timeout(Duration::from_secs(args.udp_timeout));
            for i in &target.ifaces {
                b = b.interface(i.as_str());
            }
            for i in &args.redirect {
                b = b.redirect_interface(i.as_str());
            }
            for p in &args.ipip_sources {
                b = b.ipip_source(*p);
            }
            if target.behind_filter {
                // Its namespace is recorded: `xdpguard next` and the tools find it.
                match b.load() {
                    // Another `attach` pinned one there meanwhile: kept.
                    Err(xdpguard::Error::Pin(xdpguard::PinError::InUse { .. })) => {
                        return reattach(LoadBalancer::open_pinned(&pin.pin)?, &args, given);
                    }
                    loaded => drop(loaded?),
                }
                println!(
                    "pinned at {}, attached nowhere: it serves behind a filter once the filter passes its packets \
                     on to it (`xdpguard next {} --pin FILTER_PIN`)",
                    pin.pin.display(),
                    pin.pin.display()
                );
                return Ok(());
            }
            let lb = match b.attach() {
                // Another `attach` pinned a load balancer there since the
                // look above (two started at once): that one is attached here.
                Err(xdpguard::Error::Pin(xdpguard::PinError::InUse { .. })) => {
                    return reattach(LoadBalancer::open_pinned(&pin.pin)?, &args, given);
                }
                attached => attached?,
            };
            common::print_attached(&lb.attachments(), &pin.pin);
        }
        Command::Decap(DecapCommand::Attach { target, locals, pin }) => {
            target.enter_netns()?;
            // A decapsulator pinned there: attached again, its local
            // endpoints kept and the ones given added.
            let reattach = |decap: Decap| -> Result<()> {
                let todo = common::still_to_attach(
                    &pin.pin,
                    "decapsulator",
                    "xdpguard-lb decap",
                    (&decap.attachments(), decap.program_id()?),
                    &target.ifaces,
                    target.mode,
                )?;
                // Every address checked (and the room for them) before the
                // first is added; taken back if an interface is refused.
                let added = decap.add_locals(&locals)?;
                let now = common::attach_all(&todo, |i| decap.attach(i, target.mode), |i| drop(decap.detach(i)))
                    .inspect_err(|_| {
                        for a in &added {
                            let _ = decap.remove_local(*a);
                        }
                    })?;
                common::print_attached(&now, &pin.pin);
                let kept: Vec<String> = decap.locals().iter().map(ToString::to_string).collect();
                println!("reopened the decapsulator pinned there: local endpoints {}", kept.join(", "));
                Ok(())
            };
            if let Some(decap) = common::pinned_there(&pin.pin, || Decap::open_pinned(&pin.pin))? {
                return reattach(decap);
            }
            let mut b = Decap::builder().mode(target.mode).pin(&pin.pin);
            for i in &target.ifaces {
                b = b.interface(i.as_str());
            }
            for a in &locals {
                b = b.local(*a);
            }
            let decap = match b.attach() {
                // Another `attach` pinned one there since the look above
                // (two started at once): that one is attached here.
                Err(xdpguard::Error::Pin(xdpguard::PinError::InUse { .. })) => {
                    return reattach(Decap::open_pinned(&pin.pin)?);
                }
                attached => attached?,
            };
            common::print_attached(&decap.attachments(), &pin.pin);
        }
        Command::Decap(DecapCommand::Local { pin, addrs, del }) => {
            let decap = Decap::open_pinned(&pin.pin)?;
            // Read once, kept in step: an address given twice changes once.
            let mut have = decap.locals();
            // An address it does not have is refused before anything is
            // removed, as `vip del` and `backend del` refuse unknown ones.
            if let Some(&addr) = addrs.iter().find(|a| del && !have.contains(a)) {
                return Err(LbError::DecapLocalNotFound { addr, locals: have }.into());
            }
            let mut changed = 0;
            if del {
                for a in addrs {
                    if let Some(at) = have.iter().position(|h| *h == a) {
                        decap.remove_local(a)?;
                        have.remove(at);
                        changed += 1;
                    }
                }
            } else {
                // All of them or none: each is checked, and the room for
                // them, before the first is added.
                changed = decap.add_locals(&addrs)?.len();
            }
            let now: Vec<String> = decap.locals().iter().map(ToString::to_string).collect();
            println!(
                "{} {changed}; local endpoints now: {}",
                if del { "removed" } else { "added" },
                if now.is_empty() { "none".into() } else { now.join(", ") }
            );
        }
        Command::Decap(DecapCommand::Stats { pin, json }) => {
            let decap = Decap::open_pinned(&pin.pin)?;
            let s = decap.stats()?;
            let locals = decap.locals();
            if json {
                let attachments: Vec<Value> = decap.attachments().iter().map(common::attachment_json).collect();
                let lost: Vec<Value> = decap.lost_attachments().iter().map(common::attachment_json).collect();
                let locals: Vec<String> = locals.iter().map(|a| a.to_string()).collect();
                println!(
                    "{}",
                    json!({
                        "attachments": attachments,
                        "lost_attachments": lost,
                        "locals": locals,
                        "decapsulated": common::counter_json(s.decapsulated),
                        "passed": common::counter_json(s.passed),
                    })
                );
            } else {
                for a in decap.attachments() {
                    println!("attached to {}", common::attachment_text(&a));
                }
                common::print_lost(&decap.lost_attachments(), 6, "xdpguard-lb decap", &pin.pin);
                for a in &locals {
                    println!("local endpoint {a}");
                }
                println!("{:<22} {:>14} {:>16}", "counter", "packets", "bytes");
                println!("{:<22} {:>14} {:>16}", "decapsulated", s.decapsulated.packets, s.decapsulated.bytes);
                println!("{:<22} {:>14} {:>16}", "passed", s.passed.packets, s.passed.bytes);
            }
        }
        Command::Decap(DecapCommand::Detach { pin, ifaces }) if !ifaces.is_empty() => {
            let decap = Decap::open_pinned(&pin.pin)?;
            common::detach_some(&ifaces, |i| decap.detach(i), &pin.pin)?;
        }
        Command::Decap(DecapCommand::Detach { pin, ifaces: _ }) => {
            let Some(decap) = common::reopen(&pin.pin, Decap::open_pinned(&pin.pin))? else {
                return Ok(Decap::remove_interrupted(&pin.pin)?);
            };
            let attachments = decap.attachments();
            decap.unpin()?;
            common::print_detached(&attachments, &pin.pin);
        }
        Command::Decap(DecapCommand::Upgrade { pin }) => {
            let (_, report) = Decap::upgrade_pinned(&pin.pin)?;
            common::print_upgraded("decapsulator", &report, &pin.pin);
        }
        Command::Upgrade { pin } => {
            let (_, report) = LoadBalancer::upgrade_pinned(&pin.pin)?;
            common::print_upgraded("load balancer", &report, &pin.pin);
        }
        Command::Detach { pin, ifaces } if !ifaces.is_empty() => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            common::detach_some(&ifaces, |i| lb.detach(i), &pin.pin)?;
        }
        Command::Detach { pin, ifaces: _ } => {
            let Some(lb) = common::reopen(&pin.pin, LoadBalancer::open_pinned(&pin.pin))? else {
                return Ok(LoadBalancer::remove_interrupted(&pin.pin)?);
            };
            refuse_chained(&lb, &pin.pin)?;
            let attachments = lb.attachments();
            lb.unpin()?;
            common::print_detached(&attachments, &pin.pin);
        }
        Command::Vip(VipCommand::Add { pin, vip, mode, table_size, hash, no_conntrack, force }) => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let vip = vip.vip()?;
            let mut config = VipConfig::for_vip(&vip, mode).table_size(table_size).conntrack(!no_conntrack);
            if let Some(hash) = hash {
                config = config.hash(hash);
            }
            let existed = lb.vips()?.iter().any(|(v, _)| *v == vip);
            if force {
                lb.add_vip_permit_local(vip, config)?;
            } else {
                lb.add_vip(vip, config)?;
            }
            let forwards_fragments = vip.port.is_none()
                && mode != ForwardingMode::Nat
                && lb.fragment_policy() == FragmentPolicy::ForwardAllPorts;
            if config.hash == HashInput::FiveTuple && forwards_fragments {
                eprintln!(
                    "warning: all-ports VIP {vip} hashes the five-tuple, but its fragments carry no ports and are \
                     hashed without them: a flow's fragments reach another backend than its whole packets, as a \
                     rule; leave out --hash (an all-ports VIP then hashes the source address), or drop fragments \
                     (`xdpguard-lb set --fragments drop`)"
                );
            }
            if existed {
                let backends = lb.backends(&vip)?.len();
                println!("VIP {vip} already exists with this configuration ({backends} backends); nothing changed");
            } else {
                println!("added VIP {vip} ({config}); it drops until it has a backend");
            }
        }
        Command::Vip(VipCommand::Del { pin, vip }) => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let vip = vip.vip()?;
            lb.remove_vip(&vip)?;
            println!("removed VIP {vip}");
        }
        Command::Vip(VipCommand::List { pin, json }) => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let mut items = Vec::new();
            for (vip, config) in lb.vips()? {
                let backends = lb.backends(&vip)?;
                if json {
                    items.push(json!({
                        "vip": vip.to_string(),
                        "address": vip.addr.to_string(),
                        "port": vip.port,
                        "protocol": vip.protocol.to_string(),
                        "mode": config.mode.to_string(),
                        "table_size": config.table_size,
                        "hash": config.hash.to_string(),
                        "conntrack": config.conntrack,
                        "backends": backends.iter().map(|b| json!({
                            "backend": b.addr.to_string(), "weight": b.weight, "state": b.state().to_string(),
                        })).collect::<Vec<_>>(),
                    }));
                } else {
                    println!("{vip}  {config}");
                    for b in backends {
                        println!("    {:<40} weight {:<6} {}", b.addr.to_string(), b.weight, b.state());
                    }
                }
            }
            if json {
                println!("{}", Value::Array(items));
            }
        }
        Command::Backend(BackendCommand::Add { pin, vip, backend, weight }) => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let vip = vip.vip()?;
            lb.add_backend(&vip, backend, weight)?;
            println!("added backend {backend} (weight {weight}) to {vip}");
            // A backend the LB has no route to gets its share of new flows
            // all the same (they go to the kernel's stack): said now, as
            // `status` says it (the data plane's own lookup, from each
            // interface the LB receives on).
            // With no receiving interface yet (behind a filter not yet
            // chaining it), the main routing table's answer.
            let unrouted = match lb.health() {
                Ok(h) if h.receiving > 0 => h.unrouted.iter().any(|u| u.vip == vip && u.backend == backend),
                _ => lb
                    .backend_stats(&vip)
                    .ok()
                    .and_then(|s| s.into_iter().find(|b| b.backend.addr == backend))
                    .is_some_and(|b| b.next_hop.state == xdpguard::NeighbourState::NoRoute),
            };
            if unrouted {
                eprintln!(
                    "warning: the load balancer has no route to {} from the interfaces it receives on: its share of \
                     new flows goes to the kernel's stack (`passed_no_route` in `xdpguard-lb stats`) until one \
                     exists; add a route in its namespace, or `xdpguard-lb backend del`",
                    backend.ip
                );
            }
        }
        Command::Backend(BackendCommand::Del { pin, vip, backend }) => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let vip = vip.vip()?;
            lb.remove_backend(&vip, backend)?;
            println!("removed backend {backend} from {vip}; its tracked flows choose afresh");
        }
        Command::Backend(BackendCommand::Weight { pin, vip, backend, weight }) => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let vip = vip.vip()?;
            lb.set_weight(&vip, backend, weight)?;
            if weight == 0 {
                println!("draining {backend} on {vip}: no new flows, tracked flows continue");
            } else {
                println!("set {backend} on {vip} to weight {weight}");
            }
        }
        Command::Backend(BackendCommand::List { pin, vip, json }) => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let vip = vip.vip()?;
            let stats = lb.backend_stats(&vip)?;
            if json {
                let items: Vec<Value> = stats.iter().map(backend_json).collect();
                println!("{}", json!({ "vip": vip.to_string(), "backends": items }));
            } else {
                for b in stats {
                    println!(
                        "{:<40} weight {:<6} {:<9} {:>12} pkts {:>14} bytes  {}",
                        b.backend.addr.to_string(),
                        b.backend.weight,
                        b.backend.state().to_string(),
                        b.traffic.packets,
                        b.traffic.bytes,
                        next_hop_text(&b)
                    );
                }
            }
        }
        Command::Which { pin, dest, proto, from, to_port, json } => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            // A bare address is a destination here, not a VIP to make:
            // its port comes from --to-port.
            let target = match dest.trim().parse::<std::net::IpAddr>() {
                Ok(addr) => Vip { addr, port: None, protocol: proto },
                Err(_) => Vip::parse_with(&dest, proto)?,
            };
            // The kernel hashes the port each packet carries, also for an
            // all-ports VIP: there is no answer without it.
            let port = match (target.port, to_port) {
                (Some(p), Some(q)) if p != q => {
                    return Err(
                        format!("the destination names port {p} but --to-port says {q}: give the port once").into()
                    )
                }
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => {
                    return Err(format!(
                        "{target} stands for every port, and an all-ports VIP sends each flow by the port it connects \
                         to: give the port, e.g. `which {} --from {from}`, or add `--to-port 443`",
                        SocketAddr::new(target.addr, 443)
                    )
                    .into())
                }
            };
            let flow = Flow::new(from, SocketAddr::new(target.addr, port), target.protocol);
            let Some(vip) = lb.vip_for(&flow)? else {
                return Err(format!(
                    "no VIP takes {flow}: its packets pass to the stack (list the VIPs with `xdpguard-lb vip list`)"
                )
                .into());
            };
            let backend = lb.backend_for(&vip, &flow)?;
            let tracked = lb.tracked_backend(&flow)?;
            if json {
                println!(
                    "{}",
                    json!({ "vip": vip.to_string(), "from": from.to_string(), "to": flow.dst.to_string(),
                            "backend": backend.map(|b| b.to_string()), "tracked": tracked.map(|b| b.to_string()) })
                );
            } else {
                match backend {
                    Some(b) => println!("{flow}: VIP {vip}; new flows go to {b}"),
                    None => println!("{flow}: VIP {vip}; dropped (no usable backend)"),
                }
                if let Some(t) = tracked {
                    println!("  tracked: this flow's packets go to {t} (its connection-table entry)");
                }
            }
        }
        Command::Stats { pin, json, reset, watch, interval } => {
            let lb = LoadBalancer::open_pinned(&pin.pin)?;
            let mut previous: Option<Snapshot> = None;
            loop {
                let now = Snapshot::read(&lb)?;
                print_stats(&now, previous.as_ref(), json);
                if reset {
                    // What was shown is taken off; what was counted while
                    // it was shown stays for the next read (a zeroing
                    // would lose it).
                    now.subtract_from(&lb)?;
                }
                if !watch {
                    break;
                }
                // Reset, the next read counts from what was shown: its
                // rates are over all of it.
                previous = Some(if reset { now.zeroed() } else { now });
                std::thread::sleep(Duration::from_secs(interval.max(1)));
                if !json {
                    println!();
                }
            }
        }
        Command::Digest { pin, config, json } => {
            let digest = match config {
                None => LoadBalancer::open_pinned(&pin.pin)?.digest()?,
                Some(file) => config_digest(&file, &pin.pin)?,
            };
            if json {
                let vips: Vec<_> =
                    digest.vips.iter().map(|(v, d)| json!({ "vip": v.to_string(), "digest": d.to_string() })).collect();
                println!("{}", json!({ "digest": digest.overall.to_string(), "vips": vips }));
            } else {
                println!("overall {}", digest.overall);
                for (v, d) in &digest.vips {
                    println!("{d}  {v}");
                }
            }
        }
        Command::Health(args) => health_agent(args)?,
        Command::Set(args) => {
            let settings = Settings {
                redirect: args.redirect,
                no_redirect: args.no_redirect,
                ipip_sources: args.ipip_sources,
                clear_ipip_sources: args.clear_ipip_sources.iter().map(|f| f == "ipv6").collect(),
                echo: args.echo,
                fragments: args.fragments,
                options: args.options,
                udp_timeout: args.udp_timeout,
            };
            let lb = LoadBalancer::open_pinned(&args.pin.pin)?;
            if !(settings.redirect.is_empty() && settings.no_redirect.is_empty()) {
                // Interface names are the LB's namespace's.
                if let Some(name) = lb.netns_name() {
                    common::enter_netns(&name)?;
                }
            }
            let done = settings.apply(&lb)?;
            if done.is_empty() {
                return Err("nothing to set: give --redirect, --no-redirect, --ipip-source, --clear-ipip-source, \
                            --echo, --fragments, --options or --udp-timeout (`xdpguard-lb status` shows what is in \
                            force)"
                    .into());
            }
            println!("set: {}", done.join(", "));
        }
        Command::Status { pin, json, exit_code: _, config, expect_digest } => {
            let expect = expected(&pin, config.as_deref(), expect_digest)?;
            status(&pin, json, expect)?;
        }
    }
    Ok(())
}

/// `attach` on a pin directory that already holds a load balancer:
/// attaches that one to the interfaces given, its VIPs, backends and
/// connections kept (after an interface was deleted and made again, its
/// link died with it). Of the options, only those given are applied: the
/// policies, the UDP timeout, IPIP sources and redirect interfaces are set
/// on the running LB; capacities and the hash seed, fixed at load time,
/// are refused when they differ, not ignored. If an interface cannot be
/// attached, those attached by this command are detached again.
fn reattach(lb: LoadBalancer, args: &AttachArgs, given: &dyn Fn(&str) -> bool) -> Result<()> {
    let dir = &args.pin.pin;
    // Its interfaces are where it was loaded: without --netns, there.
    if args.target.netns.is_none() {
        if let Some(name) = lb.netns_name() {
            common::enter_netns(&name)?;
            eprintln!("note: attaching in network namespace {name}, where the load balancer was loaded");
        }
    }
    let attached = lb.attachments();
    if args.target.behind_filter && !attached.is_empty() {
        let names: Vec<&str> = attached.iter().map(|a| a.interface.as_str()).collect();
        return Err(format!(
            "the load balancer pinned at {} is attached to {}: --behind-filter keeps it attached nowhere; detach it \
             from them first (`xdpguard-lb detach --iface IF --pin {}`), nothing changed",
            dir.display(),
            names.join(", "),
            dir.display()
        )
        .into());
    }
    let (vips, backends, connections) = lb.capacity();
    for (id, flag, have, want) in [
        ("connections", "--connections", connections, args.connections),
        ("max_vips", "--max-vips", vips, args.max_vips),
        ("max_backends", "--max-backends", backends, args.max_backends),
        ("hash_seed", "--hash-seed", lb.hash_seed(), args.hash_seed),
    ] {
        if given(id) && have != want {
            return Err(format!(
                "the load balancer pinned at {} has {flag} {have}, fixed when it was loaded; attach it without \
                 {flag}, or detach it (`xdpguard-lb detach --pin {}`, which drops its VIPs, backends and \
                 connections) and attach a new one",
                dir.display(),
                dir.display()
            )
            .into());
        }
    }
    let todo = common::still_to_attach(
        dir,
        "load balancer",
        "xdpguard-lb",
        (&attached, lb.program_id()?),
        &args.target.ifaces,
        args.target.mode,
    )?;
    // A refused attach changes nothing: the interfaces first, then what can
    // still fail (undone by detaching again), then what cannot.
    let now = common::attach_all(&todo, |i| lb.attach(i, args.target.mode), |i| drop(lb.detach(i)))?;
    let settings = Settings {
        ipip_sources: args.ipip_sources.clone(),
        echo: given("echo").then_some(args.echo),
        fragments: given("fragments").then_some(args.fragments),
        options: given("options").then_some(args.options),
        udp_timeout: given("udp_timeout").then_some(args.udp_timeout),
        ..Settings::default()
    };
    let fallible = || -> Result<()> {
        for iface in &args.redirect {
            lb.add_redirect_interface(iface.as_str())?;
        }
        settings.apply(&lb).map(drop)
    };
    if let Err(e) = fallible() {
        for a in &now {
            drop(lb.detach(a.interface.as_str()));
        }
        return Err(e);
    }
    common::print_attached(&now, dir);
    println!(
        "reopened the load balancer pinned there: VIPs, backends and connections kept ({} VIPs, {} connections \
         tracked)",
        lb.vips()?.len(),
        lb.connection_count()
    );
    Ok(())
}

/// Refuses to detach an LB a filter still passes its packets on to: it
/// would go on balancing them, unpinned and out of every tool's reach.
fn refuse_chained(lb: &LoadBalancer, dir: &Path) -> Result<()> {
    let chains = lb.chained_from();
    let Some(c) = chains.first() else { return Ok(()) };
    let fix = match &c.pin {
        Some(p) => {
            format!("{} (or take the filter down first: `xdpguard detach --pin {}`)", c.unchain_hint(), p.display())
        }
        None => format!("{}, or detach that filter", c.unchain_hint()),
    };
    Err(format!(
        "{} passes its packets on to the load balancer pinned at {}: detached, the LB would go on balancing \
         them, unpinned and out of reach of every tool. Stop the chaining first: {fix}; nothing was changed",
        common::chained_text(c, lb.netns_name().as_deref()),
        dir.display()
    )
    .into())
}

/// `status`: interfaces, policies, capacities, memory and health.
fn status(pin: &Pin, json: bool, expect: Option<Digest>) -> Result<xdpguard::Health> {
    let lb = LoadBalancer::open_pinned(&pin.pin)?;
    let health = match expect {
        Some(d) => lb.health_expecting(&d)?,
        None => lb.health()?,
    };
    let (vips, backends, connections) = lb.capacity();
    let attachments = lb.attachments();
    let lost = lb.lost_attachments();
    let chains = lb.chained_from();
    if json {
        println!(
            "{}",
            json!({
                "pin": pin.pin.display().to_string(),
                "attachments": attachments.iter().map(common::attachment_json).collect::<Vec<_>>(),
                "lost_attachments": lost.iter().map(common::attachment_json).collect::<Vec<_>>(),
                "chained_from": chains.iter().map(|c| json!({
                    "program_id": c.program_id,
                    "pin": c.pin.as_ref().map(|p| p.display().to_string()),
                    "ifindexes": c.ifindexes,
                    "lost_attachments": c.lost.iter().map(common::attachment_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "redirect_ifindexes": lb.redirect_interfaces(),
                "netns": lb.netns_name(),
                "vips": lb.vips()?.len(),
                "capacity": { "vips": vips, "backends": backends, "connections": connections },
                "connections": lb.connection_count(),
                "map_memory_bytes": lb.map_memory_bytes(),
                "echo_policy": lb.echo_policy().to_string(),
                "fragment_policy": lb.fragment_policy().to_string(),
                "options_policy": lb.options_policy().to_string(),
                "udp_timeout_secs": lb.udp_timeout().as_secs_f64(),
                "ipip_sources": lb.ipip_sources().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "hash_seed": lb.hash_seed(),
                "serving": health.is_serving(),
                "digest_matches": health.digest_matches,
                "forwarding_off": health.forwarding_off.iter().map(|o| o.sysctl()).collect::<Vec<_>>(),
                "unredirected": health.unredirected.iter().map(|u| json!({
                    "vip": u.vip.to_string(),
                    "backend": u.backend.to_string(),
                    "ifindex": u.ifindex,
                    "interface": u.interface,
                    "withdraws": u.withdraws,
                })).collect::<Vec<_>>(),
                "unrouted": health.unrouted.iter().map(|u| json!({
                    "vip": u.vip.to_string(),
                    "backend": u.backend.to_string(),
                    "everywhere": u.everywhere,
                    "may_depend_on_source": u.may_depend_on_source,
                })).collect::<Vec<_>>(),
                "routes_unchecked": health.routes_unchecked,
            })
        );
    } else {
        println!("pinned at:   {}", pin.pin.display());
        let netns = lb.netns_name();
        if let Some(n) = &netns {
            println!("netns:       {n}");
        }
        for a in &attachments {
            println!("attached:    {}", common::attachment_text(a));
        }
        common::print_lost(&lost, 13, "xdpguard-lb", &pin.pin);
        for c in &chains {
            println!("behind:      {}", common::chained_text(c, netns.as_deref()));
            common::print_chained_lost(c, 13);
        }
        if attachments.is_empty() && lost.is_empty() && chains.iter().all(|c| c.ifindexes.is_empty()) {
            println!(
                "attached:    nowhere (detached, or its interfaces are gone); attach it again, VIPs, backends and \
                 connections kept: `xdpguard-lb attach --iface IF --pin {}` (in its namespace{}), or chain it \
                 behind a filter (`xdpguard next`)",
                pin.pin.display(),
                netns.as_deref().map(|n| format!(", {n}, which attach enters")).unwrap_or_default()
            );
        }
        let redirect = lb.redirect_interfaces();
        println!(
            "redirect:    {}",
            if redirect.is_empty() { "none".into() } else { common::ifindexes_text(&redirect, netns.as_deref()) }
        );
        println!("VIPs:        {} of {vips}", lb.vips()?.len());
        println!("backends:    up to {backends}");
        println!("connections: {} tracked, table of {connections}", lb.connection_count());
        println!("memory:      {}", common::memory_text(lb.map_memory_bytes()));
        println!(
            "policies:    echo {}, fragments {}, options {}, UDP timeout {:?}",
            lb.echo_policy(),
            lb.fragment_policy(),
            lb.options_policy(),
            lb.udp_timeout()
        );
        let ipip: Vec<String> = lb.ipip_sources().iter().map(|p| p.to_string()).collect();
        println!(
            "IPIP source: {}",
            if ipip.is_empty() { "none (`xdpguard-lb set --ipip-source PREFIX`)".into() } else { ipip.join(", ") }
        );
        println!("health:      {health}");
    }
    Ok(health)
}

/// The counters at one moment (`stats`, and each round of `stats --watch`).
struct Snapshot {
    taken: Instant,
    global: LbStats,
    vips: Vec<(Vip, VipConfig, VipStats, Vec<BackendStats>)>,
}

impl Snapshot {
    fn read(lb: &LoadBalancer) -> Result<Snapshot> {
        let global = lb.stats()?;
        let vips = lb.all_vip_stats()?.into_iter().map(|r| (r.vip, r.config, r.stats, r.backends)).collect();
        Ok(Snapshot { taken: Instant::now(), global, vips })
    }

    /// The same VIPs and backends with every count 0, taken at the same
    /// time: what the counters start from after `--reset`.
    fn zeroed(&self) -> Snapshot {
        let vips = self
            .vips
            .iter()
            .map(|(vip, config, _, backends)| {
                let backends = backends
                    .iter()
                    .map(|b| BackendStats { traffic: Counter::default(), no_neighbour: Counter::default(), ..*b })
                    .collect();
                (*vip, *config, VipStats::default(), backends)
            })
            .collect();
        Snapshot { taken: self.taken, global: LbStats::default(), vips }
    }

    /// `--reset`: takes these counts off the LB's counters. A VIP removed
    /// since has nothing left to reset.
    fn subtract_from(&self, lb: &LoadBalancer) -> Result<()> {
        lb.subtract_stats(&self.global)?;
        for (vip, _, stats, backends) in &self.vips {
            match lb.subtract_vip_stats(vip, stats, backends) {
                Err(LbError::VipNotFound { .. }) => {}
                done => done?,
            }
        }
        Ok(())
    }
}

/// Prints a snapshot; with an earlier one (`--watch`), packet rates too.
fn print_stats(now: &Snapshot, previous: Option<&Snapshot>, json: bool) {
    let secs = previous.map(|p| now.taken.duration_since(p.taken).as_secs_f64().max(1e-9));
    let delta = previous.map(|p| now.global.since(&p.global).rows());
    let vip_pps = |vip: &Vip, s: &VipStats| {
        let (p, secs) = (previous?, secs?);
        let (_, _, before, _) = p.vips.iter().find(|(v, ..)| v == vip)?;
        Some(s.since(before).traffic.packets as f64 / secs)
    };
    let (global, vips) = (&now.global, &now.vips);
    if json {
        let mut global: serde_json::Map<String, Value> =
            global.rows().into_iter().map(|(name, c)| (name.to_owned(), common::counter_json(c))).collect();
        if let (Some(delta), Some(secs)) = (&delta, secs) {
            let rates: serde_json::Map<String, Value> = delta
                .iter()
                .map(|(name, c)| {
                    ((*name).to_owned(), json!({ "pps": c.packets as f64 / secs, "bps": c.bytes as f64 * 8.0 / secs }))
                })
                .collect();
            global.insert("rates".into(), Value::Object(rates));
        }
        let vips: Vec<Value> = vips
            .iter()
            .map(|(vip, config, s, backends)| {
                json!({
                    "vip": vip.to_string(),
                    "mode": config.mode.to_string(),
                    "packets": s.traffic.packets,
                    "bytes": s.traffic.bytes,
                    "new_flows": s.new_flows,
                    "lru_hits": s.lru_hits,
                    "lru_misses": s.lru_misses,
                    "pps": vip_pps(vip, s),
                    "backends": backends.iter().map(backend_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({ "global": global, "vips": vips }));
        return;
    }
    println!("{:<22} {:>14} {:>16} {:>12}", "counter", "packets", "bytes", "pps");
    for (i, (name, c)) in global.rows().into_iter().enumerate() {
        let pps = match (&delta, secs) {
            (Some(d), Some(secs)) => format!("{:.0}", d[i].1.packets as f64 / secs),
            _ => "-".into(),
        };
        if c.packets > 0 {
            println!("{name:<22} {:>14} {:>16} {pps:>12}", c.packets, c.bytes);
        }
    }
    for (vip, config, s, backends) in vips {
        let rate = vip_pps(vip, s).map(|r| format!(", {r:.0} pps")).unwrap_or_default();
        println!(
            "\n{vip} ({}): {} pkts, {} bytes, {} new flows, {} LRU hits, {} misses{rate}",
            config.mode, s.traffic.packets, s.traffic.bytes, s.new_flows, s.lru_hits, s.lru_misses
        );
        for b in backends {
            println!(
                "    {:<40} weight {:<6} {:<9} {:>12} pkts  {}",
                b.backend.addr.to_string(),
                b.backend.weight,
                b.backend.state().to_string(),
                b.traffic.packets,
                next_hop_text(b)
            );
        }
    }
}

/// `health`: the agent. Logs one line per event on stderr, and keeps the
/// state file (if any) current.
fn health_agent(args: HealthArgs) -> Result<()> {
    use xdpguard::health_check::{Check, HealthChecker, HealthConfig};
    if let Some(name) = &args.netns {
        common::enter_netns(name)?;
    }
    let lb = LoadBalancer::open_pinned(&args.pin.pin)?;
    let check = match args.http {
        Some(path) => Check::Http { path },
        None => Check::Tcp,
    };
    let mut config =
        HealthConfig::new(check).interval(args.interval).timeout(args.timeout).rise(args.rise).fall(args.fall);
    config.port = args.port;
    config.vips = args.vips;
    let checker = HealthChecker::new(config)?;
    // A --vip the LB does not have is refused before anything starts (run
    // asks too): it would be checked never.
    checker.check_vips(&lb)?;
    if let Some(path) = &args.state {
        for (vip, backend, weight) in read_health_state(path)? {
            checker.adopt(vip, backend, weight);
        }
    }
    let c = checker.config();
    eprintln!(
        "health: checking backends every {} ({}, timeout {}, rise {}, fall {}): a failing one is drained within {}, \
         a recovered one restored within {}",
        humantime::format_duration(c.interval),
        c.check,
        humantime::format_duration(c.timeout),
        c.rise,
        c.fall,
        humantime::format_duration(c.drain_bound()),
        humantime::format_duration(c.restore_bound()),
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let write_error = std::cell::RefCell::new(None);
    // The state file, or the agent stops with the error.
    let keep = |status: &[xdpguard::health_check::BackendHealth]| -> std::result::Result<(), String> {
        let Some(path) = &args.state else { return Ok(()) };
        write_health_state(path, status).map_err(|e| {
            let text = e.to_string();
            write_error.borrow_mut().get_or_insert(e);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            text
        })
    };
    checker.run_journaled(
        &lb,
        &stop,
        // Before a drain is written to the LB, the state file holds it: an
        // agent killed between the two is restarted knowing what to restore.
        keep,
        |event| {
            // The state file first, then the line: whoever reads the line
            // (an operator, a supervisor about to restart the agent) may
            // rely on a restarted agent knowing what this one drained.
            // (Found by tests/lb_health.rs, which kills the agent right
            // after a drain's line: logged first, the restarted agent took
            // the drained backend for an operator's weight 0 and never
            // restored it.)
            let _ = keep(&checker.status());
            eprintln!("health: {event}");
        },
    )?;
    match write_error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The state file: every checked backend's state and counters.
fn write_health_state(path: &std::path::Path, status: &[xdpguard::health_check::BackendHealth]) -> Result<()> {
    let backends: Vec<Value> = status
        .iter()
        .map(|h| {
            json!({
                "vip": h.vip.to_string(),
                "backend": h.backend.to_string(),
                "target": h.target.to_string(),
                "state": h.state.to_string(),
                "pending": h.pending,
                "checks": h.checks,
                "failed_checks": h.failed_checks,
                "went_down": h.went_down,
                "came_up": h.came_up,
                "drained_from": h.drained_from,
                "last_error": h.last_error,
            })
        })
        .collect();
    // Written aside and renamed: a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({ "backends": backends }).to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing the health state file {}: {e}", path.display()))?;
    Ok(())
}

/// The drained backends of a state file (none if it does not exist).
fn read_health_state(path: &std::path::Path) -> Result<Vec<(Vip, BackendAddr, u32)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading the health state file {}: {e}", path.display()).into()),
    };
    let bad = |what: &str| format!("the health state file {} {what}: remove it to start afresh", path.display());
    let state: Value = serde_json::from_str(&text).map_err(|e| bad(&format!("is not JSON ({e})")))?;
    let mut drained = Vec::new();
    for b in state["backends"].as_array().ok_or_else(|| bad("has no \"backends\" list"))? {
        let Some(weight) = b["drained_from"].as_u64() else { continue };
        let vip: Vip =
            b["vip"].as_str().unwrap_or_default().parse().map_err(|e| bad(&format!("has a bad VIP: {e}")))?;
        let backend: BackendAddr =
            b["backend"].as_str().unwrap_or_default().parse().map_err(|e| bad(&format!("has a bad backend: {e}")))?;
        let weight = u32::try_from(weight).map_err(|_| bad("has a weight out of range"))?;
        drained.push((vip, backend, weight));
    }
    Ok(drained)
}

/// A backend with its counters and next hop (`backend list`, `stats`).
fn backend_json(b: &BackendStats) -> Value {
    json!({
        "backend": b.backend.addr.to_string(),
        "weight": b.backend.weight,
        "state": b.backend.state().to_string(),
        "packets": b.traffic.packets,
        "bytes": b.traffic.bytes,
        "neighbour": next_hop_json(b),
    })
}

/// A backend's next hop and its neighbour state, with the packets that found
/// it unresolved.
fn next_hop_json(b: &BackendStats) -> Value {
    json!({
        "state": b.next_hop.state.to_string(),
        "via": b.next_hop.via.map(|a| a.to_string()),
        "ifindex": b.next_hop.ifindex,
        "no_neighbour": common::counter_json(b.no_neighbour),
    })
}

fn next_hop_text(b: &BackendStats) -> String {
    let via = b.next_hop.via.map(|a| format!(" via {a} (ifindex {})", b.next_hop.ifindex)).unwrap_or_default();
    format!("neighbour {}{via}, {} pkts unresolved", b.next_hop.state, b.no_neighbour.packets)
}
