//! `xdpguard`: manage a pinned XDP filter from the command line.
//!
//! Every command works on a filter pinned in bpffs, so a filter attached by
//! one invocation keeps running after it exits and any later invocation can
//! edit its lists or read its counters. Built on the public API only.
//! Installed with `cargo install xdpguard --features cli` (from a checkout:
//! `cargo install --path . --features cli`); shares `common/` with
//! `xdpguard-lb`.
//!
//! ```text
//! xdpguard attach --iface eth0 [--iface eth1] [--mode native|generic|offload|auto] [--pin DIR] [--netns NAME]
//!                  (on a DIR holding a filter already: attaches that one, lists kept)
//! xdpguard block 192.0.2.0/24 198.51.100.7      xdpguard unblock 192.0.2.0/24
//! xdpguard block --file list.txt [--replace]    xdpguard allow / disallow ...
//! xdpguard block --force 0.0.0.0/0             (a whole family: refused without --force)
//! xdpguard list [--allow] [--json]              xdpguard stats [--json] [--watch SECS] [--reset]
//! xdpguard check 192.0.2.9                       xdpguard status [--json]
//! xdpguard rule add drop udp sport 53 not from set resolvers
//! xdpguard rule add --at 0 pass tcp dport 22 from 198.51.100.0/24
//! xdpguard rule del 3 [4 ...]                    xdpguard rule list [--json]
//! xdpguard rule replace --file rules.txt        xdpguard rule add --file more.txt
//! xdpguard rule monitor 3 [--off]               xdpguard rule clear
//! xdpguard set create resolvers                 xdpguard set delete resolvers
//! xdpguard set add resolvers 192.0.2.53 [--file F] [--replace]
//! xdpguard set del resolvers 192.0.2.53         xdpguard set list [NAME] [--json]
//! xdpguard monitor on|off                       (the whole filter: count, drop nothing)
//! xdpguard events [--json] [--count N] [--rate N/s]   (sampled drop events)
//! xdpguard capture -w drops.pcap --count N [--timeout S]   xdpguard top [--interval S]
//! xdpguard detach                               xdpguard upgrade   (a newer build takes over)
//! xdpguard metrics [--listen 127.0.0.1:9435] --filter PIN --lb PIN --decap PIN   (repeatable; a Prometheus exporter)
//! xdpguard apply --config /etc/xdpguard/xdpguard.toml [--dry-run [--exit-code]] [--recreate]
//! xdpguard down --config /etc/xdpguard/xdpguard.toml [--dry-run [--exit-code]]
//! ```
//!
//! `apply` and `down` manage every program a configuration file describes
//! (filters, load balancers, decapsulators: see `xdpguard::config`).

mod common;
// This tool's own modules, beside it in xdpguard/ (a crate root's modules
// are looked up beside it, among the other tools' files, otherwise).
#[path = "xdpguard/events.rs"]
mod events;
#[path = "xdpguard/metrics.rs"]
mod metrics;
#[path = "xdpguard/progress.rs"]
mod progress;
#[path = "xdpguard/syn.rs"]
mod syn;
#[path = "xdpguard/timed.rs"]
mod timed;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use common::Result;
use serde_json::json;
use xdpguard::config::{Config, Plan, PlanOptions};
use xdpguard::{
    Filter, FilterStats, IpNetwork, ListError, ListKind, MalformedPolicy, PrefixList, Rule, RuleId, Verdict,
};

const DEFAULT_PIN: &str = "/sys/fs/bpf/xdpguard";

#[derive(Parser)]
#[command(name = "xdpguard", version, about = "Manage a pinned xdpguard XDP filter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Pin {
    /// The filter's bpffs pin directory.
    #[arg(long, default_value = DEFAULT_PIN)]
    pin: PathBuf,
}

