//! Drop events through BPF_PROG_TEST_RUN on the real filter and its guard
//! stage, with their live maps and ring buffer.
//!
//! - Events only while a reader holds a lease: none before, none after the
//!   reader is dropped, none once its lease has run out (the data plane
//!   clears it), and events again after a refresh.
//! - A fixture table: each row a frame, the action, and the event it must
//!   send (or none: passed and allowlisted packets), checked field by
//!   field: reason, rule, interface, queue, length, and the first bytes
//!   equal to the frame's (cut at the snap length for a long frame). Rows
//!   for IPv4 and IPv6 blocklist drops, a rule drop, malformed drops, and
//!   monitor mode's would-drops.
//! - The per-CPU rate limit: one test run repeated 2,000 times on one CPU
//!   sends exactly the burst.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); fails, never skips, without it.

mod common {
    pub mod verdict;
}

use std::net::IpAddr;
use std::time::Duration;

use common::verdict::{dst_for, ip};
use xdpguard::testing::frame::*;
use xdpguard::testing::live::{test_run, RunOptions};
use xdpguard::{
    DropEvent, DropReason, EventError, EventOptions, EventRate, Filter, MalformedPolicy, RuleId, XdpAction, SNAP_LEN,
};

fn load() -> Filter {
    common::verdict::load(64)
}

fn udp(src: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).udp(40000, dport).payload(payload).build().to_vec()
}

/// A filter with a blocked /24 (both families), an allowlisted host in it,
/// and one drop rule.
fn setup() -> (Filter, RuleId) {
    let f = load();
    f.blocklist().insert("203.0.113.0/24".parse().unwrap()).unwrap();
    f.blocklist().insert("2001:db8:bad::/48".parse().unwrap()).unwrap();
    f.allowlist().insert("203.0.113.7/32".parse().unwrap()).unwrap();
    let rule = f.rules().add("drop udp dport 1900".parse().unwrap()).unwrap();
    (f, rule)
}

fn run(f: &Filter, frame: &[u8]) -> XdpAction {
    f.test_run(frame).unwrap_or_else(|e| panic!("test run: {e}")).action
}

/// What one frame must do and send.
struct Row {
    what: &'static str,
    frame: Vec<u8>,
    action: XdpAction,
    /// The event's reason and rule, or no event.
    event: Option<(DropReason, Option<RuleId>)>,
}

/// The event's fields, one by one, against the row; the failures.
fn check_event(row: &Row, e: &DropEvent, failures: &mut Vec<String>) {
    let (reason, rule) = row.event.expect("a row with an event");
    let mut bad = |field: &str, got: String, want: String| {
        if got != want {
            failures.push(format!("{}: event {field} is {got}, expected {want}", row.what));
        }
    };
    bad("reason", e.reason.to_string(), reason.to_string());
    bad("rule", format!("{:?}", e.rule), format!("{rule:?}"));
    bad("len", e.len.to_string(), row.frame.len().to_string());
    // A test run without a context arrives on the loopback device, queue 0.
    bad("ifindex", e.ifindex.to_string(), "1".into());
    bad("queue", e.queue.to_string(), "0".into());
    let want = &row.frame[..row.frame.len().min(SNAP_LEN)];
    bad("bytes", format!("{:02x?}", e.bytes), format!("{want:02x?}"));
    let age = std::time::SystemTime::now().duration_since(e.time).unwrap_or_default();
    bad("time (within 10 s)", (age < Duration::from_secs(10)).to_string(), "true".into());
}

