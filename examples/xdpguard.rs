//! `xdpguard`: manage a pinned XDP filter from the command line.
//!
//! Every command works on a filter pinned in bpffs, so a filter attached by
//! one invocation keeps running after it exits and any later invocation can
//! edit its lists or read its counters. Built on the public API only.
//!
//! ```text
//! xdpguard attach --iface eth0 [--iface eth1] [--mode native|generic|offload|auto] [--pin DIR] [--netns NAME]
//! xdpguard block 192.0.2.0/24 198.51.100.7      xdpguard unblock 192.0.2.0/24
//! xdpguard block --file list.txt [--replace]    xdpguard allow / disallow ...
//! xdpguard list [--allow] [--json]              xdpguard stats [--json] [--watch SECS] [--reset]
//! xdpguard check 192.0.2.9                       xdpguard status [--json]
//! xdpguard detach
//! ```

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use common::Result;
use serde_json::json;
use xdpguard::{AttachMode, Filter, FilterStats, IpNetwork, ListKind, MalformedPolicy, PrefixList, Verdict};

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

#[derive(Subcommand)]
enum Command {
    /// Load the filter, attach it to interfaces and pin it.
    Attach {
        /// Interface to attach to (repeatable).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// XDP mode.
        #[arg(long, default_value = "auto")]
        mode: AttachMode,
        #[command(flatten)]
        pin: Pin,
        /// Maximum IPv4 entries.
        #[arg(long, default_value_t = xdpguard::DEFAULT_V4_CAPACITY)]
        v4_capacity: usize,
        /// Maximum IPv6 entries.
        #[arg(long, default_value_t = xdpguard::DEFAULT_V6_CAPACITY)]
        v6_capacity: usize,
        /// Drop malformed packets instead of passing them.
        #[arg(long)]
        drop_malformed: bool,
        /// Attach inside this named network namespace (/run/netns/NAME).
        /// Use this rather than `ip netns exec`, which hides /sys/fs/bpf.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Detach from every interface and remove the pins.
    Detach {
        #[command(flatten)]
        pin: Pin,
    },
    /// Add entries to the blocklist.
    Block(Add),
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
        /// Repeat every SECS seconds, showing rates.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// Reset the counters after reading them.
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
    /// Show interfaces, list sizes, capacities and memory.
    Status {
        #[command(flatten)]
        pin: Pin,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    common::exit_code(run(Cli::parse().command))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Attach { ifaces, mode, pin, v4_capacity, v6_capacity, drop_malformed, netns } => {
            if let Some(name) = netns {
                common::enter_netns(&name)?;
            }
            let mut b = Filter::builder()
                .mode(mode)
                .pin(&pin.pin)
                .v4_capacity(v4_capacity)
                .v6_capacity(v6_capacity)
                .malformed(if drop_malformed { MalformedPolicy::Drop } else { MalformedPolicy::Pass });
            for i in &ifaces {
                b = b.interface(i.as_str());
            }
            let filter = b.attach()?;
            common::print_attached(&filter.attachments(), &pin.pin);
        }
        Command::Detach { pin } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let attachments = filter.attachments();
            filter.unpin()?;
            common::print_detached(&attachments, &pin.pin);
        }
        Command::Block(add) => add_entries(ListKind::Block, add)?,
        Command::Allow(add) => add_entries(ListKind::Allow, add)?,
        Command::Unblock(edit) => remove_entries(ListKind::Block, edit)?,
        Command::Disallow(edit) => remove_entries(ListKind::Allow, edit)?,
        Command::List { pin, allow, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let list = if allow { filter.allowlist() } else { filter.blocklist() };
            let entries: Vec<IpNetwork> = list.iter()?.collect();
            if json {
                let items: Vec<String> = entries.iter().map(|n| n.to_string()).collect();
                println!("{}", json!({ "list": list.kind().to_string(), "entries": items }));
            } else {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    writeln!(out, "{e}")?;
                }
                eprintln!("{} entries in the {}", entries.len(), list.kind());
            }
        }
        Command::Stats { pin, json, watch, reset } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let mut previous: Option<(FilterStats, Instant)> = None;
            loop {
                let now = filter.stats()?;
                let taken = Instant::now();
                let rates = previous.map(|(p, t)| (now.since(&p), taken.duration_since(t)));
                print_stats(&now, rates, json);
                if reset {
                    filter.reset_stats()?;
                }
                let Some(secs) = watch else { break };
                previous = Some((now, taken));
                std::thread::sleep(Duration::from_secs(secs.max(1)));
            }
        }
        Command::Check { pin, addr, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let (action, reason) = match filter.verdict(addr)? {
                Verdict::Pass => ("pass", "in neither list".to_string()),
                Verdict::Allow(n) => ("pass", format!("allowlisted by {n}")),
                Verdict::Block(n) => ("drop", format!("blocklisted by {n}")),
            };
            if json {
                println!("{}", json!({ "address": addr.to_string(), "action": action, "reason": reason }));
            } else {
                println!("{addr}: {action} ({reason})");
            }
        }
        Command::Status { pin, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let (v4_cap, v6_cap) = filter.capacity();
            let blocked = filter.blocklist().len()?;
            let allowed = filter.allowlist().len()?;
            let memory = filter.map_memory_bytes();
            let attachments = filter.attachments();
            if json {
                let ifs: Vec<_> = attachments.iter().map(common::attachment_json).collect();
                println!(
                    "{}",
                    json!({
                        "pin": pin.pin.display().to_string(),
                        "attachments": ifs,
                        "blocklist_entries": blocked,
                        "allowlist_entries": allowed,
                        "v4_capacity": v4_cap,
                        "v6_capacity": v6_cap,
                        "map_memory_bytes": memory,
                        "malformed_policy": format!("{:?}", filter.malformed_policy()).to_lowercase(),
                    })
                );
            } else {
                println!("pin:        {}", pin.pin.display());
                for a in &attachments {
                    println!("attached:   {} (ifindex {}, {} mode)", a.interface, a.ifindex, a.mode);
                }
                if attachments.is_empty() {
                    println!("attached:   nowhere");
                }
                println!("blocklist:  {blocked} entries");
                println!("allowlist:  {allowed} entries");
                println!("capacity:   {v4_cap} IPv4, {v6_cap} IPv6 entries");
                println!("memory:     {:.1} MiB of maps", memory as f64 / (1 << 20) as f64);
                println!("malformed:  {:?}", filter.malformed_policy());
            }
        }
    }
    Ok(())
}