#[derive(Args)]
struct Edit {
    #[command(flatten)]
    pin: Pin,
    /// Entries: CIDR prefixes or addresses (192.0.2.0/24, 2001:db8::/48, 198.51.100.7).
    cidrs: Vec<String>,
    /// Read entries from a file: one per line, `#` and `;` comments. All or nothing.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Args)]
struct Add {
    #[command(flatten)]
    edit: Edit,
    /// Replace the whole list with the given entries, atomically.
    #[arg(long)]
    replace: bool,
}

#[derive(Args)]
struct BlockArgs {
    #[command(flatten)]
    add: Add,
    /// Block even an entry that covers a whole address family (0.0.0.0/0,
    /// ::/0): every packet of that family from a source that is not
    /// allowlisted is dropped, your own SSH session included.
    #[arg(long)]
    force: bool,
    /// Block for this long only (`30s`, `10m`, `2h`; 1 s to 365 days): a
    /// timed block, checked by the guard stage after the lists; it stops
    /// matching when it expires, with no daemon running.
    #[arg(long, value_parser = timed::ttl_value, conflicts_with = "replace")]
    ttl: Option<Duration>,
}

#[derive(Subcommand)]
enum Command {
    /// Load the filter, attach it to interfaces and pin it. When the pin
    /// directory already holds a filter (its interface was deleted and made
    /// again, say), attach that one, lists kept.
    Attach {
        #[command(flatten)]
        target: common::Target,
        #[command(flatten)]
        pin: Pin,
        /// Maximum IPv4 entries [default: 1048576]. Also sizes the host table
        /// (about 1.25 slots per entry), where a /32 takes one slot and a
        /// /25-/31 one per address it covers (a lone /25: 128): for many
        /// /25-/31s give at least 0.8 x the slots they need (`status` shows
        /// the use).
        #[arg(long)]
        v4_capacity: Option<usize>,
        /// Maximum IPv6 entries [default: 262144].
        #[arg(long)]
        v6_capacity: Option<usize>,
        /// Drop malformed packets instead of passing them.
        #[arg(long)]
        drop_malformed: bool,
        #[command(flatten)]
        guard: GuardCapacities,
    },
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
    /// Take over a filter pinned by another (older) xdpguard: its lists and
    /// counters stay, its program is swapped for this build's on every
    /// interface at once, without a packet going unfiltered.
    Upgrade {
        #[command(flatten)]
        pin: Pin,
    },
    /// Add entries to the blocklist.
    Block(BlockArgs),
    /// Remove entries from the blocklist.
    Unblock(Edit),
    /// Add entries to the allowlist (checked before the blocklist).
    Allow(Add),
    /// Remove entries from the allowlist.
    Disallow(Edit),
    /// Show a list's entries.
    List {
        #[command(flatten)]
        pin: Pin,
        /// Show the allowlist instead of the blocklist.
        #[arg(long)]
        allow: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show counters.
    Stats {
        #[command(flatten)]
        pin: Pin,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Repeat every SECS seconds (1 or more), showing rates. A filter
        /// re-created under the pin directory is reopened (said on
        /// stderr); with none there for 10 s, it stops with an error.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Reset the reason counters after reading them (the rules' and
        /// the SYN guard's per-port counters are kept).
        #[arg(long)]
        reset: bool,
    },
    /// Say what the filter does with packets from an address, and why.
    Check {
        #[command(flatten)]
        pin: Pin,
        /// A source address.
        addr: IpAddr,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Rules beyond the source address: protocol, ports, TCP flags, ICMP
    /// types, destination, named sets. Checked in order after the lists.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Named sets of prefixes that rules name (`from set NAME`).
    #[command(subcommand)]
    Set(SetCommand),
    /// The SYN-flood guard: protect TCP ports (SYN cookies from XDP, or a
    /// SYN rate threshold), its counters, the nftables rules it needs.
    #[command(subcommand)]
    Syn(syn::SynCommand),
    /// Pass what the filter passes on to a pinned load balancer (its pin
    /// directory), or stop (`none`): the LB then serves behind the filter,
    /// on the filter's interfaces. Live, for the next packet.
    Next {
        #[command(flatten)]
        pin: Pin,
        /// The load balancer's pin directory (`/sys/fs/bpf/xdpguard-lb`), or `none`.
        #[arg(value_name = "LB_PIN|none")]
        to: String,
    },
    /// Monitor (dry-run) mode for the whole filter: what the blocklist and
    /// drop rules match is counted as "would drop" and passed.
    Monitor {
        #[command(flatten)]
        pin: Pin,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Tail sampled drop events (text, or --json one object per line).
    Events(events::EventsArgs),
    /// Write sampled dropped packets (their first 128 bytes) to a pcap file.
    Capture(events::CaptureArgs),
    /// Rate-limited drops and the busiest rules (exact), and sources and blocklist entries (sampled), per
    /// interval.
    Top(events::TopArgs),
    /// Show interfaces, list sizes, capacities and memory.
    Status {
        #[command(flatten)]
        pin: Pin,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Serve the counters of pinned filters, load balancers and
    /// decapsulators to Prometheus over HTTP (OpenMetrics or text format),
    /// read at each scrape, until killed.
    Metrics(metrics::MetricsArgs),
    /// Make the running filters, load balancers and decapsulators match a
    /// configuration file, changing only what differs; prints each change.
    Apply {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: exit status 2 when the plan has changes (the
        /// host differs from the file), 0 when it has none, 1 on an error.
        #[arg(long, requires = "dry_run")]
        exit_code: bool,
        /// Re-create a program whose fixed settings (capacities, hash seed)
        /// differ from the file's (drops its connections and counters).
        #[arg(long)]
        recreate: bool,
        /// Check the file alone (syntax, values, list files), not the host:
        /// no root, no namespaces or interfaces needed (a configuration
        /// repository's CI). Changes nothing.
        #[arg(long, conflicts_with_all = ["dry_run", "recreate"])]
        validate: bool,
    },
    /// Detach every program a configuration file describes and remove its pins.
    Down {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: exit status 2 when something would be removed,
        /// 0 when nothing would, 1 on an error.
        #[arg(long, requires = "dry_run")]
        exit_code: bool,
    },
}

/// Rule text, e.g. `drop udp sport 53 not from set resolvers`:
///
/// `[monitor] drop|pass|count [ipv4|ipv6] [tcp|udp|icmp|icmpv6|proto N]
/// [[not] fragment] [[not] from PREFIX|set NAME] [[not] to PREFIX] [sport PORTS] [dport PORTS]
/// [flags VALUE[/MASK]] [type TYPES]`
#[derive(Subcommand)]
enum RuleCommand {
    /// Add a rule (after the others, or at --at), or every rule of a file.
    ///
    /// A rate limit's `block DURATION` blocks the source (as the packets
    /// claim it: nothing checks it) from ALL traffic, every port and
    /// protocol: forged SYNs, UDP or ICMP from this host's resolver or
    /// gateway cut it off. Keep `block` off handshake-less traffic (a
    /// warning says when a rule has it) and allowlist what must stay
    /// reachable; SYN floods: `xdpguard syn protect`.
    Add {
        #[command(flatten)]
        pin: Pin,
        /// Position in the priority order (0: first). Default: last.
        #[arg(long)]
        at: Option<usize>,
        /// Read rules from a file (one per line, `#` comments); all or nothing.
        #[arg(long, conflicts_with = "rule")]
        file: Option<PathBuf>,
        /// The rule, as words (`drop udp dport 1900,11211`); options may
        /// come before or after them.
        rule: Vec<String>,
        /// Allow a drop rule that matches every TCP packet (of a version, or
        /// of both) from any source: your own SSH session included.
        #[arg(long)]
        force: bool,
    },
    /// Remove rules by id (the ids `rule list` shows).
    Del {
        #[command(flatten)]
        pin: Pin,
        /// Rule ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show the rules in priority order, with their ids and counters.
    List {
        #[command(flatten)]
        pin: Pin,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replace the whole rule set with a file's rules, atomically (a bad
    /// line is reported with its number and nothing is applied).
    Replace {
        #[command(flatten)]
        pin: Pin,
        /// The rule file (`-`: standard input).
        #[arg(long)]
        file: PathBuf,
        /// Allow a drop rule that matches every TCP packet from any source.
        #[arg(long)]
        force: bool,
    },
    /// Put a rule in monitor mode (it counts and decides nothing), or out.
    Monitor {
        #[command(flatten)]
        pin: Pin,
        /// The rule's id.
        id: String,
        /// Take it out of monitor mode.
        #[arg(long)]
        off: bool,
    },
    /// Remove every rule.
    Clear {
        #[command(flatten)]
        pin: Pin,
    },
}

#[derive(Subcommand)]
enum SetCommand {
    /// Create an empty set.
    Create {
        #[command(flatten)]
        pin: Pin,
        /// Its name (letters, digits, `-`, `_`, `.`).
        name: String,
    },
    /// Delete a set no rule names.
    Delete {
        #[command(flatten)]
        pin: Pin,
        /// Its name.
        name: String,
    },
    /// Add prefixes to a set (atomically), or replace its contents.
    Add {
        /// The set.
        set: String,
        #[command(flatten)]
        edit: Edit,
        /// Replace the whole set with the given entries, atomically.
        #[arg(long)]
        replace: bool,
        /// Add even an entry that covers a whole address family (0.0.0.0/0,
        /// ::/0, ::ffff:0:0/96): a drop rule naming the set then drops every
        /// packet of that family from a source that is not allowlisted,
        /// your own SSH session included.
        #[arg(long)]
        force: bool,
    },
    /// Remove prefixes from a set.
    Del {
        /// The set.
        set: String,
        #[command(flatten)]
        edit: Edit,
    },
    /// Show the sets (or one set's prefixes).
    List {
        #[command(flatten)]
        pin: Pin,
        /// Only this set.
        name: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    common::default_sigpipe();
    match Cli::parse().command {
        Command::Apply { config, recreate, exit_code: true, .. } => drift(config_plan(&config, false, recreate)),
        Command::Down { config, exit_code: true, .. } => drift(config_plan(&config, true, false)),
        command => common::exit_code(run(command)),
    }
}

/// `apply` / `down --dry-run --exit-code`: the plan printed, and the exit
/// status 2 when it has changes (0 when none, 1 on an error), so a fleet's
/// drift check can tell "differs" from "failed".
fn drift(plan: Result<(Plan, nix::fcntl::Flock<std::fs::File>)>) -> ExitCode {
    match plan.and_then(|(plan, _turn)| run_plan(&plan, true).map(|()| plan.is_empty())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => common::exit_code(Err(e)),
    }
}

/// A `FilterBuilder` method that sets one capacity.
type BuilderSetter = fn(xdpguard::FilterBuilder, usize) -> xdpguard::FilterBuilder;

/// The guard stage's capacities, fixed when the filter is loaded (the
/// `FilterBuilder` methods of the same names).
#[derive(clap::Args, Debug, Default)]
struct GuardCapacities {
    /// Maximum rules (see `xdpguard rule`) [default: 4096].
    #[arg(long)]
    max_rules: Option<usize>,
    /// Maximum compiled rule records [default: 2 per rule].
    #[arg(long)]
    max_rule_records: Option<usize>,
    /// Maximum entries of the rule index's groups [default: 16 per rule].
    #[arg(long)]
    max_rule_refs: Option<usize>,
    /// Maximum prefixes in all named sets together [default: 65536].
    #[arg(long)]
    max_set_entries: Option<usize>,
    /// Maximum timed blocks, user-added and auto-blocks [default: 65536].
    #[arg(long)]
    max_timed_blocks: Option<usize>,
    /// Maximum exact buckets of the rate limiter: keys the sketch found
    /// heavy, least recently used evicted [default: 65536].
    #[arg(long)]
    max_limit_buckets: Option<usize>,
}

impl GuardCapacities {
    /// Each option with the builder method it sets, in the order of
    /// `RuleCapacities::named` (the arrays' lengths keep the two in step).
    fn options(&self) -> [(BuilderSetter, Option<usize>); 6] {
        use xdpguard::FilterBuilder as B;
        [
            (B::max_rules, self.max_rules),
            (B::max_rule_records, self.max_rule_records),
            (B::max_rule_refs, self.max_rule_refs),
            (B::max_set_entries, self.max_set_entries),
            (B::max_timed_blocks, self.max_timed_blocks),
            (B::max_limit_buckets, self.max_limit_buckets),
        ]
    }

    /// `b` with the options given.
    fn apply(&self, b: xdpguard::FilterBuilder) -> xdpguard::FilterBuilder {
        self.options().into_iter().fold(b, |b, (set, value)| match value {
            Some(n) => set(b, n),
            None => b,
        })
    }

    /// Where the options given differ from the rule stage of `filter` (a
    /// pinned one), as `--option N (it has M)`; all of them when it has no
    /// rule stage.
    fn differing(&self, filter: &Filter) -> Vec<String> {
        let given = self.options().map(|(_, value)| value);
        // What a new filter would get from these options (the rule index
        // rounded as it is stored), beside what the pinned one has.
        let wanted: [(&str, usize); 6] = self.apply(Filter::builder()).rule_capacities().named();
        let pinned: Option<[(&str, usize); 6]> = filter.rule_capacities().map(|p| p.named());
        given
            .into_iter()
            .zip(wanted)
            .enumerate()
            .filter_map(|(i, (value, (name, want)))| {
                let value = value?;
                let option = format!("--{}", name.replace('_', "-"));
                match pinned {
                    Some(p) if p[i].1 == want => None,
                    Some(p) => Some(format!("{option} {value} (it has {})", p[i].1)),
                    None => Some(format!("{option} {value} (it has no rule stage)")),
                }
            })
            .collect()
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Attach { target, pin, v4_capacity, v6_capacity, drop_malformed, guard } => {
            target.enter_netns()?;
            if let Some(filter) = common::pinned_there(&pin.pin, || Filter::open_pinned(&pin.pin))? {
                return reattach(filter, &target, &pin.pin, v4_capacity, v6_capacity, drop_malformed, &guard);
            }
            let b = Filter::builder()
                .mode(target.mode)
                .pin(&pin.pin)
                .v4_capacity(v4_capacity.unwrap_or(xdpguard::DEFAULT_V4_CAPACITY))
                .v6_capacity(v6_capacity.unwrap_or(xdpguard::DEFAULT_V6_CAPACITY))
                .malformed(if drop_malformed { MalformedPolicy::Drop } else { MalformedPolicy::Pass });
            let mut b = guard.apply(b);
            for i in &target.ifaces {
                b = b.interface(i.as_str());
            }
            let filter = match b.attach() {
                // Another `attach` pinned a filter there since the look
                // above (two started at once): that one is attached here.
                Err(xdpguard::Error::Pin(xdpguard::PinError::InUse { .. })) => {
                    let filter = Filter::open_pinned(&pin.pin)?;
                    return reattach(filter, &target, &pin.pin, v4_capacity, v6_capacity, drop_malformed, &guard);
                }
                attached => attached?,
            };
            common::print_attached(&filter.attachments(), &pin.pin);
        }
        Command::Detach { pin, ifaces } if !ifaces.is_empty() => {
            let filter = Filter::open_pinned(&pin.pin)?;
            common::detach_some(&ifaces, |i| filter.detach(i), &pin.pin)?;
        }
        Command::Detach { pin, ifaces: _ } => {
            let Some(filter) = common::reopen(&pin.pin, Filter::open_pinned(&pin.pin))? else {
                return Ok(Filter::remove_interrupted(&pin.pin)?);
            };
            let attachments = filter.attachments();
            filter.unpin()?;
            common::print_detached(&attachments, &pin.pin);
        }
        Command::Upgrade { pin } => {
            let (_, report) = Filter::upgrade_pinned(&pin.pin)?;
            common::print_upgraded("filter", &report, &pin.pin);
        }
        Command::Block(b) if b.ttl.is_some() => {
            let given = gather(&b.add.edit)?;
            let filter = Filter::open_pinned(&b.add.edit.pin.pin)?;
            let nets: Vec<IpNetwork> = given.iter().map(|g| g.net).collect();
            let stored: Vec<(IpNetwork, IpNetwork)> =
                nets.iter().map(|n| (*n, xdpguard::normalize(*n).network)).filter(|(g, s)| g != s).collect();
            note_normalized(&stored);
            match timed::block(&filter, &nets, b.ttl.unwrap_or_default(), b.force) {
                Err(xdpguard::RuleError::WholeFamily { entry }) => {
                    return Err(whole_family_refused(&filter, entry, &given).into())
                }
                other => other?,
            }
        }
        Command::Block(b) => add_entries(ListKind::Block, b.add, b.force)?,
        Command::Allow(add) => add_entries(ListKind::Allow, add, false)?,
        Command::Unblock(edit) => remove_entries(ListKind::Block, edit)?,
        Command::Disallow(edit) => remove_entries(ListKind::Allow, edit)?,
        Command::List { pin, allow, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let list = if allow { filter.allowlist() } else { filter.blocklist() };
            let entries: Vec<IpNetwork> = list.iter()?.collect();
            let timed = if allow { Vec::new() } else { timed::list(&filter)? };
            if json {
                let items: Vec<String> = entries.iter().map(|n| n.to_string()).collect();
                let timed: Vec<_> = timed.iter().map(timed::to_json).collect();
                println!("{}", json!({ "list": list.kind().to_string(), "entries": items, "timed": timed }));
            } else {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    writeln!(out, "{e}")?;
                }
                for b in &timed {
                    writeln!(out, "{}", timed::to_line(b))?;
                }
                eprintln!("{} entries in the {}, {} timed blocks", entries.len(), list.kind(), timed.len());
            }
        }
        Command::Stats { pin, json, watch, reset } => {
            let mut filter = Filter::open_pinned(&pin.pin)?;
            let mut previous: Option<(FilterStats, Instant)> = None;
            loop {
                if filter.replaced() {
                    // The old handle would show the orphaned program's
                    // counters, frozen, for ever.
                    filter = reopen_replaced(&pin.pin)?;
                    previous = None;
                }
                let now = filter.stats()?;
                let taken = Instant::now();
                let rates = previous.map(|(p, t)| (now.since(&p), taken.duration_since(t)));
                print_stats(&now, rates, json);
                if reset {
                    // What was shown is taken off; what was counted while
                    // it was shown stays for the next read (a zeroing
                    // would lose it).
                    filter.subtract_stats(&now)?;
                }
                let Some(secs) = watch else { break };
                // Reset, the counters start again from zero: the next rates
                // are over what they count then.
                previous = Some((if reset { FilterStats::default() } else { now }, taken));
                std::thread::sleep(Duration::from_secs(secs.max(1)));
            }
        }
        Command::Check { pin, addr, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            // Entries given as ::ffff:a.b.c.d are stored as a.b.c.d, and the
            // packets they are about are IPv4 packets.
            let addr = match addr {
                IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                    let v4 = addr.to_canonical();
                    eprintln!("note: {addr} is IPv4-mapped: checking {v4} (its packets are IPv4 packets)");
                    v4
                }
                _ => addr,
            };
            // The lists, then the timed blocks (the guard checks them next,
            // by source alone), then the rules: one whose conditions are all
            // on the source decides; one that also looks at protocols or
            // ports (which an address does not have) may decide first for
            // some packets, and is named.
            let verdict = filter.verdict(addr)?;
            let timed = match verdict {
                Verdict::Pass => timed::list(&filter)?.into_iter().find(|b| b.prefix.contains(addr)),
                _ => None,
            };
            // An allowlisted source skips the rules (and the SYN guard).
            let allowed = matches!(verdict, Verdict::Allow(_));
            let walk = match (verdict, &timed) {
                (Verdict::Pass, None) => match filter.rules().matching_source(addr) {
                    Ok(entries) => SourceRules::walk(entries),
                    Err(xdpguard::RuleError::NoGuard { .. }) => SourceRules::default(),
                    Err(e) => return Err(e.into()),
                },
                _ => SourceRules::default(),
            };
            let (mut action, mut reason) = match (verdict, timed) {
                (Verdict::Pass, Some(b)) => {
                    ("drop", format!("timed block {}, expires in {}", b.prefix, timed::left(&b)))
                }
                (Verdict::Pass, None) => walk.verdict(),
                (Verdict::Allow(n), _) => ("pass", format!("allowlisted by {n}")),
                (Verdict::Block(n), _) => ("drop", format!("blocklisted by {n}")),
            };
            if action == "drop" && filter.monitor() {
                (action, reason) = ("pass", format!("{reason}; monitor mode: counted as would-drop, passed"));
            }
            let rules = if allowed { 0 } else { filter.rules().list().map(|l| l.len()).unwrap_or(0) };
            if json {
                let ids = |v: &[xdpguard::RuleEntry]| v.iter().map(|e| e.id.get()).collect::<Vec<_>>();
                println!(
                    "{}",
                    json!({
                        "address": addr.to_string(), "action": action, "reason": reason, "rules": rules,
                        "rule": walk.decided.as_ref().map(|e| e.id.get()),
                        "rate_limited_by": ids(&walk.limited), "may_decide": ids(&walk.may_decide),
                    })
                );
            } else {
                println!("{addr}: {action} ({reason})");
                for e in &walk.may_decide {
                    println!("  rule {} may decide first for some of its packets: {}", e.id, e.rule);
                }
                if allowed {
                    println!("  allowlisted: no rule, rate limit or SYN guard sees its packets");
                }
            }
        }
        Command::Rule(cmd) => {
            let pin = match &cmd {
                RuleCommand::Add { pin, .. }
                | RuleCommand::Del { pin, .. }
                | RuleCommand::List { pin, .. }
                | RuleCommand::Replace { pin, .. }
                | RuleCommand::Monitor { pin, .. }
                | RuleCommand::Clear { pin } => pin.pin.clone(),
            };
            rule_command(cmd).map_err(|e| in_filter(e, &pin))?
        }
        Command::Set(cmd) => {
            let pin = match &cmd {
                SetCommand::Create { pin, .. } | SetCommand::Delete { pin, .. } | SetCommand::List { pin, .. } => {
                    pin.pin.clone()
                }
                SetCommand::Add { edit, .. } | SetCommand::Del { edit, .. } => edit.pin.pin.clone(),
            };
            set_command(cmd).map_err(|e| in_filter(e, &pin))?
        }
        Command::Syn(cmd) => syn::run(cmd)?,
        Command::Next { pin, to } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            if to == "none" {
                let had = filter.next_program()?;
                filter.clear_next()?;
                match had {
                    Some(id) => println!("the filter passes nothing on now (it passed packets to program {id})"),
                    None => println!("the filter passed nothing on; nothing changed"),
                }
            } else {
                let lb = xdpguard::LoadBalancer::open_pinned(&to)?;
                filter.set_next(lb.program_fd())?;
                println!(
                    "the filter passes what it passes on to the load balancer pinned at {to} (program {}); \
                     `xdpguard next none --pin {}` stops it",
                    lb.program_id()?,
                    pin.pin.display()
                );
            }
        }
        Command::Monitor { pin, state } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            filter.set_monitor(state == "on");
            println!(
                "monitor mode {state}: {}",
                if state == "on" {
                    "nothing is dropped; what would be is counted (stats: would_drop_*)"
                } else {
                    "drops are enforced"
                }
            );
        }
        Command::Status { pin, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let (v4_cap, v6_cap) = filter.capacity();
            let (hosts_used, hosts_cap) = filter.v4_host_slots()?;
            let blocked = filter.blocklist().len()?;
            let allowed = filter.allowlist().len()?;
            let rules = filter.rules().len().ok();
            let sets = filter.sets().names().ok();
            let monitor = filter.monitor();
            let memory = filter.map_memory_bytes();
            let attachments = filter.attachments();
            let lost = filter.lost_attachments();
            let rule_caps = filter.rule_capacities();
            let next = filter.next_program()?;
            if json {
                let rule_caps_json = rule_caps.map(|c| {
                    c.named()
                        .into_iter()
                        .map(|(name, v)| (name.to_string(), json!(v)))
                        .collect::<serde_json::Map<_, _>>()
                });
                let ifs: Vec<_> = attachments.iter().map(common::attachment_json).collect();
                println!(
                    "{}",
                    json!({
                        "pin": pin.pin.display().to_string(),
                        "attachments": ifs,
                        "lost_attachments": lost.iter().map(common::attachment_json).collect::<Vec<_>>(),
                        "blocklist_entries": blocked,
                        "allowlist_entries": allowed,
                        "v4_capacity": v4_cap,
                        "v6_capacity": v6_cap,
                        "v4_host_slots": { "used": hosts_used, "capacity": hosts_cap },
                        "rule_capacities": rule_caps_json,
                        "timed_blocks": filter.timed_blocks().list().ok().map(|t| t.len()),
                        "limiter": filter.limiter_stats().ok().map(|l| json!({
                            "buckets": l.buckets, "buckets_made": l.buckets_made, "blocks_failed": l.blocks_failed,
                            "promote_capped": l.promote_capped, "sketch_over": l.sketch_over, "expired": l.expired,
                        })),
                        "map_memory_bytes": memory,
                        "malformed_policy": filter.malformed_policy().to_string(),
                        "rules": rules,
                        "sets": sets,
                        "monitor": monitor,
                        "next_program": next,
                    })
                );
            } else {
                println!("pin:        {}", pin.pin.display());
                for a in &attachments {
                    println!("attached:   {}", common::attachment_text(a));
                }
                common::print_lost(&lost, 12, "xdpguard", &pin.pin);
                if attachments.is_empty() && lost.is_empty() {
                    println!(
                        "attached:   nowhere (detached, or its interfaces are gone); attach it again, lists kept: \
                         `xdpguard attach --iface IF --pin {}` (with `--netns NAME` for an interface in a named \
                         network namespace)",
                        pin.pin.display()
                    );
                }
                println!("blocklist:  {blocked} entries");
                println!("allowlist:  {allowed} entries");
                println!("capacity:   {v4_cap} IPv4, {v6_cap} IPv6 entries");
                println!(
                    "v4 hosts:   {hosts_used} of {hosts_cap} host slots (a /32 takes one, a /25-/31 one per address \
                     it covers)"
                );
                if let Some(c) = rule_caps {
                    println!(
                        "rule stage: {} rules, {} records, {} index entries, {} set entries, {} timed blocks, {} limiter \
                         buckets at most",
                        c.max_rules,
                        c.max_rule_records,
                        c.max_rule_refs,
                        c.max_set_entries,
                        c.max_timed_blocks,
                        c.max_limit_buckets
                    );
                }
                println!("memory:     {}", common::memory_text(memory));
                println!("malformed:  {}", filter.malformed_policy());
                match (rules, sets) {
                    (Some(r), Some(s)) => println!("rules:      {r} rules, {} named sets", s.len()),
                    _ => println!("rules:      none (loaded without the guard stage)"),
                }
                if let (Some(c), Ok(timed), Ok(l)) = (rule_caps, filter.timed_blocks().list(), filter.limiter_stats()) {
                    println!(
                        "timed:      {} of {} timed blocks; {} limiter buckets of {}",
                        timed.len(),
                        c.max_timed_blocks,
                        l.buckets,
                        c.max_limit_buckets
                    );
                    if l.blocks_failed > 0 {
                        println!(
                            "warning:    {} auto-block attempts failed (packets over a blocking rule's limit found \
                             the timed-block table full; they were still limited). Expired blocks hold their \
                             slots until listed or edited (this status reclaimed them): run `xdpguard list` or \
                             scrape the metrics from a timer; attach with a larger --max-timed-blocks (or \
                             shorten the rules' `block`)",
                            l.blocks_failed
                        );
                    }
                    if l.promote_capped > 0 {
                        println!(
                            "note:       {} heavy keys got no exact bucket (the per-window cap was reached; {} of \
                             them judged over the limit by the sketch): --max-limit-buckets",
                            l.promote_capped, l.sketch_over
                        );
                    }
                }
                println!("monitor:    {}", if monitor { "on (nothing is dropped)" } else { "off" });
                // The LB's pin directory: under /sys/fs/bpf, or beside the
                // filter's (a bpffs mounted elsewhere).
                let near: Vec<&Path> = pin.pin.parent().into_iter().collect();
                match next {
                    Some(id) => match xdpguard::LoadBalancer::pin_of_program(id, &near) {
                        Some(lb) => println!(
                            "next:       the load balancer pinned at {} (program {id}; gets what the filter passes; \
                             `xdpguard next none --pin {}` stops it)",
                            lb.display(),
                            pin.pin.display()
                        ),
                        None => println!(
                            "next:       program {id} (gets what the filter passes; `xdpguard next none --pin {}` \
                             stops it)",
                            pin.pin.display()
                        ),
                    },
                    None => println!("next:       none (what the filter passes goes to the kernel)"),
                }
            }
        }
        Command::Metrics(args) => metrics::serve(args)?,
        Command::Events(args) => events::events(args)?,
        Command::Capture(args) => events::capture(args)?,
        Command::Top(args) => events::top(args)?,
        Command::Apply { config, validate: true, .. } => {
            let c = Config::from_file(&config)?;
            warn_config_blocks(&c);
            let vips: usize = c.lbs.iter().map(|l| l.vips.len()).sum();
            println!(
                "{}: valid ({} filter(s), {} load balancer(s) with {vips} VIP(s), {} decapsulator(s)); the host is \
                 checked by `apply --dry-run`",
                config.display(),
                c.filters.len(),
                c.lbs.len(),
                c.decaps.len()
            );
        }
        Command::Apply { config, dry_run, recreate, .. } => {
            let (plan, _turn) = config_plan(&config, false, recreate)?;
            run_plan(&plan, dry_run)?;
        }
        Command::Down { config, dry_run, .. } => {
            let (plan, _turn) = config_plan(&config, true, false)?;
            run_plan(&plan, dry_run)?;
        }
    }
    Ok(())
}

/// The plan of `apply` (or of `down`) for a configuration file, made under
/// the host's apply lock, returned held.
fn config_plan(path: &Path, down: bool, recreate: bool) -> Result<(Plan, nix::fcntl::Flock<std::fs::File>)> {
    let turn = config_turn(path, if down { "taking down" } else { "applying" })?;
    let plan = if down {
        // Only each section's pin and namespace are read: a file that no
        // longer checks otherwise still takes its programs down.
        Config::plan_down_file(path)?
    } else {
        let c = Config::from_file(path)?;
        warn_config_blocks(&c);
        c.plan_with(PlanOptions::default().recreate(recreate))?
    };
    Ok((plan, turn))
}

/// The host's apply lock (`flock` on `/run/lock/xdpguard-apply.lock`),
/// held until dropped: `apply` and `down` runs on one host take turns (a
/// `systemctl reload` during a manual apply; a file renamed over the one
/// being applied; two files naming the same pins), the second planning from
/// what the first made instead of both creating the same programs. A lock
/// on the file itself would not hold across a rename. `path` is named in
/// the messages.
fn config_turn(path: &Path, doing: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let dir =
        ["/run/lock", "/run", "/tmp"].into_iter().map(Path::new).find(|d| d.is_dir()).unwrap_or(Path::new("/tmp"));
    let lock_path = dir.join("xdpguard-apply.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "opening the apply lock {}: {e}: {doing} a configuration needs root (CAP_BPF and CAP_NET_ADMIN \
                 for the programs, and this lock); run it as root, or check the file alone, unprivileged, with \
                 `xdpguard apply --validate --config {}`",
                lock_path.display(),
                path.display()
            ),
            _ => format!("opening the apply lock {}: {e}", lock_path.display()),
        }
    })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            eprintln!(
                "waiting for another apply or down on this host to finish (before {doing} {})...",
                path.display()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| format!("locking {}: {e}", lock_path.display()).into())
        }
        Err((_, e)) => Err(format!("locking {}: {e}", lock_path.display()).into()),
    }
}