/// Runs every row with a reader polling after each, and reports every
/// failing row.
fn run_table(f: &Filter, name: &str, rows: &[Row]) {
    let mut reader = f.events(EventOptions::default().rate(EventRate::per_second(1000))).expect("start reading");
    let mut failures = Vec::new();
    for row in rows {
        let action = run(f, &row.frame);
        if action != row.action {
            failures.push(format!("{}: action {action:?}, expected {:?}", row.what, row.action));
        }
        let wait = if row.event.is_some() { Duration::from_secs(2) } else { Duration::from_millis(50) };
        let events = reader.poll(wait).expect("poll");
        match (row.event, events.as_slice()) {
            (None, []) => {}
            (None, got) => failures.push(format!("{}: expected no event, got {got:?}", row.what)),
            (Some(_), [e]) => check_event(row, e, &mut failures),
            (Some(_), got) => failures.push(format!("{}: expected one event, got {}: {got:?}", row.what, got.len())),
        }
    }
    assert!(failures.is_empty(), "{name}: {} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn each_drop_sends_one_event_with_its_fields_and_passed_packets_none() {
    let (f, rule) = setup();
    let long = vec![0x5a; 400];
    let rows = vec![
        Row {
            what: "IPv4 blocklisted source",
            frame: udp("203.0.113.9", 53, PAYLOAD),
            action: XdpAction::Drop,
            event: Some((DropReason::BlockedV4, None)),
        },
        Row {
            what: "IPv4 blocklisted source, a frame longer than the snap length",
            frame: udp("203.0.113.9", 53, &long),
            action: XdpAction::Drop,
            event: Some((DropReason::BlockedV4, None)),
        },
        Row {
            what: "IPv6 blocklisted source",
            frame: udp("2001:db8:bad::9", 53, PAYLOAD),
            action: XdpAction::Drop,
            event: Some((DropReason::BlockedV6, None)),
        },
        Row {
            what: "a drop rule (the guard stage)",
            frame: udp("198.51.100.9", 1900, PAYLOAD),
            action: XdpAction::Drop,
            event: Some((DropReason::RuleDropped, Some(rule))),
        },
        Row {
            what: "a drop rule over IPv6, a long frame",
            frame: udp("2001:db8::9", 1900, &long),
            action: XdpAction::Drop,
            event: Some((DropReason::RuleDropped, Some(rule))),
        },
        Row {
            what: "a clean source: passed, no event",
            frame: udp("198.51.100.9", 53, PAYLOAD),
            action: XdpAction::Pass,
            event: None,
        },
        Row {
            what: "allowlisted inside the blocked /24: no event",
            frame: udp("203.0.113.7", 1900, PAYLOAD),
            action: XdpAction::Pass,
            event: None,
        },
    ];
    run_table(&f, "drops", &rows);

    // Malformed packets, dropped by policy: an event with the frame's bytes.
    f.set_malformed_policy(MalformedPolicy::Drop);
    let good = Frame::builder().ip(ip("198.51.100.9"), IpAddr::V4(DST_V4)).udp(1, 2).payload(PAYLOAD).build();
    let rows = vec![Row {
        what: "an IPv4 header with IHL 3",
        frame: good.with_ipv4_ihl(3),
        action: XdpAction::Drop,
        event: Some((DropReason::Malformed, None)),
    }];
    run_table(&f, "malformed", &rows);
    f.set_malformed_policy(MalformedPolicy::Pass);

    // Monitor mode: would-drops pass and still send events.
    f.set_monitor(true);
    let rows = vec![
        Row {
            what: "monitor: blocklisted source",
            frame: udp("203.0.113.9", 53, PAYLOAD),
            action: XdpAction::Pass,
            event: Some((DropReason::WouldDropBlocked, None)),
        },
        Row {
            what: "monitor: a drop rule",
            frame: udp("198.51.100.9", 1900, PAYLOAD),
            action: XdpAction::Pass,
            event: Some((DropReason::WouldDropRule, Some(rule))),
        },
    ];
    run_table(&f, "monitor", &rows);
    f.set_monitor(false);

    // One rule in monitor mode (its dry run): the packet goes on through
    // the walk and is counted where it ends, and the rule's would-drop is
    // an event with its id.
    let dry = f.rules().add("monitor drop udp dport 1901".parse().unwrap()).unwrap();
    let dry_limit = f.rules().add("monitor rate-limit 1/s burst 1 udp dport 1902".parse().unwrap()).unwrap();
    let after = f.rules().add("drop udp dport 1901 from 192.0.2.0/24".parse().unwrap()).unwrap();
    let rows = vec![
        Row {
            what: "a monitored drop rule: passed, a would-drop event",
            frame: udp("198.51.100.9", 1901, PAYLOAD),
            action: XdpAction::Pass,
            event: Some((DropReason::WouldDropRule, Some(dry))),
        },
        Row {
            what: "a monitored rate limit, within it: no event",
            frame: udp("198.51.100.9", 1902, PAYLOAD),
            action: XdpAction::Pass,
            event: None,
        },
        Row {
            what: "a monitored rate limit, over it: a would-drop event",
            frame: udp("198.51.100.9", 1902, PAYLOAD),
            action: XdpAction::Pass,
            event: Some((DropReason::WouldDropLimit, Some(dry_limit))),
        },
    ];
    run_table(&f, "monitored rules", &rows);
    // A later rule that drops it: one event a packet, the drop's.
    let rows = vec![Row {
        what: "a monitored rule, then a drop rule: the drop's event alone",
        frame: udp("192.0.2.9", 1901, PAYLOAD),
        action: XdpAction::Drop,
        event: Some((DropReason::RuleDropped, Some(after))),
    }];
    run_table(&f, "a later drop", &rows);
    let s = f.stats().unwrap();
    assert_eq!((s.would_drop_rule.packets, s.would_drop_limit.packets), (1, 0), "one reason a packet: {s:?}");
    let stats = f.event_stats().unwrap();
    assert_eq!((stats.sent, stats.limited, stats.lost), (11, 0, 0), "{stats:?}");
}

#[test]
fn events_flow_only_while_a_reader_holds_a_fresh_lease() {
    let (f, _) = setup();
    let blocked = udp("203.0.113.9", 53, PAYLOAD);
    assert!(!f.events_lease_held());
    assert_eq!(run(&f, &blocked), XdpAction::Drop);
    assert_eq!(f.event_stats().unwrap().sent, 0, "no reader, no event");

    let mut reader = f.events(EventOptions::default().lease(Duration::from_millis(100))).unwrap();
    assert!(reader.poll(Duration::from_millis(20)).unwrap().is_empty(), "drops before the lease are not sent");
    run(&f, &blocked);
    assert_eq!(reader.poll(Duration::from_secs(2)).unwrap().len(), 1, "a drop under the lease");

    // The reader stops polling: its lease runs out; the next drop clears it.
    std::thread::sleep(Duration::from_millis(250));
    assert!(f.events_lease_held(), "the data plane clears the lease only at a drop");
    run(&f, &blocked);
    assert!(!f.events_lease_held(), "the first drop after the deadline clears the lease");
    run(&f, &blocked);
    assert_eq!(f.event_stats().unwrap().sent, 1, "no event after the lease ran out");
    assert!(reader.poll(Duration::ZERO).unwrap().is_empty());

    // Polling refreshed it: events again.
    assert!(f.events_lease_held());
    run(&f, &blocked);
    assert_eq!(reader.poll(Duration::from_secs(2)).unwrap().len(), 1, "a drop after the refresh");

    drop(reader);
    assert!(!f.events_lease_held(), "dropping the reader gives the lease back");
    run(&f, &blocked);
    assert_eq!(f.event_stats().unwrap().sent, 2, "no event after the reader is gone");
}

#[test]
fn one_reader_at_a_time_and_each_gives_back_only_its_own_lease() {
    let (f, _) = setup();
    let blocked = udp("203.0.113.9", 53, PAYLOAD);
    let rate = f.event_rate();
    let mut first = f.events(EventOptions::default().lease(Duration::from_secs(1))).unwrap();
    let err = f.events(EventOptions::default().rate(EventRate { per_second: 7, burst: 7 })).unwrap_err();
    match err {
        EventError::Busy { remaining } => assert!(
            remaining > Duration::ZERO && remaining <= Duration::from_millis(1035),
            "the first reader's lease runs {remaining:?} more"
        ),
        ref e => panic!("{e:?}"),
    }
    assert!(err.to_string().contains("one reader at a time"), "{err}");
    assert_eq!(f.event_rate(), rate, "a refused reader changes nothing");
    run(&f, &blocked);
    assert_eq!(first.poll(Duration::from_secs(2)).unwrap().len(), 1, "the first reader reads on");

    // The first stops polling; once its lease has run out a second takes it.
    std::thread::sleep(Duration::from_millis(1100));
    let mut second = f.events(EventOptions::default()).unwrap();
    let err = first.poll(Duration::ZERO).unwrap_err();
    assert!(matches!(err, EventError::Busy { .. }), "the first has lost it: {err:?}");
    drop(first);
    assert!(f.events_lease_held(), "the first reader's drop leaves the second's lease");
    run(&f, &blocked);
    assert_eq!(second.poll(Duration::from_secs(2)).unwrap().len(), 1, "the second reads the drop");
    // A third takes it over from the second, which holds a fresh lease.
    let third = f.events(EventOptions::default().take_over(true)).unwrap();
    let err = second.poll(Duration::ZERO).unwrap_err();
    assert!(matches!(err, EventError::Busy { .. }), "the second has lost it: {err:?}");
    drop(second);
    assert!(f.events_lease_held(), "the second reader's drop leaves the third's lease");
    drop(third);
    assert!(!f.events_lease_held(), "the third gives its lease back");
}

#[test]
fn the_per_cpu_rate_limit_caps_events_over_a_repeated_run() {
    let (f, rule) = setup();
    let burst = 5;
    let mut reader = f.events(EventOptions::default().rate(EventRate { per_second: 1, burst })).unwrap();
    assert_eq!(f.event_rate(), EventRate { per_second: 1, burst });
    // One run of 2,000 repetitions: one CPU, a few hundred microseconds.
    let frame = udp("198.51.100.9", 1900, PAYLOAD);
    let out = test_run(f.program_fd(), &frame, RunOptions::default().repeat(2000)).unwrap();
    assert_eq!(out.action(), XdpAction::Drop);
    let mut events = Vec::new();
    while let Ok(more) = reader.poll(Duration::from_millis(200)) {
        if more.is_empty() {
            break;
        }
        events.extend(more);
    }
    assert_eq!(events.len(), burst as usize, "the burst, then the rate (1/s) in well under a second");
    assert!(events.iter().all(|e| e.reason == DropReason::RuleDropped && e.rule == Some(rule)));
    let stats = f.event_stats().unwrap();
    assert_eq!(stats.sent, u64::from(burst), "{stats:?}");
    assert_eq!(stats.limited, 2000 - u64::from(burst), "{stats:?}");

    // Bad rates and leases are refused, the rate in force kept.
    for (per_second, burst) in [(0, 5), (5, 0), (2_000_000, 5)] {
        let err = f.set_event_rate(EventRate { per_second, burst }).unwrap_err();
        assert!(matches!(err, EventError::Rate { .. }), "{err}");
    }
    assert_eq!(f.event_rate(), EventRate { per_second: 1, burst: 5 });
    drop(reader);
    let err = f.events(EventOptions::default().lease(Duration::from_millis(1))).unwrap_err();
    assert!(matches!(err, EventError::Lease { .. }), "{err}");
}

#[test]
fn a_filter_pinned_before_the_events_layout_is_refused_with_the_typed_error() {
    xdpguard::testing::netns::ensure_bpffs();
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/xdpg-test-{}-evlayout", std::process::id()));
    let f = Filter::builder().v4_capacity(1024).v6_capacity(1024).max_rules(16).pin(&dir).load().expect("load");
    drop(f);
    // Layout 3: the filter before drop events (no ring, no lease word).
    xdpguard::testing::upgrade::stamp_layout(&dir, 3);
    let err = Filter::open_pinned(&dir).unwrap_err();
    let text = err.to_string();
    let now = xdpguard::testing::upgrade::FILTER_LAYOUT;
    xdpguard::testing::upgrade::stamp_layout(&dir, now);
    Filter::open_pinned(&dir).expect("reopen at this build's layout").unpin().expect("unpin");
    assert!(
        matches!(err, xdpguard::Error::Pin(xdpguard::PinError::Incompatible { found: 3, expected, .. }) if expected == now),
        "{text}"
    );
}

/// Whether `reader`'s fd polls readable within `timeout`.
fn fd_readable(reader: &xdpguard::EventReader<'_>, timeout: u16) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, timeout).expect("poll(2) on the reader's fd");
    n == 1 && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
}

#[test]
fn the_readers_fd_polls_readable_when_a_drop_sent_an_event_and_not_before_or_after_the_read() {
    let (f, rule) = setup();
    let mut reader = f.events(EventOptions::default()).unwrap();
    {
        use std::os::fd::{AsFd, AsRawFd};
        assert_eq!(reader.as_raw_fd(), reader.as_fd().as_raw_fd(), "AsRawFd and AsFd give the same fd");
    }
    assert!(!fd_readable(&reader, 50), "no event yet: the fd is not readable");
    assert!(reader.read_ready().unwrap().is_empty(), "read_ready does not wait and finds nothing");

    // A passed packet sends nothing: still not readable.
    assert_eq!(run(&f, &udp("198.51.100.9", 53, PAYLOAD)), XdpAction::Pass);
    assert!(!fd_readable(&reader, 50), "a passed packet makes no event");

    // A dropped one: readable, and read_ready returns its event.
    assert_eq!(run(&f, &udp("198.51.100.9", 1900, PAYLOAD)), XdpAction::Drop);
    assert!(fd_readable(&reader, 2000), "a drop's event makes the fd readable");
    assert!(fd_readable(&reader, 0), "level-triggered: readable until read");
    let events = reader.read_ready().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].reason, events[0].rule), (DropReason::RuleDropped, Some(rule)));
    assert!(!fd_readable(&reader, 50), "read: the fd is not readable again");
    assert!(reader.read_ready().unwrap().is_empty());
    assert_eq!(reader.lease(), EventOptions::default().lease);
}
