//! `xdpguard events`, `capture` and `top`: what the filter drops, from its
//! sampled drop events (`Filter::events`) and its rule counters.
//!
//! Events are sampled: at most the event rate per CPU (`--rate`), so
//! `top`'s sources and list entries are the busiest among the samples, not
//! exact counts (its rules and rate-limited drops are exact: counters).
//! Each command holds the events' lease while it runs; killed, the filter
//! stops sending within the lease (2 s).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_file::pcap::{PcapPacket, PcapWriter};
use serde_json::json;
use xdpguard::{
    Attachment, Counter, DropEvent, DropReason, EventError, EventOptions, EventRate, EventReader, Filter, RuleId,
    TimedBlock, Verdict,
};

use crate::common::Result;
use crate::Pin;

/// How the commands that read events take the events' lease.
#[derive(Args)]
pub struct LeaseArgs {
    /// Take the events from another reader that holds them (one reader at
    /// a time), e.g. one that died with a long lease.
    #[arg(long)]
    take_over: bool,
}

/// `xdpguard events`.
#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pin: Pin,
    #[command(flatten)]
    lease: LeaseArgs,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    timeout: Option<f64>,
    /// Set the event rate limit first: events per second per CPU (`100/s`
    /// or `100`), with a burst of as many. It stays set for later readers.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<EventRate>,
}

/// `xdpguard capture`.
#[derive(Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pin: Pin,
    #[command(flatten)]
    lease: LeaseArgs,
    /// The pcap file to write (tcpdump and Wireshark read it).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    file: PathBuf,
    /// Stop after this many packets.
    #[arg(long)]
    count: u64,
    /// Stop after this many seconds, even with fewer packets.
    #[arg(long, value_name = "S")]
    timeout: Option<f64>,
    /// Set the event rate limit first (as for `events`).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<EventRate>,
}

/// `xdpguard top`.
#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    pin: Pin,
    #[command(flatten)]
    lease: LeaseArgs,
    /// Seconds per report.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    interval: f64,
    /// Stop after this many reports (default: until killed).
    #[arg(long)]
    iterations: Option<u64>,
    /// Lines per table.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// One JSON object per report.
    #[arg(long)]
    json: bool,
}

fn parse_rate(s: &str) -> std::result::Result<EventRate, String> {
    let n = s.trim().trim_end_matches("/s");
    n.parse::<u32>()
        .map(EventRate::per_second)
        .map_err(|_| format!("`{s}` is not a rate: give events per second, e.g. 100/s"))
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{what} must be a number of seconds above 0, not {s}").into())
}

/// The addresses, protocol and ports of an event's packet, as far as its
/// first bytes show them.
#[derive(Debug, Default)]
struct Summary {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<String>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn summarize(bytes: &[u8]) -> Summary {
    let mut s = Summary::default();
    let Ok(p) = LaxSlicedPacket::from_ethernet(bytes) else {
        return s;
    };
    let number = match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            s.src = Some(ip.header().source_addr().into());
            s.dst = Some(ip.header().destination_addr().into());
            Some(ip.payload().ip_number)
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            s.src = Some(ip.header().source_addr().into());
            s.dst = Some(ip.header().destination_addr().into());
            Some(ip.payload().ip_number)
        }
        _ => None,
    };
    s.proto = number.map(|n| n.keyword_str().map_or_else(|| n.0.to_string(), str::to_ascii_lowercase));
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => (s.sport, s.dport) = (Some(t.source_port()), Some(t.destination_port())),
        Some(TransportSlice::Udp(u)) => (s.sport, s.dport) = (Some(u.source_port()), Some(u.destination_port())),
        _ => {}
    }
    s
}

/// What event lines are read against, each read at most once a second
/// (an event stream can carry hundreds a second): the filter's attachments,
/// for interface names, and its timed blocks, read only when an event was
/// a timed block's drop.
struct Lookups<'f> {
    filter: &'f Filter,
    attachments: Option<(Instant, Vec<Attachment>)>,
    timed: Option<(Instant, Vec<TimedBlock>)>,
}