/// Prints a plan (`--dry-run`), or applies it printing each change as it
/// is done (so a run that is stopped shows how far it got), then each
/// LB's digest and a summary.
fn run_plan(plan: &Plan, dry_run: bool) -> Result<()> {
    for held in plan.held() {
        println!("note: {held}");
    }
    // Cookie mode answers SYNs itself and leaves the handshake's ACK to
    // nftables synproxy: a port protected so without those rules resets
    // every new connection (the `syn protect` command says so too).
    for step in plan.sections().iter().flat_map(|s| &s.steps) {
        if let xdpguard::config::Step::Protect { port, policy, .. } = step {
            if policy.mode == xdpguard::SynMode::Cookie {
                println!(
                    "note: port {port} in cookie mode needs nftables synproxy on the host, or its new connections \
                     are reset: `xdpguard syn nft-rules --port {port} --apply` (and load those rules at boot: \
                     README, \"systemd and the boot story\")"
                );
            }
        }
    }
    if dry_run {
        if plan.is_empty() {
            println!("no changes");
        } else {
            for l in plan.lines() {
                println!("would {l}");
            }
            println!("{} changes planned (dry run: nothing applied)", plan.len());
        }
        return Ok(());
    }
    let applied = plan.apply_reporting(|line| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })?;
    for (pin, d) in &applied.digests {
        println!("lb {}: digest {} ({} VIPs)", pin.display(), d.overall, d.vips.len());
    }
    match applied.changes.len() {
        0 => println!("no changes"),
        n => println!("applied {n} changes"),
    }
    Ok(())
}

