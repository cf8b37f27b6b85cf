//! `xdpguard syn ...`: the SYN-flood guard of a pinned filter
//! (`Filter::syn_guard`): protect and unprotect ports, show their
//! counters, print (and apply) the nftables rules cookie mode needs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use clap::{Args, Subcommand};
use serde_json::json;
use xdpguard::{Filter, SynMode, SynPolicy};

use crate::common::Result;

/// The filter's pin directory.
#[derive(Args)]
pub struct SynPin {
    /// The filter's bpffs pin directory.
    #[arg(long, default_value = crate::DEFAULT_PIN)]
    pin: PathBuf,
}

/// `xdpguard syn` subcommands.
#[derive(Subcommand)]
pub enum SynCommand {
    /// Protect a TCP port (or change its policy). Cookie mode needs the
    /// host's nftables synproxy rules: see `xdpguard syn nft-rules`.
    Protect {
        #[command(flatten)]
        pin: SynPin,
        /// The port.
        port: u16,
        /// cookie: answer every SYN with a SYN cookie from XDP; drop: above
        /// --threshold SYNs a second, drop SYNs of sources that have not
        /// completed a handshake.
        #[arg(long, default_value = "cookie")]
        mode: SynMode,
        /// Drop mode: SYNs a second the port takes from anyone (default
        /// 1000).
        #[arg(long)]
        threshold: Option<u32>,
        /// Cookie mode: the MSS the SYN-ACK advertises (0: 1460 / 1440).
        #[arg(long, default_value_t = 0)]
        mss: u16,
        /// Cookie mode: the SYN-ACK also offers window scaling by this
        /// shift (the server's own), SACK and timestamps. Through nftables
        /// synproxy each connection then waits about a second for a server
        /// that speaks first (README, SYN-flood guard): for servers whose
        /// clients speak first. Default: the MSS alone.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=14), conflicts_with = "mss_only")]
        wscale: Option<u8>,
        /// Cookie mode: the SYN-ACK offers the MSS alone, not window
        /// scaling, SACK and timestamps (the default; `syn nft-rules` then
        /// gives the port a synproxy rule without `wscale N timestamp
        /// sack-perm`).
        #[arg(long)]
        mss_only: bool,
        /// Cookie mode: drop ACKs that are neither valid cookies nor of
        /// connections this namespace's conntrack tracks (a spoofed ACK
        /// flood), in XDP. Only where the server runs in this network
        /// namespace.
        #[arg(long)]
        drop_untracked_acks: bool,
        /// Count what would be dropped or answered; pass it.
        #[arg(long)]
        monitor: bool,
    },
    /// Stop protecting a port.
    Unprotect {
        #[command(flatten)]
        pin: SynPin,
        /// The port.
        port: u16,
    },
    /// The protected ports, their SYN rates and counters.
    Status {
        #[command(flatten)]
        pin: SynPin,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print the nftables rules (and the sysctl) cookie mode needs on the
    /// host, for every port the filter protects in cookie mode and those
    /// given; with --apply, load them with `nft -f -` (replacing the table
    /// it loaded before) and set the sysctl.
    NftRules {
        #[command(flatten)]
        pin: SynPin,
        /// A port to cover besides the filter's cookie-mode ones
        /// (repeatable; without a pinned filter, the ports to cover).
        #[arg(long = "port", value_parser = clap::value_parser!(u16).range(1..))]
        ports: Vec<u16>,
        /// The MSS synproxy advertises for SYNs it answers itself (536 to
        /// 9000), on the --port ports and the protected ports whose policy
        /// gives none (each other protected port: its own).
        #[arg(long, default_value_t = 1460, value_parser = clap::value_parser!(u16).range(536..=9000))]
        mss: u16,
        /// The --port ports' window scale, as given to `syn protect
        /// --wscale` (with timestamps and SACK); default: the MSS alone.
        /// Each protected port gets its own policy's.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=14))]
        wscale: Option<u8>,
        /// Apply them in this network namespace (needs nft and root).
        #[arg(long)]
        apply: bool,
    },
}

/// What `nft-rules` says when its rules cover IPv6 (README, *SYN-flood
/// guard*).
const IPV6_NOTE: &str = "note: these rules cover IPv6 too; in generic XDP mode an IPv6 client's cookie ACK fails \
                         synproxy's checksum check unless the NIC validated the checksum (the kernel's nft synproxy \
                         checks both families with its IPv4 helper): use native mode, a NIC that validates receive \
                         checksums, or ip6tables' SYNPROXY target for IPv6 (README, SYN-flood guard)";

/// Runs an `xdpguard syn` subcommand.
pub fn run(cmd: SynCommand) -> Result<()> {
    match cmd {
        SynCommand::Protect { pin, port, mode, threshold, mss, wscale, mss_only, drop_untracked_acks, monitor } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            // Each mode's options are refused in the other, with the
            // reason, as `[[filter.syn]]` refuses them (protect() checks
            // those it can see in the policy: --mss, --wscale,
            // --drop-untracked-acks in drop mode).
            let policy = match mode {
                SynMode::Drop { .. } if mss_only => {
                    return Err("--mss-only is for --mode cookie: drop mode sends no SYN-ACK (leave it out)".into())
                }
                SynMode::Drop { .. } => SynPolicy::drop_above(threshold.unwrap_or(xdpguard::DEFAULT_SYN_THRESHOLD)),
                SynMode::Cookie if threshold.is_some() => return Err(
                    "--threshold is for --mode drop: cookie mode answers every SYN (leave it out, or use --mode drop)"
                        .into(),
                ),
                SynMode::Cookie => SynPolicy::cookies(),
            };
            // cookies() offers the MSS alone; --wscale adds window scaling,
            // SACK and timestamps, and protect() refuses a window scale in
            // drop mode (which sends no SYN-ACK).
            let policy = match (wscale, mss_only) {
                (Some(w), _) => policy.with_wscale(Some(w)),
                (None, true) => policy.with_wscale(None),
                (None, false) => policy,
            }
            .with_mss(mss)
            .with_drop_untracked_acks(drop_untracked_acks)
            .with_monitor(monitor);
            filter.syn_guard().protect(port, policy)?;
            println!("protecting tcp port {port}: {policy}");
            if policy.mode == SynMode::Cookie {
                // nft-rules reads every cookie port's policy (MSS, window
                // scale) from the pin directory: the pin is all it needs.
                eprintln!(
                    "note: cookie mode needs nftables synproxy on the host, with rules matching each port's \
                     policy: `xdpguard syn nft-rules --pin {} --apply`",
                    pin.pin.display()
                );
            }
        }
        SynCommand::Unprotect { pin, port } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            if filter.syn_guard().unprotect(port)? {
                println!("tcp port {port} unprotected");
            } else {
                println!("tcp port {port} was not protected");
            }
        }
        SynCommand::Status { pin, json } => {
            let filter = Filter::open_pinned(&pin.pin)?;
            let syn = filter.syn_guard();
            let ports = syn.status()?;
            let known = syn.known_sources()?;
            if json {
                let items: Vec<_> = ports
                    .iter()
                    .map(|p| {
                        let s = p.stats;
                        json!({
                            "port": p.port, "policy": p.policy.to_string(), "rate": p.rate,
                            "syns": s.syns, "dropped": s.dropped, "would_drop": s.would_drop,
                            "cookies_sent": s.cookies_sent, "cookies_ok": s.cookies_ok,
                            "acks_other": s.acks_other, "known_passed": s.known_passed,
                            "unanswerable": s.unanswerable,
                        })
                    })
                    .collect();
                println!("{}", json!({ "ports": items, "known_sources": known }));
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:>5}  {:<36} {:>8} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10}",
                    "port", "policy", "SYN/s", "SYNs", "dropped", "unanswerable", "cookies", "valid ACK", "would drop"
                )?;
                for p in &ports {
                    let s = p.stats;
                    writeln!(
                        out,
                        "{:>5}  {:<36} {:>8} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10}",
                        p.port,
                        p.policy.to_string(),
                        p.rate,
                        s.syns,
                        s.dropped,
                        s.unanswerable,
                        s.cookies_sent,
                        s.cookies_ok,
                        s.would_drop
                    )?;
                }
                writeln!(out, "{} port(s) protected, {known} known source(s)", ports.len())?;
            }
        }
        SynCommand::NftRules { pin, ports, mss, wscale, apply } => {
            // One table holds every port's rules, and --apply replaces it:
            // every cookie-mode port of the filter is in it, or applying
            // for one port would take synproxy from the others.
            // Each port's synproxy options are its policy's (MSS, window
            // scale): one rule for all with the --wscale given (or this
            // host's) offered options the guard's SYN-ACKs did not, or the
            // reverse, and the client's options went wrong.
            let given = SynPolicy::cookies().with_mss(mss).with_wscale(wscale);
            let mut all: BTreeMap<u16, SynPolicy> = ports.iter().map(|&p| (p, given)).collect();
            let protected = Filter::open_pinned(&pin.pin).map_err(|e| e.to_string()).and_then(|filter| {
                // A filter without the guard stage protects no port.
                filter.syn_guard().status().map_err(|e| e.to_string())
            });
            match protected {
                Ok(status) => {
                    let cookie = status.into_iter().filter(|p| p.policy.mode == SynMode::Cookie);
                    all.extend(cookie.map(|p| {
                        let mss = if p.policy.mss == 0 { mss } else { p.policy.mss };
                        (p.port, p.policy.with_mss(mss))
                    }));
                }
                Err(e) if ports.is_empty() => {
                    return Err(format!(
                        "{e}; give the ports to cover with --port (the rules cover every port the filter protects \
                         in cookie mode, read from its pin directory)"
                    )
                    .into())
                }
                Err(e) => eprintln!("note: {e}; the rules cover only the ports given"),
            }
            if all.is_empty() {
                return Err(format!(
                    "the filter at {} protects no port in cookie mode: protect one first (`xdpguard syn protect \
                     PORT`), or give --port",
                    pin.pin.display()
                )
                .into());
            }
            let policies: Vec<(u16, SynPolicy)> = all.into_iter().collect();
            let ports: Vec<u16> = policies.iter().map(|&(p, _)| p).collect();
            let rules = xdpguard::nft_rules_for(&policies);
            // On stderr: the rules alone go to `nft -f -` or a file.
            if rules.contains("table inet") {
                eprintln!("{IPV6_NOTE}");
            }
            if !apply {
                print!("{rules}");
                return Ok(());
            }
            // nft loads nf_conntrack, which brings the sysctl.
            apply_nft(&rules)?;
            std::fs::write("/proc/sys/net/netfilter/nf_conntrack_tcp_loose", "0\n")
                .map_err(|e| format!("setting net.netfilter.nf_conntrack_tcp_loose=0: {e}"))?;
            println!("applied: nftables table inet xdpguard_syn (synproxy for tcp port(s) {ports:?}), nf_conntrack_tcp_loose=0");
        }
    }
    Ok(())
}

fn apply_nft(rules: &str) -> std::result::Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (install nftables): {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let status = child.wait().map_err(|e| format!("waiting for nft: {e}"))?;
    if !status.success() {
        return Err(format!("nft -f - failed ({status}): the rules were not applied"));
    }
    Ok(())
}