impl<'f> Lookups<'f> {
    fn new(filter: &'f Filter) -> Self {
        Lookups { filter, attachments: None, timed: None }
    }

    /// The interface's name as the filter's attachments record it (the
    /// filter may be attached in another network namespace, where the same
    /// index names another interface than here); `ifN` otherwise.
    fn iface(&mut self, ifindex: u32) -> String {
        let filter = self.filter;
        let list = fresh(&mut self.attachments, || filter.attachments());
        list.iter().find(|a| a.ifindex == ifindex).map_or_else(|| format!("if{ifindex}"), |a| a.interface.clone())
    }

    /// The timed block that drops `src` now (a rate-limit rule's
    /// auto-block, or `block --ttl`), for a timed-block drop.
    fn timed_block(&mut self, e: &DropEvent, src: Option<IpAddr>) -> Option<String> {
        if !matches!(e.reason, DropReason::TimedBlocked | DropReason::WouldDropTimed) {
            return None;
        }
        let (filter, src) = (self.filter, src?);
        let blocks = fresh(&mut self.timed, || filter.timed_blocks().list().unwrap_or_default());
        blocks.iter().find(|b| b.prefix.contains(src)).map(|b| b.prefix.to_string())
    }
}

/// `cache`'s value, read again by `read` when older than a second.
fn fresh<T>(cache: &mut Option<(Instant, T)>, read: impl FnOnce() -> T) -> &T {
    if cache.as_ref().is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(1)) {
        *cache = Some((Instant::now(), read()));
    }
    &cache.as_ref().expect("just filled").1
}

/// The blocklist entry that decides `src` now (sampled events are matched
/// against the lists as they are when shown).
fn entry(filter: &Filter, e: &DropEvent, src: Option<IpAddr>) -> Option<String> {
    if !e.reason.is_list() {
        return None;
    }
    match filter.verdict(src?).ok()? {
        Verdict::Block(net) => Some(net.to_string()),
        _ => None,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn text_line(look: &mut Lookups<'_>, e: &DropEvent) -> String {
    let s = summarize(&e.bytes);
    let who = match (e.rule, entry(look.filter, e, s.src)) {
        (Some(id), _) => format!("rule {id}"),
        (None, Some(net)) => format!("entry {net}"),
        (None, None) => look.timed_block(e, s.src).map_or_else(|| "-".into(), |net| format!("timed {net}")),
    };
    // `[2001:db8::1]:53` for IPv6 with a port, as a socket address is written.
    let end = |a: Option<IpAddr>, p: Option<u16>| match (a, p) {
        (Some(a), Some(p)) => SocketAddr::new(a, p).to_string(),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".into(),
    };
    format!(
        "{} {} {} {} {} -> {} {} len {}",
        rfc3339(e.time),
        look.iface(e.ifindex),
        e.reason,
        who,
        end(s.src, s.sport),
        end(s.dst, s.dport),
        s.proto.as_deref().unwrap_or("-"),
        e.len
    )
}

fn json_line(look: &mut Lookups<'_>, e: &DropEvent) -> serde_json::Value {
    let s = summarize(&e.bytes);
    let hex: String = e.bytes.iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "time": rfc3339(e.time),
        "time_ns": e.time.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64,
        "ifindex": e.ifindex,
        "iface": look.iface(e.ifindex),
        "queue": e.queue,
        "reason": e.reason.to_string(),
        "rule": e.rule.map(RuleId::get),
        "entry": entry(look.filter, e, s.src),
        "timed_block": look.timed_block(e, s.src),
        "len": e.len,
        "caplen": e.bytes.len(),
        "src": s.src.map(|a| a.to_string()),
        "dst": s.dst.map(|a| a.to_string()),
        "proto": s.proto,
        "sport": s.sport,
        "dport": s.dport,
        "bytes": hex,
    })
}