/// `attach` on a pin directory that already holds a filter: attaches that
/// filter to the interfaces given, its lists and counters kept (after an
/// interface was deleted and made again, its link died with it). Settings
/// fixed at load time that differ are refused, not ignored.
fn reattach(
    filter: Filter,
    target: &common::Target,
    dir: &Path,
    v4_capacity: Option<usize>,
    v6_capacity: Option<usize>,
    drop_malformed: bool,
    guard: &GuardCapacities,
) -> Result<()> {
    let differing = guard.differing(&filter);
    if !differing.is_empty() {
        return Err(format!(
            "{}: the capacities of the rule stage of the filter pinned at {} were fixed when it was loaded; \
             attach it with its own or without these options, or detach it (`xdpguard detach --pin {}`, which \
             drops its lists and rules) and attach a new one",
            differing.join(", "),
            dir.display(),
            dir.display()
        )
        .into());
    }
    let (v4, v6) = filter.capacity();
    if v4_capacity.is_some_and(|c| c != v4) || v6_capacity.is_some_and(|c| c != v6) {
        return Err(format!(
            "the filter pinned at {} has capacities {v4} IPv4 and {v6} IPv6 entries, fixed when it was loaded; \
             attach it without --v4-capacity/--v6-capacity, or detach it (`xdpguard detach --pin {}`, which \
             drops its lists) and attach a new one",
            dir.display(),
            dir.display()
        )
        .into());
    }
    let todo = common::still_to_attach(
        dir,
        "filter",
        "xdpguard",
        (&filter.attachments(), filter.program_id()?),
        &target.ifaces,
        target.mode,
    )?;
    // The policy after the attach: a refused attach changes nothing.
    let now = common::attach_all(&todo, |i| filter.attach(i, target.mode), |i| drop(filter.detach(i)))?;
    if drop_malformed {
        filter.set_malformed_policy(MalformedPolicy::Drop);
    }
    common::print_attached(&now, dir);
    println!(
        "reopened the filter pinned there: lists kept ({} blocklist, {} allowlist entries)",
        filter.blocklist().len()?,
        filter.allowlist().len()?
    );
    Ok(())
}