/// Entries from the command line and/or a file, parsed before anything is
/// applied: one bad entry means nothing is applied.
fn gather(edit: &Edit) -> Result<Vec<IpNetwork>> {
    let mut nets = Vec::new();
    for c in &edit.cidrs {
        nets.push(xdpguard::parse_prefix(c)?);
    }
    if let Some(path) = &edit.file {
        nets.extend(read_file(path)?);
    }
    if nets.is_empty() {
        return Err("no entries given: pass CIDRs or --file FILE".into());
    }
    Ok(nets)
}

fn read_file(path: &Path) -> Result<Vec<IpNetwork>> {
    let started = Instant::now();
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let lines = xdpguard::parse_list(&text, &path.display().to_string())?;
    if lines.len() >= 100_000 {
        eprintln!("parsed {} entries from {} in {:.2?}", lines.len(), path.display(), started.elapsed());
    }
    for l in lines.iter().filter(|l| l.entry.host_bits_cleared).take(5) {
        eprintln!("note: line {}: host bits cleared, stored as {}", l.line, l.entry.network);
    }
    Ok(lines.into_iter().map(|l| l.entry.network).collect())
}

fn list_of(filter: &Filter, kind: ListKind) -> PrefixList<'_> {
    match kind {
        ListKind::Block => filter.blocklist(),
        ListKind::Allow => filter.allowlist(),
    }
}

fn add_entries(kind: ListKind, add: Add) -> Result<()> {
    let nets = gather(&add.edit)?;
    let filter = Filter::open_pinned(&add.edit.pin.pin)?;
    let list = list_of(&filter, kind);
    let started = Instant::now();
    let big = nets.len() >= 100_000;
    if big {
        eprintln!("applying {} entries to the {kind} as one atomic step...", nets.len());
    }
    let count = nets.len();
    let change = if add.replace { list.replace(nets)? } else { list.extend(nets)? };
    for (given, stored) in change.normalized.iter().take(5) {
        eprintln!("note: {given} has host bits set; stored as {stored}");
    }
    if add.replace {
        println!("replaced the {kind}: {} entries now ({} changes) in {:.2?}", list.len()?, change.changed, started.elapsed());
    } else {
        println!(
            "{kind}: added {} of {count} entries ({} already present) in {:.2?}",
            change.changed,
            count - change.changed,
            started.elapsed()
        );
    }
    Ok(())
}

fn remove_entries(kind: ListKind, edit: Edit) -> Result<()> {
    let nets = gather(&edit)?;
    let filter = Filter::open_pinned(&edit.pin.pin)?;
    let list = list_of(&filter, kind);
    let count = nets.len();
    let change = list.remove_all(nets)?;
    println!("{kind}: removed {} of {count} entries ({} were not present)", change.changed, count - change.changed);
    Ok(())
}

fn print_stats(s: &FilterStats, rates: Option<(FilterStats, Duration)>, json: bool) {
    if json {
        let mut obj = serde_json::Map::new();
        for (name, c) in s.rows() {
            obj.insert(name.into(), json!({ "packets": c.packets, "bytes": c.bytes }));
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
    println!("{:<12} {:>14} {:>16} {:>12}", "reason", "packets", "bytes", "pps");
    let rate_rows = rates.map(|(d, dt)| (d.rows(), dt.as_secs_f64().max(1e-9)));
    for (i, (name, c)) in s.rows().into_iter().enumerate() {
        let pps = rate_rows
            .as_ref()
            .map(|(rows, secs)| format!("{:.0}", rows[i].1.packets as f64 / secs))
            .unwrap_or_else(|| "-".into());
        println!("{name:<12} {:>14} {:>16} {:>12}", c.packets, c.bytes, pps);
    }
    let t = s.total();
    println!("{:<12} {:>14} {:>16}", "total", t.packets, t.bytes);
}