/// Starts reading. One reader at a time: a lease another reader holds is
/// waited out once when it is short, as a reader killed a moment ago (by
/// Ctrl-C: no time to give it back) leaves it; a reader that renews it
/// is alive, and the error says so. Both name the `xdpguard` readers
/// running on this host, when there are any: the lease word records no
/// process, so that is the best guess there is at who holds it.
fn start_reading(filter: &Filter, options: EventOptions) -> Result<EventReader<'_>> {
    let busy = |e: EventError| -> Box<dyn std::error::Error> {
        match e {
            EventError::Busy { .. } => {
                let running = match readers() {
                    r if r.is_empty() => String::new(),
                    r => format!(" (xdpguard readers running on this host: {})", r.join(", ")),
                };
                format!("{e}{running}; or take them over now: --take-over (the other reader then stops)").into()
            }
            e => e.into(),
        }
    };
    match filter.events(options) {
        Err(EventError::Busy { remaining }) if remaining <= options.lease.max(Duration::from_secs(5)) => {
            eprintln!(
                "another reader holds the drop events{}: waiting {remaining:.1?} for its lease to run out, once \
                 (Ctrl-C stops waiting; --take-over takes them without waiting)",
                match readers() {
                    r if r.is_empty() => String::new(),
                    r => format!(" ({})", r.join(", ")),
                }
            );
            std::thread::sleep(remaining + Duration::from_millis(20));
            filter.events(options).map_err(busy)
        }
        r => r.map_err(busy),
    }
}

/// The other `xdpguard` processes reading events on this host (`events`,
/// `top`, `capture`), as `pid 123 `xdpguard events --pin ...``; a program
/// using the library's `EventReader` is not found this way.
fn readers() -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_tool = args.first().is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "xdpguard"));
        if is_tool && args.iter().skip(1).any(|a| matches!(a.as_str(), "events" | "top" | "capture")) {
            found.push(format!("pid {pid} `{}`", args.join(" ")));
        }
    }
    found
}

/// The options of `rate` and `--take-over`.
fn options(rate: Option<EventRate>, lease: &LeaseArgs) -> EventOptions {
    let options = EventOptions::default().take_over(lease.take_over);
    match rate {
        Some(rate) => options.rate(rate),
        None => options,
    }
}

/// Set by SIGINT or SIGTERM while events are read: the reader stops at
/// its next poll (a signal ends the poll's wait), gives the lease back and
/// says what it read and what the rate limit left out. Killed outright, it
/// said nothing, and a capture's count went unreported.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop_reading(_: nix::libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM stop [`read_events`] rather than the process.
fn stop_on_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // No SA_RESTART: the poll must return (EINTR) for the flag to be seen.
    let action = SigAction::new(SigHandler::Handler(stop_reading), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; nothing else handles these signals here.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// What one run of [`read_events`] read, and what the filter counted
/// meanwhile that it did not get.
struct ReadSummary {
    /// Events handed on.
    seen: u64,
    /// Drop events the event rate limit left out while reading (all
    /// readers' limit: the filter counts per CPU, not per reader).
    limited: u64,
    /// Events the ring had no room for while reading.
    lost: u64,
}

impl ReadSummary {
    /// The closing line: how many events, and how many the filter did not
    /// send (the rate limit's share says how sampled the output is).
    fn line(&self, what: &str) -> String {
        format!(
            "{} {what}; meanwhile the event rate limit left out {} drop event(s) (raise it with --rate) and {} \
             were lost with the ring full",
            self.seen, self.limited, self.lost
        )
    }
}

/// Reads events until `count`, `timeout` or SIGINT/SIGTERM, handing each
/// to `each`.
fn read_events(
    filter: &Filter,
    options: EventOptions,
    count: Option<u64>,
    timeout: Option<Duration>,
    mut each: impl FnMut(&DropEvent) -> Result<()>,
) -> Result<ReadSummary> {
    let mut reader = start_reading(filter, options)?;
    stop_on_signals();
    // Read once the lease is held: before it, the data plane sends and
    // limits nothing, so the difference is this reading's.
    let before = filter.event_stats()?;
    let start = Instant::now();
    let mut seen = 0u64;
    loop {
        let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
        if left.is_some_and(|l| l.is_zero()) || count.is_some_and(|c| seen >= c) || STOP.load(Ordering::Relaxed) {
            let after = filter.event_stats()?;
            return Ok(ReadSummary {
                seen,
                limited: after.limited.saturating_sub(before.limited),
                lost: after.lost.saturating_sub(before.lost),
            });
        }
        for e in reader.poll(left.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1)))? {
            if count.is_some_and(|c| seen >= c) {
                break;
            }
            each(&e)?;
            seen += 1;
        }
    }
}