/// An entry to apply, and where it was given when that says more than the
/// entry itself (for messages).
struct Given {
    net: IpNetwork,
    origin: Option<String>,
}

/// Entries from the command line and/or a file, parsed before anything is
/// applied: one bad entry means nothing is applied. None is an error, but
/// for a whole-list replace from a file (`replace`: `Some(true)`; `None`
/// for a command without `--replace`): a feed that became empty empties
/// the list.
fn gather_for(edit: &Edit, replace: Option<bool>) -> Result<Vec<Given>> {
    let mut given = Vec::new();
    for c in &edit.cidrs {
        let net = xdpguard::parse_prefix(c)?;
        let origin =
            (xdpguard::normalize(net).network.to_string() != c.trim()).then(|| format!("given as {}", c.trim()));
        given.push(Given { net, origin });
    }
    if let Some(path) = &edit.file {
        given.extend(read_file(path)?);
    }
    match &edit.file {
        _ if !given.is_empty() => Ok(given),
        Some(_) if replace == Some(true) => Ok(given),
        Some(path) => Err(format!(
            "{} holds no entries: nothing to do{}",
            path.display(),
            if replace.is_some() { " (with --replace, an empty file empties the list)" } else { "" }
        )
        .into()),
        None => Err("no entries given: pass CIDRs or --file FILE".into()),
    }
}

/// [`gather_for`] a command without `--replace`.
fn gather(edit: &Edit) -> Result<Vec<Given>> {
    gather_for(edit, None)
}

/// A list file's entries. Read as bytes: a line that is not UTF-8 text is
/// reported by number with the other bad lines.
fn read_file(path: &Path) -> Result<Vec<Given>> {
    let started = Instant::now();
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let step =
        progress::Step::start(bytes.iter().filter(|b| **b == b'\n').count(), format!("parsing {}", path.display()));
    let lines = xdpguard::parse_list(&bytes, &path.display().to_string())?;
    drop(step);
    if lines.len() >= 100_000 {
        eprintln!("parsed {} entries from {} in {:.2?}", lines.len(), path.display(), started.elapsed());
    }
    for l in lines.iter().filter(|l| l.entry.host_bits_cleared || l.entry.ipv4_mapped).take(5) {
        let why = if l.entry.ipv4_mapped { "IPv4-mapped" } else { "host bits cleared" };
        eprintln!("note: line {}: {why}, stored as {}", l.line, l.entry.network);
    }
    Ok(lines
        .into_iter()
        .map(|l| Given { net: l.entry.network, origin: Some(format!("line {} of {}", l.line, path.display())) })
        .collect())
}

/// The CLI's words for a whole-family entry refused by the library: what
/// it would do here, and the two ways on.
fn whole_family_refused(filter: &Filter, entry: IpNetwork, given: &[Given]) -> String {
    let origin = given
        .iter()
        .find(|g| xdpguard::normalize(g.net).network == entry)
        .and_then(|g| g.origin.as_ref())
        .map(|o| format!(" ({o})"))
        .unwrap_or_default();
    let family = if entry.is_ipv4() { "IPv4" } else { "IPv6" };
    let ifaces: Vec<String> = filter.attachments().into_iter().map(|a| a.interface).collect();
    let on = if ifaces.is_empty() {
        "wherever the filter is attached".to_string()
    } else {
        format!("on {}", ifaces.join(", "))
    };
    format!(
        "refusing to block {entry}{origin}: it would drop every {family} packet from any source {on}, \
         including your own SSH session and the replies to connections this host opens. Nothing was changed. \
         To let only some sources in, allowlist them first (`xdpguard allow ADDR`) and then block {entry} \
         with --force; to block every {family} source anyway, add --force"
    )
}

fn list_of(filter: &Filter, kind: ListKind) -> PrefixList<'_> {
    match kind {
        ListKind::Block => filter.blocklist(),
        ListKind::Allow => filter.allowlist(),
    }
}

fn add_entries(kind: ListKind, add: Add, force: bool) -> Result<()> {
    let given = gather_for(&add.edit, Some(add.replace))?;
    let filter = Filter::open_pinned(&add.edit.pin.pin)?;
    let list = list_of(&filter, kind);
    let list = if force { list.permit_whole_family() } else { list };
    let started = Instant::now();
    let count = given.len();
    if count >= 100_000 {
        eprintln!("applying {count} entries to the {kind} as one atomic step...");
    }
    let nets = given.iter().map(|g| g.net);
    let step = progress::Step::start(count, format!("applying {count} entries to the {kind}"));
    let applied = if add.replace { list.replace(nets) } else { list.extend(nets) };
    drop(step);
    let change = match applied {
        Err(ListError::WholeFamily { entry, .. }) => return Err(whole_family_refused(&filter, entry, &given).into()),
        other => other?,
    };
    note_normalized(&change.normalized);
    if add.replace {
        println!(
            "replaced the {kind}: {} entries now ({} changes) in {:.2?}",
            list.len()?,
            change.changed,
            started.elapsed()
        );
    } else {
        println!(
            "{kind}: added {} of {count} entries ({} already present{}) in {:.2?}",
            change.changed,
            change.unchanged,
            repeats(change.duplicates),
            started.elapsed()
        );
    }
    Ok(())
}

/// A bulk edit's repeats, for its summary: `, 2 given twice` style.
fn repeats(duplicates: usize) -> String {
    match duplicates {
        0 => String::new(),
        1 => ", 1 a repeat of an entry given before".into(),
        n => format!(", {n} repeats of entries given before"),
    }
}

fn remove_entries(kind: ListKind, edit: Edit) -> Result<()> {
    let given = gather(&edit)?;
    let filter = Filter::open_pinned(&edit.pin.pin)?;
    let list = list_of(&filter, kind);
    let count = given.len();
    let nets: Vec<IpNetwork> = given.into_iter().map(|g| g.net).collect();
    let change = list.remove_all(nets.iter().copied())?;
    println!(
        "{kind}: removed {} of {count} entries ({} not present{})",
        change.changed,
        change.unchanged,
        repeats(change.duplicates)
    );
    if kind != ListKind::Block {
        return Ok(());
    }
    let timed = if filter.rules().len().is_ok() {
        let removed = timed::unblock(&filter, &nets)?;
        if removed > 0 {
            println!("timed blocks: removed {removed}");
        }
        timed::list(&filter)?
    } else {
        Vec::new()
    };
    // An entry removed is not a source unblocked when a broader entry (or
    // a timed block) still covers it: say which, and the ways out.
    for net in nets.iter().map(|n| xdpguard::normalize(*n).network) {
        let addr = net.network();
        // Only an entry covering all of it (a narrower one blocks a part).
        let still = match filter.verdict(addr)? {
            Verdict::Block(by) if by.prefix() <= net.prefix() => Some(format!("the blocklist's {by}")),
            Verdict::Block(_) | Verdict::Allow(_) => None,
            Verdict::Pass => timed
                .iter()
                .find(|b| b.prefix.contains(addr) && b.prefix.prefix() <= net.prefix())
                .map(|b| format!("the timed block {} (expires in {})", b.prefix, timed::left(b))),
        };
        if let Some(by) = still {
            println!(
                "note: {net} is still blocked by {by}; to let it in, allow it (`xdpguard allow {net}`: the \
                 allowlist wins) or unblock that entry"
            );
        }
    }
    Ok(())
}

/// Refuses (without `force`) a drop rule that cuts the host off: one that
/// matches every TCP packet of an IP version from any source (the session
/// the host is managed over with it, as `block 0.0.0.0/0` would), however
/// it is written (`from 0.0.0.0/0`, `dport 1-65535`, `not from 192.0.2.1`:
/// all but one source), or every ICMPv6
/// neighbour solicitation or advertisement from any source (without which
/// IPv6 stops on the link). `lines`: each rule's line in its file (empty
/// for rules given on the command line), named in the refusal.
fn refuse_drop_all(rules: &[Rule], lines: &[usize], force: bool) -> Result<()> {
    use xdpguard::{RuleProtocol, Source};
    let line_of = |r: &Rule| {
        let at = rules.iter().position(|x| std::ptr::eq(x, r));
        at.and_then(|i| lines.get(i)).map(|n| format!(" (line {n})")).unwrap_or_default()
    };
    let whole = |p: &IpNetwork| p.prefix() == 0;
    // Port 0 carries no real traffic: 1-65535 is every port (however the
    // ranges are split).
    let every_port = |set: &Option<xdpguard::RangeSet>| {
        set.as_ref().is_none_or(|s| {
            let mut next = 1u32;
            for r in s.ranges() {
                if u32::from(*r.start()) > next {
                    return false;
                }
                next = next.max(u32::from(*r.end()) + 1);
            }
            next > 65535
        })
    };
    // "Not from X" is from anywhere but X: the same lockout unless X is
    // where the session comes from, which only the user can say (--force).
    let from_anywhere = |r: &Rule| match &r.source {
        None => true,
        Some(m) => m.negated || matches!(&m.source, Source::Prefix(p) if whole(p)),
    };
    // A drop that decides (not monitored), from anywhere. A rule for
    // fragments alone cuts neither an SSH session (its segments are not
    // fragmented: its path MTU is discovered) nor neighbour discovery
    // (which refuses fragments, RFC 6980).
    let drops_from_anywhere =
        |r: &Rule| r.action == xdpguard::RuleAction::Drop && !r.monitor && r.fragment != Some(true) && from_anywhere(r);
    let cutting = |r: &&Rule| drops_from_anywhere(r) && r.destination.is_none_or(|d| d.negated || whole(&d.prefix));
    let all_tcp = rules.iter().filter(cutting).find(|r| {
        every_port(&r.source_ports)
            && every_port(&r.destination_ports)
            && r.tcp_flags.is_none_or(|f| f.mask == 0)
            && matches!(r.protocol, None | Some(RuleProtocol::Tcp))
    });
    // Neighbour solicitation and advertisement (ICMPv6 types 135, 136):
    // sent to link-local multicast (ff02::/16, solicited-node and all-nodes)
    // and to the host's own addresses, so any destination that is not
    // clear of ff02::/16 cuts them.
    let ll_multicast: ipnetwork::Ipv6Network = "ff02::/16".parse().expect("a prefix");
    let to_nd = |r: &Rule| match &r.destination {
        None => true,
        Some(d) => match d.prefix {
            IpNetwork::V6(p) if d.negated => !ll_multicast.is_subnet_of(p),
            IpNetwork::V6(p) => p.overlaps(ll_multicast),
            // An IPv4 destination makes the rule IPv4's.
            IpNetwork::V4(_) => false,
        },
    };
    let cuts_nd = |r: &&Rule| drops_from_anywhere(r) && to_nd(r);
    // Neighbour and router discovery (133-137) and Packet Too Big (2: IPv6
    // routers never fragment, so path-MTU discovery is the only way a
    // large transfer gets through).
    let needed = [2u16, 133, 134, 135, 136, 137];
    let nd = rules.iter().filter(cuts_nd).find(|r| {
        r.protocol == Some(RuleProtocol::Icmpv6)
            && r.icmp_types.as_ref().is_none_or(|t| needed.iter().any(|&n| t.contains(n)))
    });
    let allow_first = "To let only some sources in, allowlist them first (`xdpguard allow ADDR`: the allowlist is \
                       checked before the rules) or put a `pass ... from ADDR` rule before it, then add it with --force";
    match (all_tcp, nd) {
        _ if force => Ok(()),
        (Some(r), _) => {
            let (from, unless) = match r.source.as_ref().is_some_and(|m| m.negated) {
                true => ("all but the sources it names", " unless it comes from one of those"),
                false => ("any source", ""),
            };
            Err(format!(
                "refusing rule `{r}`{}: it drops every {}packet from {from} that the lists do not allow, including \
                 your own SSH session{unless}. Nothing was changed. {allow_first}; to drop them anyway, add --force",
                line_of(r),
                if r.protocol.is_some() { "TCP " } else { "" },
            )
            .into())
        }
        (None, Some(r)) => Err(format!(
            "refusing rule `{r}`{}: it drops IPv6 neighbour discovery or Packet Too Big (ICMPv6 types 133-137 and \
             2) from any source: IPv6 on this host's links stops, or large transfers stall (routers never \
             fragment IPv6). Nothing was changed. Drop what floods, such as echo requests (`drop icmpv6 type \
             128`), or add --force",
            line_of(r)
        )
        .into()),
        (None, None) => Ok(()),
    }
}