/// `xdpguard events`.
pub fn events(args: EventsArgs) -> Result<()> {
    let filter = Filter::open_pinned(&args.pin.pin)?;
    let timeout = args.timeout.map(|s| seconds(s, "--timeout")).transpose()?;
    let mut out = std::io::stdout().lock();
    let mut look = Lookups::new(&filter);
    read_events(&filter, options(args.rate, &args.lease), args.count, timeout, |e| {
        let line = if args.json { json_line(&mut look, e).to_string() } else { text_line(&mut look, e) };
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    })
    .map(|read| eprintln!("{}", read.line("event(s) shown")))?;
    Ok(())
}

/// `xdpguard capture`.
pub fn capture(args: CaptureArgs) -> Result<()> {
    let filter = Filter::open_pinned(&args.pin.pin)?;
    let timeout = args.timeout.map(|s| seconds(s, "--timeout")).transpose()?;
    let file = File::create(&args.file).map_err(|e| format!("cannot create {}: {e}", args.file.display()))?;
    // Ethernet frames, microsecond timestamps, snap length 65535 (each
    // packet's own caplen says how much of it an event carried).
    let mut pcap = PcapWriter::new(file)?;
    let read = read_events(&filter, options(args.rate, &args.lease), Some(args.count), timeout, |e| {
        let ts = e.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        pcap.write_packet(&PcapPacket::new(ts, e.len, &e.bytes))?;
        Ok(())
    })?;
    pcap.into_writer().sync_all()?;
    let n = read.seen;
    eprintln!("{n} packet(s) written to {} (the first {} bytes of each)", args.file.display(), xdpguard::SNAP_LEN);
    eprintln!("{}", read.line("packet(s) captured"));
    // As `events`, and as --timeout says: a stop, not a failure.
    if n < args.count {
        eprintln!("only {n} of {} packets came before the timeout or the stop", args.count);
    }
    Ok(())
}

/// A rule's counters, as `top` reads them at each end of an interval.
#[derive(Clone, Default)]
struct RuleRead {
    text: String,
    hits: Counter,
    limited: Counter,
}