/// Warns (on stderr; the rules still go in) about each rate-limit rule
/// whose `block` handshake-less packets can set off
/// ([`Rule::block_is_spoofable`]): forged from a resolver or gateway, they
/// block it from every port and protocol. `lines` as for
/// [`refuse_drop_all`]; `place` names where the rules come from.
fn warn_spoofable_blocks(rules: &[Rule], lines: &[usize], place: &str) {
    for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.block_is_spoofable()) {
        let line = lines.get(i).map(|n| format!(" (line {n})")).unwrap_or_default();
        eprintln!(
            "warning: rule `{r}`{place}{line}: its `block` can be set off by packets that need no handshake, so their \
             source can be forged: an attacker who sends a burst of them from this host's DNS resolver or gateway \
             blocks that address from ALL traffic for the block's time. Use the rate limit without `block` (SYN \
             floods: the SYN guard, `xdpguard syn protect`), or allowlist what must stay reachable"
        );
    }
}

/// [`warn_spoofable_blocks`] for every filter of a configuration.
fn warn_config_blocks(c: &Config) {
    for f in &c.filters {
        warn_spoofable_blocks(&f.rules, &[], &format!(" (filter {})", f.pin.display()));
    }
}

/// A rule file's rules (`-`: standard input), read for `filter`: every
/// bad line, and every rule naming a set the filter does not have, in one
/// report by line number, before anything changes.
fn read_rules(path: &Path, filter: &Filter) -> Result<RuleFile> {
    let (bytes, name) = if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        (b, "standard input".to_string())
    } else {
        (std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?, path.display().to_string())
    };
    let (lines, mut errors) = xdpguard::parse_rule_lines(&bytes);
    if lines.iter().any(|l| l.rule.set_name().is_some()) {
        let have = filter.sets().names()?;
        for l in &lines {
            if let Some(set) = l.rule.set_name().filter(|s| !have.iter().any(|h| h == s)) {
                errors.push(xdpguard::LineError {
                    line: l.line,
                    message: format!("no set named `{set}`: create it first (`xdpguard set create {set}`)"),
                });
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return Err(xdpguard::RuleError::BadLines { source_name: name, errors }.into());
    }
    Ok(RuleFile { lines })
}

/// A rule file's rules, with their lines.
struct RuleFile {
    lines: Vec<xdpguard::RuleLine>,
}

impl RuleFile {
    fn rules(&self) -> Vec<Rule> {
        self.lines.iter().map(|l| l.rule.clone()).collect()
    }

    /// Each rule's line, in the order of [`Self::rules`].
    fn line_numbers(&self) -> Vec<usize> {
        self.lines.iter().map(|l| l.line).collect()
    }
}

/// `--pin DIR` as a command that works on the filter pinned at `pin`
/// needs it: nothing for the default directory.
fn pin_flag(pin: &Path) -> String {
    if pin == Path::new(DEFAULT_PIN) {
        String::new()
    } else {
        format!(" --pin {}", pin.display())
    }
}

/// A rule or set command's error naming a set or rule the filter pinned at
/// `pin` does not have, in the words of this tool: which filter was asked,
/// and the commands that list its sets or rules (and make the set).
fn in_filter(e: Box<dyn std::error::Error>, pin: &Path) -> Box<dyn std::error::Error> {
    use xdpguard::{Error, RuleError};
    let flag = pin_flag(pin);
    let rule = e.downcast_ref::<RuleError>().or(match e.downcast_ref::<Error>() {
        Some(Error::Rule(r)) => Some(r),
        _ => None,
    });
    match rule {
        Some(RuleError::UnknownSet { name }) => format!(
            "the filter pinned at {} has no set named `{name}`; nothing changed: `xdpguard set list{flag}` shows \
             its sets, `xdpguard set create {name}{flag}` makes an empty one",
            pin.display()
        )
        .into(),
        Some(RuleError::NotFound { id }) => format!(
            "the filter pinned at {} has no rule with id {id}; nothing changed: `xdpguard rule list{flag}` shows \
             its rules and their ids",
            pin.display()
        )
        .into(),
        _ => e,
    }
}

fn rule_command(cmd: RuleCommand) -> Result<()> {
    match cmd {
        RuleCommand::Add { pin, at, file, rule, force } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let file = file.as_deref().map(|f| read_rules(f, &filter)).transpose()?;
            let rules = match &file {
                Some(file) => file.rules(),
                None if rule.is_empty() => {
                    return Err("no rule given: write one (`drop udp dport 1900`) or --file F".into())
                }
                None => vec![rule.join(" ").parse::<Rule>()?],
            };
            let lines = file.as_ref().map(RuleFile::line_numbers).unwrap_or_default();
            refuse_drop_all(&rules, &lines, force)?;
            warn_spoofable_blocks(&rules, &lines, "");
            let set = filter.rules();
            if rules.len() == 1 {
                let id = match at {
                    Some(at) => set.insert(at, rules[0].clone())?,
                    None => set.add(rules[0].clone())?,
                };
                println!("added rule {id}: {}", set.get(id)?);
            } else {
                // Several rules: one switch, the old rules kept (ids, counters).
                let mut all: Vec<Rule> = set.list()?.into_iter().map(|e| e.rule).collect();
                let at = at.unwrap_or(all.len()).min(all.len());
                let n = rules.len();
                all.splice(at..at, rules);
                let change = set.replace(all)?;
                println!("added {n} rules ({} rules now)", change.ids.len());
            }
        }
        RuleCommand::Del { pin, ids } => {
            let mut ids: Vec<RuleId> = ids.iter().map(|s| s.parse()).collect::<std::result::Result<_, _>>()?;
            let mut seen = std::collections::BTreeSet::new();
            ids.retain(|id| seen.insert(*id));
            let filter = Filter::open_pinned(&pin.pin)?;
            // Every id checked first: one unknown id, nothing removed.
            let known: Vec<RuleId> = filter.rules().list()?.iter().map(|r| r.id).collect();
            if let Some(id) = ids.iter().find(|id| !known.contains(id)) {
                return Err(format!(
                    "the filter pinned at {} has no rule with id {id}; nothing was removed: `xdpguard rule list{}` \
                     shows its rules and their ids",
                    pin.pin.display(),
                    pin_flag(&pin.pin)
                )
                .into());
            }
            for id in ids {
                let gone = filter.rules().remove(id)?;
                println!("removed rule {id}: {gone}");
            }
        }
        RuleCommand::List { pin, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let list = filter.rules().list()?;
            if json {
                let items: Vec<_> = list
                    .iter()
                    .map(|e| {
                        json!({
                            "id": e.id.get(),
                            "position": e.position,
                            "rule": e.rule.to_string(),
                            "hits": common::counter_json(e.hits),
                            "limited": common::counter_json(e.limited),
                            "auto_blocks": e.auto_blocks,
                        })
                    })
                    .collect();
                println!("{}", json!({ "rules": items, "monitor": filter.monitor() }));
            } else {
                println!("{:>5} {:>14} {:>16}  rule", "id", "packets", "bytes");
                for e in &list {
                    println!("{:>5} {:>14} {:>16}  {}", e.id, e.hits.packets, e.hits.bytes, e.rule);
                    if e.rule.limit.is_some() {
                        println!(
                            "{:>5} {:>14} {:>16}  (over the limit; {} auto-blocks)",
                            "", e.limited.packets, e.limited.bytes, e.auto_blocks
                        );
                    }
                }
                eprintln!("{} rules, checked in this order after the allowlist and blocklist", list.len());
            }
        }
        RuleCommand::Replace { pin, file, force } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let file = read_rules(&file, &filter)?;
            let rules = file.rules();
            refuse_drop_all(&rules, &file.line_numbers(), force)?;
            warn_spoofable_blocks(&rules, &file.line_numbers(), "");
            let change = filter.rules().replace(rules)?;
            println!(
                "replaced the rules: {} now ({} added, {} removed, {} kept with their counters)",
                change.ids.len(),
                change.added,
                change.removed,
                change.kept
            );
        }
        RuleCommand::Monitor { pin, id, off } => {
            let id: RuleId = id.parse()?;
            let filter = Filter::open_pinned(&pin.pin)?;
            filter.rules().set_monitor(id, !off)?;
            println!("rule {id}: {}", filter.rules().get(id)?);
        }
        RuleCommand::Clear { pin } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            println!("removed {} rules", filter.rules().clear()?);
        }
    }
    Ok(())
}