/// `xdpguard top`.
pub fn top(args: TopArgs) -> Result<()> {
    let filter = Filter::open_pinned(&args.pin.pin)?;
    let interval = seconds(args.interval, "--interval")?;
    let rules_now = |f: &Filter| -> Result<HashMap<RuleId, RuleRead>> {
        Ok(f.rules()
            .list()?
            .into_iter()
            .map(|r| (r.id, RuleRead { text: r.rule.to_string(), hits: r.hits, limited: r.limited }))
            .collect())
    };
    // Read before the lease is taken: whoever waits for the lease to send
    // (the tests, an operator) finds every packet in this interval's deltas.
    let mut before = rules_now(&filter)?;
    let mut stats_before = filter.stats()?;
    let mut reader = start_reading(&filter, options(None, &args.lease))?;
    let mut done = 0u64;
    while args.iterations.is_none_or(|n| done < n) {
        let start = Instant::now();
        let mut sources: HashMap<IpAddr, u64> = HashMap::new();
        let mut entries: HashMap<String, u64> = HashMap::new();
        let mut timed_sources: Vec<IpAddr> = Vec::new();
        let mut sampled = 0u64;
        while start.elapsed() < interval {
            for e in reader.poll(interval.saturating_sub(start.elapsed()))? {
                sampled += 1;
                let s = summarize(&e.bytes);
                if let Some(src) = s.src {
                    *sources.entry(src).or_default() += 1;
                }
                if let Some(net) = entry(&filter, &e, s.src) {
                    *entries.entry(net).or_default() += 1;
                }
                if let (DropReason::TimedBlocked | DropReason::WouldDropTimed, Some(src)) = (e.reason, s.src) {
                    timed_sources.push(src);
                }
            }
        }
        // The timed blocks that dropped them, read once per interval.
        if !timed_sources.is_empty() {
            let blocks = filter.timed_blocks().list()?;
            for src in timed_sources.drain(..) {
                if let Some(b) = blocks.iter().find(|b| b.prefix.contains(src)) {
                    *entries.entry(format!("timed {}", b.prefix)).or_default() += 1;
                }
            }
        }
        let after = rules_now(&filter)?;
        let stats_after = filter.stats()?;
        // The filter's rate-limit counters over the interval (exact, like
        // the rules'): what every rate-limit rule dropped, or in monitor
        // mode would have.
        let limits = stats_after.since(&stats_before);
        let mut rules: Vec<(RuleId, String, Counter, Counter)> = after
            .iter()
            .map(|(id, now)| {
                let was = before.get(id).cloned().unwrap_or_default();
                (*id, now.text.clone(), now.hits - was.hits, now.limited - was.limited)
            })
            .filter(|r| r.2.packets > 0 || r.3.packets > 0)
            .collect();
        rules.sort_by(|a, b| b.2.packets.cmp(&a.2.packets).then(a.0.cmp(&b.0)));
        rules.truncate(args.limit);
        let busiest = |m: HashMap<String, u64>| {
            let mut v: Vec<(String, u64)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(args.limit);
            v
        };
        let sources = busiest(sources.into_iter().map(|(a, n)| (a.to_string(), n)).collect());
        let entries = busiest(entries);
        let secs = interval.as_secs_f64();
        let limit_json = |c: Counter| json!({"packets": c.packets, "bytes": c.bytes, "pps": c.packets as f64 / secs});
        if args.json {
            let v = json!({
                "interval_s": secs,
                "sampled_events": sampled,
                "rate_limited": limit_json(limits.rate_limited),
                "would_drop_limit": limit_json(limits.would_drop_limit),
                "rules": rules.iter().map(|(id, text, h, l)| json!({"id": id.get(), "rule": text, "packets": h.packets, "bytes": h.bytes, "limited": l.packets})).collect::<Vec<_>>(),
                "sources": sources.iter().map(|(a, n)| json!({"source": a, "events": n})).collect::<Vec<_>>(),
                "entries": entries.iter().map(|(e, n)| json!({"entry": e, "events": n})).collect::<Vec<_>>(),
            });
            println!("{v}");
        } else {
            let (rl, wl) = (limits.rate_limited.packets, limits.would_drop_limit.packets);
            println!(
                "rate limits over {secs:.1} s (exact: filter counters): {rl} dropped ({:.1}/s), {wl} would-drop \
                 in monitor mode ({:.1}/s)",
                rl as f64 / secs,
                wl as f64 / secs
            );
            println!("busiest rules over {secs:.1} s (exact: rule counters; limited: over a rate limit):");
            println!("  {:>6} {:>12} {:>14} {:>12}  rule", "id", "packets", "bytes", "limited");
            for (id, text, h, l) in &rules {
                println!("  {:>6} {:>12} {:>14} {:>12}  {text}", id.get(), h.packets, h.bytes, l.packets);
            }
            println!("busiest sources ({sampled} sampled drop events, at most the event rate per CPU):");
            for (a, n) in &sources {
                println!("  {n:>8}  {a}");
            }
            println!("busiest blocklist entries and timed blocks (sampled):");
            for (e, n) in &entries {
                println!("  {n:>8}  {e}");
            }
            println!();
        }
        before = after;
        stats_before = stats_after;
        done += 1;
    }
    Ok(())
}