fn set_command(cmd: SetCommand) -> Result<()> {
    match cmd {
        SetCommand::Create { pin, name } => {
            Filter::open_pinned(&pin.pin)?.sets().create(&name)?;
            println!("created set {name}");
        }
        SetCommand::Delete { pin, name } => {
            let n = Filter::open_pinned(&pin.pin)?.sets().delete(&name)?;
            println!("deleted set {name} ({n} entries)");
        }
        SetCommand::Add { edit, set, replace, force } => {
            let given = gather_for(&edit, Some(replace))?;
            let filter = Filter::open_pinned(&edit.pin.pin)?;
            let s = filter.sets().get(&set);
            let s = if force { s.permit_whole_family() } else { s };
            let nets = given.iter().map(|g| g.net);
            let change = if replace { s.replace(nets)? } else { s.extend(nets)? };
            note_normalized(&change.normalized);
            println!("set {set}: {} entries now ({} changes)", s.len()?, change.changed);
        }
        SetCommand::Del { edit, set } => {
            let given = gather(&edit)?;
            let filter = Filter::open_pinned(&edit.pin.pin)?;
            let s = filter.sets().get(&set);
            let change = s.remove_all(given.iter().map(|g| g.net))?;
            println!("set {set}: removed {} entries, {} left", change.changed, s.len()?);
        }
        SetCommand::List { pin, name, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let names = match name {
                Some(n) => vec![n],
                None => filter.sets().names()?,
            };
            let mut out = serde_json::Map::new();
            for n in &names {
                let entries: Vec<String> = filter.sets().get(n).iter()?.map(|e| e.to_string()).collect();
                if !json {
                    println!("{n} ({} entries)", entries.len());
                    for e in &entries {
                        println!("  {e}");
                    }
                }
                out.insert(n.clone(), json!(entries));
            }
            if json {
                println!("{}", json!({ "sets": out }));
            }
        }
    }
    Ok(())
}

/// The rules that admit a source (`Rules::matching_source`), walked as the
/// guard walks them for its packets.
#[derive(Default)]
struct SourceRules {
    /// Rules that also look at protocols, ports, flags, types or the
    /// destination, before the deciding one: they may decide first.
    may_decide: Vec<xdpguard::RuleEntry>,
    /// Rate limits on the source alone, before the deciding one.
    limited: Vec<xdpguard::RuleEntry>,
    /// The first drop or pass on the source alone.
    decided: Option<xdpguard::RuleEntry>,
}

impl SourceRules {
    fn walk(entries: Vec<xdpguard::RuleEntry>) -> SourceRules {
        use xdpguard::RuleAction;
        let mut w = SourceRules::default();
        for e in entries {
            // A count or monitored rule decides nothing.
            if e.rule.monitor || e.rule.action == RuleAction::Count {
                continue;
            }
            if !e.rule.only_on_source() {
                w.may_decide.push(e);
            } else if e.rule.action == RuleAction::RateLimit {
                w.limited.push(e);
            } else {
                w.decided = Some(e);
                break;
            }
        }
        w
    }

    /// The action and reason `check` reports (no list or timed block
    /// having decided).
    fn verdict(&self) -> (&'static str, String) {
        let (action, mut reason) = match &self.decided {
            Some(e) if e.rule.action == xdpguard::RuleAction::Drop => {
                ("drop", format!("drop by rule {}: {}", e.id, e.rule))
            }
            Some(e) => ("pass", format!("pass by rule {}: {}", e.id, e.rule)),
            None => ("pass", "in neither list".to_string()),
        };
        if let Some(first) = self.limited.first() {
            reason = format!("rate-limited by rule {}: {}; within the limit: {action}, {reason}", first.id, first.rule);
            return ("rate-limit", reason);
        }
        (action, reason)
    }
}

/// How long `stats --watch` tries to reopen a filter re-created under its
/// pin directory: `apply --recreate` removes the old one, then creates the
/// new one (opening waits for a creation under way, not for the gap).
const REOPEN_WITHIN: Duration = Duration::from_secs(10);

/// Reopens the filter pinned at `pin` for `stats --watch` once the one it
/// showed was replaced, saying so in one line; an error naming the pin
/// when none is there again within [`REOPEN_WITHIN`].
fn reopen_replaced(pin: &Path) -> Result<Filter> {
    let deadline = Instant::now() + REOPEN_WITHIN;
    loop {
        match Filter::open_pinned(pin) {
            Ok(filter) => {
                eprintln!(
                    "note: the filter pinned at {} was re-created: showing the new one's counters from here (they \
                     start from zero; no rates this round)",
                    pin.display()
                );
                return Ok(filter);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "the filter pinned at {} was removed or re-created, and none could be opened there within {} s: \
                     {e}; stats --watch stops (run it again once the filter is back)",
                    pin.display(),
                    REOPEN_WITHIN.as_secs()
                )
                .into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn print_stats(s: &FilterStats, rates: Option<(FilterStats, Duration)>, json: bool) {
    if json {
        let mut obj = serde_json::Map::new();
        for (name, c) in s.rows() {
            obj.insert(name.into(), common::counter_json(c));
        }
        if let Some((d, dt)) = rates {
            let secs = dt.as_secs_f64().max(1e-9);
            let mut r = serde_json::Map::new();
            for (name, c) in d.rows() {
                r.insert(name.into(), json!({ "pps": c.packets as f64 / secs, "bps": c.bytes as f64 * 8.0 / secs }));
            }
            obj.insert("rates".into(), serde_json::Value::Object(r));
        }
        println!("{}", serde_json::Value::Object(obj));
        return;
    }
    // The reason column as wide as its longest name (`would_drop_blocked`).
    let w = s.rows().iter().map(|(name, _)| name.len()).max().unwrap_or(0).max("reason".len());
    println!("{:<w$} {:>14} {:>16} {:>12}", "reason", "packets", "bytes", "pps");
    let rate_rows = rates.map(|(d, dt)| (d.rows(), dt.as_secs_f64().max(1e-9)));
    for (i, (name, c)) in s.rows().into_iter().enumerate() {
        let pps = rate_rows
            .as_ref()
            .map(|(rows, secs)| format!("{:.0}", rows[i].1.packets as f64 / secs))
            .unwrap_or_else(|| "-".into());
        println!("{name:<w$} {:>14} {:>16} {:>12}", c.packets, c.bytes, pps);
    }
    let t = s.total();
    println!("{:<w$} {:>14} {:>16}", "total", t.packets, t.bytes);
}

/// Says, for the first five, which prefixes given were stored in another
/// form (host bits cleared, or IPv4-mapped), as given → as stored.
fn note_normalized(normalized: &[(IpNetwork, IpNetwork)]) {
    for (given, stored) in normalized.iter().take(5) {
        let why = if given.is_ipv6() && stored.is_ipv4() { "is IPv4-mapped" } else { "has host bits set" };
        eprintln!("note: {given} {why}; stored as {stored}");
    }
}
