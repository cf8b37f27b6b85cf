//! Rate limits and timed blocks (the guard stage) through BPF_PROG_TEST_RUN
//! on the real programs, with the guard's clock stepped by
//! `Filter::advance_clock`: every packet a fixture row (action, frame
//! unchanged, exactly one filter reason moved), rule counters (matches and
//! "limited") checked beside the table.
//!
//! The limiter's sketch is per CPU: the tests pin themselves to CPU 0.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); fails, never skips, without it.

mod common {
    pub mod verdict;
}

use std::net::IpAddr;
use std::time::Duration;

use common::verdict::{ip, net, rule};
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::*;
use xdpguard::testing::model::FilterModel;
use xdpguard::{BlockedBy, Counter, Filter, IpNetwork, RuleError, RuleId, XdpAction};

/// Pins the calling thread to CPU 0 (the sketch is per CPU).
fn pin_to_cpu0() {
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).unwrap();
}

fn load() -> Filter {
    pin_to_cpu0();
    common::verdict::load(64)
}

fn udp_sized(src: &str, dport: u16, payload: usize) -> Frame {
    let src = ip(src);
    let dst = if src.is_ipv4() { IpAddr::V4(DST_V4) } else { IpAddr::V6(DST_V6) };
    Frame::builder().ip(src, dst).udp(40000, dport).payload(&vec![0x5a; payload]).build()
}

fn udp(src: &str, dport: u16) -> Frame {
    udp_sized(src, dport, 32)
}

/// (matches, limited) packets of a rule.
fn counts(f: &Filter, id: RuleId) -> (u64, u64) {
    let e = f.rules().list().unwrap().into_iter().find(|e| e.id == id).expect("rule listed");
    (e.hits.packets, e.limited.packets)
}

struct Table<'f> {
    f: &'f Filter,
    table: FixtureTable<'f, Filter>,
    failures: Vec<String>,
}

impl<'f> Table<'f> {
    fn new(f: &'f Filter, name: &str) -> Self {
        Table { f, table: FixtureTable::new(f, name), failures: Vec::new() }
    }

    /// `frame` gets `action` and moves `reason`; rule `id` (if given)
    /// counts a match, and a "limited" packet when `limited`.
    fn run(&mut self, what: &str, frame: &[u8], action: XdpAction, reason: &'static str, id: Option<(RuleId, bool)>) {
        let before = id.map(|(id, _)| counts(self.f, id));
        self.table.run(Fixture::new(what, frame).action(action).unchanged().counts(&[reason]));
        if let (Some((id, limited)), Some(b)) = (id, before) {
            let a = counts(self.f, id);
            let want = (b.0 + 1, b.1 + u64::from(limited));
            if a != want {
                self.failures.push(format!("{what}: rule {id} (matches, limited) {b:?} -> {a:?}, expected {want:?}"));
            }
        }
    }

    fn pass(&mut self, what: &str, frame: &[u8], id: RuleId) {
        self.run(what, frame, XdpAction::Pass, "passed", Some((id, false)));
    }

    fn limited(&mut self, what: &str, frame: &[u8], id: RuleId) {
        self.run(what, frame, XdpAction::Drop, "rate_limited", Some((id, true)));
    }

    fn finish(self) {
        let report = self.table.into_report();
        assert!(report.is_ok() && self.failures.is_empty(), "{report}\nrule counters:\n{}", self.failures.join("\n"));
    }
}

#[test]
fn packet_buckets_burst_and_refill() {
    let f = load();
    let id = f.rules().add(rule("rate-limit 1/s burst 5 udp dport 53")).unwrap();
    let other = f.rules().add(rule("drop udp dport 54")).unwrap();
    let mut t = Table::new(&f, "packets per second");
    for i in 1..=5 {
        t.pass(&format!("burst packet {i}"), &udp("203.0.113.1", 53), id);
    }
    t.limited("6th packet at once: over", &udp("203.0.113.1", 53), id);
    t.limited("7th: still over", &udp("203.0.113.1", 53), id);
    t.pass("another source has its own bucket", &udp("203.0.113.2", 53), id);
    t.pass("IPv6 source, own bucket", &udp("2001:db8:9::1", 53), id);
    t.run("not the rule's port", &udp("203.0.113.1", 54), XdpAction::Drop, "rule_dropped", Some((other, false)));
    f.advance_clock(Duration::from_secs(1)).unwrap();
    t.pass("1 s later: one token", &udp("203.0.113.1", 53), id);
    t.limited("and only one", &udp("203.0.113.1", 53), id);
    f.advance_clock(Duration::from_secs(10)).unwrap();
    for i in 1..=5 {
        t.pass(&format!("10 s later: the bucket refilled to its burst, {i}"), &udp("203.0.113.1", 53), id);
    }
    t.limited("not beyond it", &udp("203.0.113.1", 53), id);
    t.finish();
    let s = f.stats().unwrap();
    assert_eq!(s.rate_limited.packets, 4, "{s:?}");
}

/// IPv6 sources are keyed by their /64 by default (one customer's block:
/// an attacker rotating through its addresses gets no fresh buckets), IPv4
/// ones by address; `per src/32/128` keys each IPv6 address. The rule is
/// listed with the key it uses, and the model's key
/// (`FilterModel::limit_key`) says the same sharing.
#[test]
fn ipv6_sources_share_their_64s_bucket_by_default() {
    let f = load();
    let by64 = f.rules().add(rule("rate-limit 1/s burst 1 udp dport 53")).unwrap();
    let by128 = f.rules().add(rule("rate-limit 1/s burst 1 per src/32/128 udp dport 54")).unwrap();
    let texts: Vec<String> = f.rules().list().unwrap().into_iter().map(|e| e.rule.to_string()).collect();
    assert_eq!(
        texts,
        ["rate-limit 1/s per src/32/64 burst 1 udp dport 53", "rate-limit 1/s per src/32/128 burst 1 udp dport 54"],
        "listed with the key they use"
    );
    let (a, b, other) = ("2001:db8:5:6::1", "2001:db8:5:6:ffff:ffff:ffff:fffe", "2001:db8:5:7::1");
    let mut t = Table::new(&f, "IPv6 keyed by /64 by default, by /128 when asked");
    t.pass("default key: the /64's first packet", &udp(a, 53), by64);
    t.limited("another address of the same /64: its bucket, over", &udp(b, 53), by64);
    t.pass("the next /64: its own bucket", &udp(other, 53), by64);
    t.pass("IPv4 192.0.2.1", &udp("192.0.2.1", 53), by64);
    t.pass("IPv4 192.0.2.2: by address, its own bucket", &udp("192.0.2.2", 53), by64);
    t.limited("IPv4 192.0.2.1 again: over", &udp("192.0.2.1", 53), by64);
    t.pass("per src/32/128: the first address", &udp(a, 54), by128);
    t.pass("per src/32/128: another address of the /64, its own bucket", &udp(b, 54), by128);
    t.limited("per src/32/128: the first address again, over", &udp(a, 54), by128);
    t.finish();

    let rules: Vec<xdpguard::Rule> = f.rules().list().unwrap().into_iter().map(|e| e.rule).collect();
    let key = |r: usize, src: &str| FilterModel::limit_key(&rules[r], ip(src)).unwrap();
    assert_eq!(key(0, a), net("2001:db8:5:6::/64"));
    assert_eq!(key(0, a), key(0, b), "the model: one bucket for the /64");
    assert_ne!(key(0, a), key(0, other));
    assert_ne!(key(0, "192.0.2.1"), key(0, "192.0.2.2"));
    assert_ne!(key(1, a), key(1, b), "the model: per address with /128");
}

#[test]
fn byte_buckets() {
    let f = load();
    // 800 bit/s = 100 bytes/s, 10,000 bytes deep (real time between rows
    // refills a byte per 10 ms: far from the rows' margins).
    let id = f.rules().add(rule("rate-limit 800bit/s burst 10kB udp dport 53")).unwrap();
    let frame = udp_sized("203.0.113.1", 53, 1000);
    assert!(frame.len() * 9 <= 10_000 && frame.len() * 10 > 10_000 + 400, "{}", frame.len());
    let small = udp_sized("203.0.113.1", 53, 10);
    let mut t = Table::new(&f, "bytes per second");
    for i in 1..=9 {
        t.pass(&format!("big frame {i}"), &frame, id);
    }
    t.limited("10th big frame: over 10 kB", &frame, id);
    t.pass("a small frame still fits", &small, id);
    f.advance_clock(Duration::from_secs(25)).unwrap();
    t.pass("25 s later: 2500 bytes more", &frame, id);
    t.pass("and another", &frame, id);
    t.limited("not a third", &frame, id);
    t.finish();
}

/// A byte burst smaller than a frame is refused, naming the least (it
/// would drop every larger frame for good), and nothing changes; a small
/// byte rate's default burst still holds a jumbo frame, so its frames pass.
#[test]
fn a_byte_burst_holds_at_least_one_frame() {
    let f = load();
    let before = f.rules().add(rule("drop udp dport 9")).unwrap();
    let mut small = xdpguard::RateLimit::bytes(125_000);
    small.burst_bytes = Some(100);
    let tiny = xdpguard::Rule::rate_limit(small).udp().destination_ports("9999".parse().unwrap());
    let err = f.rules().add(tiny).unwrap_err();
    assert!(matches!(&err, RuleError::Invalid { reason, .. } if reason.contains("at least 9018 bytes")), "{err}");
    assert_eq!(f.rules().list().unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), [before], "nothing applied");
    let err = "rate-limit 1mbit/s burst 100B udp dport 9999".parse::<xdpguard::Rule>().unwrap_err();
    assert!(err.to_string().contains("smaller than one frame"), "{err}");

    // 800 bit/s is 100 bytes a second: its default burst is one jumbo
    // frame, not one second (real time between rows refills a byte per
    // 10 ms: far from the rows' margin of over 1,000 bytes).
    let id = f.rules().add(rule("rate-limit 800bit/s udp dport 9999")).unwrap();
    let big = udp_sized("203.0.113.1", 9999, 3358);
    assert!(big.len() * 2 <= 9018 && big.len() * 3 > 9018 + 1000, "{}", big.len());
    let mut t = Table::new(&f, "a small byte rate's default burst");
    t.pass("a frame larger than a second of the rate passes", &big, id);
    t.pass("a second", &big, id);
    t.limited("not a third: the burst is 9018 bytes", &big, id);
    t.finish();
}

#[test]
fn packets_and_bytes_together_and_per_prefix() {
    let f = load();
    let id = f.rules().add(rule("rate-limit 1/s 8kbit/s per src/24/64 burst 2 burst 100kB udp dport 53")).unwrap();
    let mut t = Table::new(&f, "per prefix, both rates");
    t.pass("203.0.113.1", &udp("203.0.113.1", 53), id);
    t.pass("203.0.113.200: same /24, same bucket", &udp("203.0.113.200", 53), id);
    t.limited("203.0.113.7: the /24's burst of 2 is spent", &udp("203.0.113.7", 53), id);
    t.pass("198.51.100.1: another /24", &udp("198.51.100.1", 53), id);
    t.pass("2001:db8:1:1::1", &udp("2001:db8:1:1::1", 53), id);
    t.pass("2001:db8:1:1::2: same /64", &udp("2001:db8:1:1::2", 53), id);
    t.limited("2001:db8:1:1:ffff::3: same /64, over", &udp("2001:db8:1:1:ffff::3", 53), id);
    t.pass("2001:db8:1:2::1: another /64", &udp("2001:db8:1:2::1", 53), id);
    t.finish();
}

#[test]
fn the_sketch_admits_light_sources_without_state() {
    let f = load();
    // 100/s: 10 a window (100 ms), burst 100: a key is admitted by the
    // sketch up to 5 packets a window, then gets an exact bucket.
    let id = f.rules().add(rule("rate-limit 100/s udp dport 53")).unwrap();
    let before = f.limiter_stats().unwrap();
    for i in 0..2000u32 {
        let src = format!("198.51.{}.{}", 100 + (i / 250), 1 + i % 250);
        let run = f.test_run(&udp(&src, 53)).unwrap();
        assert_eq!(run.action, XdpAction::Pass, "{src}");
    }
    let after = f.limiter_stats().unwrap();
    assert_eq!(after.buckets_made, before.buckets_made, "one packet per source makes no bucket: {after:?}");
    assert_eq!(after.buckets, 0, "{after:?}");
    // A heavy source: admitted by the sketch, then an exact bucket charged
    // with what the sketch saw: 100 pass (the burst), then over. All in one
    // sketch window: one that ended between the sketch's admissions and the
    // bucket would let the next window's admissions through as well.
    let frame = udp("203.0.113.9", 53);
    common::verdict::align(&f, Duration::from_millis(100));
    let passed = (0..130).filter(|_| f.test_run(&frame).unwrap().action == XdpAction::Pass).count();
    assert_eq!(passed, 100, "the burst exactly");
    let s = f.limiter_stats().unwrap();
    assert_eq!((s.buckets_made - before.buckets_made, s.buckets), (1, 1), "{s:?}");
    assert_eq!(counts(&f, id).1, 30);
}

#[test]
fn a_full_bucket_budget_leaves_the_decision_to_the_sketch() {
    let f = load();
    // burst 1, 1/s: admit 0 (every key is heavy at once); the sketch's
    // limit for a key without a bucket: 0 + 1 packets a window.
    f.rules().add(rule("rate-limit 1/s burst 1 udp dport 53")).unwrap();
    f.set_limiter_promote_max(10).unwrap();
    let mut real = udp("192.0.2.10", 53);
    assert_eq!(f.test_run(&real).unwrap().action, XdpAction::Pass, "the real client's first packet");
    assert_eq!(f.test_run(&real).unwrap().action, XdpAction::Drop, "its bucket: burst 1");
    // A spoofed flood in one window: 10 more buckets, then none.
    // 100 sources, twice each.
    for i in 0..200u32 {
        let src = format!("203.0.113.{}", 1 + i % 100);
        let _ = f.test_run(&udp(&src, 53)).unwrap();
    }
    let s = f.limiter_stats().unwrap();
    assert!(s.buckets_made <= 11 + 11, "the cap holds (a window may roll once): {s:?}");
    assert!(s.promote_capped > 0, "{s:?}");
    assert!(s.sketch_over > 0, "sources seen twice in a window without a bucket are over: {s:?}");
    // The real client's bucket was not evicted: still over, then refilled.
    assert_eq!(f.test_run(&real).unwrap().action, XdpAction::Drop, "its bucket is still there");
    f.advance_clock(Duration::from_secs(2)).unwrap();
    real = udp("192.0.2.10", 53);
    assert_eq!(f.test_run(&real).unwrap().action, XdpAction::Pass, "refilled");
}

#[test]
fn monitor_modes_count_and_pass() {
    let f = load();
    let mon = f.rules().add(rule("monitor rate-limit 1/s burst 1 udp dport 53")).unwrap();
    let id = f.rules().add(rule("rate-limit 1/s burst 1 block 1m udp dport 53")).unwrap();
    let mut t = Table::new(&f, "monitor");
    t.pass("first packet, both rules", &udp("203.0.113.1", 53), id);
    assert_eq!(counts(&f, mon), (1, 0));
    // The whole filter in monitor mode: would drop, no auto-block.
    f.set_monitor(true);
    t.run("over, monitor mode", &udp("203.0.113.1", 53), XdpAction::Pass, "would_drop_limit", Some((id, true)));
    assert_eq!(counts(&f, mon), (2, 1), "the monitored rule counts what it would limit and goes on");
    assert!(f.timed_blocks().list().unwrap().is_empty(), "monitor mode blocks no one");
    f.set_monitor(false);
    t.limited("over, for real", &udp("203.0.113.1", 53), id);
    let blocks = f.timed_blocks().list().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!((blocks[0].prefix, blocks[0].by), (net("203.0.113.1/32"), BlockedBy::Rule(id)));
    t.finish();
}

/// `block ... after N` counts the over-limit packets of one episode: a
/// bucket refilled whole starts the count again, and a dry run counts none.
#[test]
fn block_after_n_counts_one_episode() {
    let f = load();
    let id = f.rules().add(rule("rate-limit 1/s burst 2 block 1m after 3 udp dport 57")).unwrap();
    let mut t = Table::new(&f, "after N, one episode");
    let src = "192.0.2.60";
    for round in 1..=3 {
        t.pass(&format!("round {round}: 1"), &udp(src, 57), id);
        t.pass(&format!("round {round}: 2"), &udp(src, 57), id);
        t.limited(&format!("round {round}: one packet over"), &udp(src, 57), id);
        f.advance_clock(Duration::from_secs(3)).unwrap();
    }
    t.run("three slips, each in an episode of its own: not blocked", &udp(src, 80), XdpAction::Pass, "passed", None);
    // The whole filter in monitor mode: what would be over counts toward
    // no block once the dry run ends.
    f.set_monitor(true);
    t.pass("monitor: 1", &udp(src, 57), id);
    t.pass("monitor: 2", &udp(src, 57), id);
    for i in 1..=4 {
        t.run(&format!("monitor: over {i}"), &udp(src, 57), XdpAction::Pass, "would_drop_limit", Some((id, true)));
    }
    f.set_monitor(false);
    t.limited("for real: over once", &udp(src, 57), id);
    t.run("not blocked: the dry run's four are not counted", &udp(src, 80), XdpAction::Pass, "passed", None);
    t.limited("over twice", &udp(src, 57), id);
    t.limited("over a third time: blocked", &udp(src, 57), id);
    t.run("blocked everywhere", &udp(src, 80), XdpAction::Drop, "timed_blocked", None);
    t.finish();
}

#[test]
fn timed_blocks_expire_and_are_reclaimed() {
    let f = load();
    let tb = f.timed_blocks();
    tb.insert(net("192.0.2.7"), Duration::from_secs(60)).unwrap();
    tb.insert(net("2001:db8:7::/48"), Duration::from_secs(600)).unwrap();
    tb.insert(net("198.51.100.0/24"), Duration::from_secs(600)).unwrap();
    tb.insert(net("198.51.100.9/32"), Duration::from_secs(30)).unwrap();
    f.allowlist().insert(net("198.51.100.77/32")).unwrap();
    let list = tb.list().unwrap();
    assert_eq!(list.len(), 4, "{list:?}");
    assert_eq!(list[0].prefix, net("198.51.100.9/32"), "soonest first");
    assert!(list[0].remaining <= Duration::from_secs(30) && list[0].remaining > Duration::from_secs(29), "{list:?}");
    assert!(list.iter().all(|b| b.by == BlockedBy::Hand));
    // Blocking again never shortens a block: the /48's and the /24's 600 s
    // stay (the /32 under the /24 is its own entry), the address's 60 s
    // start again, and a new one is added, in one edit.
    let again = ["2001:db8:7::/48", "192.0.2.7", "203.0.113.5", "198.51.100.0/24"].map(net);
    let change = tb.extend(again, Duration::from_secs(60)).unwrap();
    assert_eq!((change.added, change.renewed), (1, 1), "{change:?}");
    let kept: Vec<IpNetwork> = change.kept_longer.iter().map(|b| b.prefix).collect();
    assert_eq!(kept, [net("198.51.100.0/24"), net("2001:db8:7::/48")], "{change:?}");
    assert!(change.kept_longer.iter().all(|b| b.remaining > Duration::from_secs(590)), "{change:?}");
    let left = |p: &str| tb.list().unwrap().into_iter().find(|b| b.prefix == net(p)).unwrap().remaining;
    assert!(left("2001:db8:7::/48") > Duration::from_secs(590));
    assert!((Duration::from_secs(59)..=Duration::from_secs(60)).contains(&left("192.0.2.7")));
    assert!(left("198.51.100.9/32") <= Duration::from_secs(30), "a /32 under the /24 kept its own time");
    assert!(tb.remove(net("203.0.113.5")).unwrap());

    // Nested under the live /24, both expiring with the /32 above: a
    // source under them finds two expired entries before the live one.
    tb.insert(net("198.51.100.128/25"), Duration::from_secs(30)).unwrap();
    tb.insert(net("198.51.100.130/32"), Duration::from_secs(30)).unwrap();
    let mut t = FixtureTable::new(&f, "timed blocks");
    let row = |what: &str, src: &str, action, reason| {
        Fixture::new(what.to_owned(), udp(src, 80)).action(action).unchanged().counts(&[reason])
    };
    t.run(row("a blocked address", "192.0.2.7", XdpAction::Drop, "timed_blocked"));
    t.run(row("its neighbour", "192.0.2.8", XdpAction::Pass, "passed"));
    t.run(row("in a blocked /48", "2001:db8:7:1::1", XdpAction::Drop, "timed_blocked"));
    t.run(row("in a blocked /24", "198.51.100.1", XdpAction::Drop, "timed_blocked"));
    t.run(row("the allowlist wins", "198.51.100.77", XdpAction::Pass, "allowlisted"));
    f.advance_clock(Duration::from_secs(31)).unwrap();
    // The /32 inside the /24 expired: the packet finds it expired, deletes
    // it, and the /24 still blocks.
    t.run(row("expired /32 inside a live /24", "198.51.100.9", XdpAction::Drop, "timed_blocked"));
    assert_eq!(f.limiter_stats().unwrap().expired, 1, "the data plane reclaimed it");
    t.run(row("two expired blocks over a live /24", "198.51.100.130", XdpAction::Drop, "timed_blocked"));
    assert_eq!(f.limiter_stats().unwrap().expired, 3, "the data plane reclaimed both");
    f.advance_clock(Duration::from_secs(30)).unwrap();
    t.run(row("61 s later: the address expired", "192.0.2.7", XdpAction::Pass, "passed"));
    f.set_monitor(true);
    t.run(row("monitor mode: would drop", "198.51.100.1", XdpAction::Pass, "would_drop_timed"));
    f.set_monitor(false);
    t.finish();
    let mut left: Vec<IpNetwork> = tb.list().unwrap().into_iter().map(|b| b.prefix).collect();
    left.sort();
    assert_eq!(left, [net("198.51.100.0/24"), net("2001:db8:7::/48")]);
    assert!(tb.remove(net("198.51.100.0/24")).unwrap());
    assert!(!tb.remove(net("198.51.100.0/24")).unwrap());
    // Errors: a TTL out of range changes nothing.
    assert!(matches!(tb.insert(net("192.0.2.1"), Duration::from_millis(10)), Err(RuleError::BadTtl { .. })));
    assert_eq!(tb.list().unwrap().len(), 1);
    f.advance_clock(Duration::from_secs(600)).unwrap();
    assert!(tb.list().unwrap().is_empty(), "user space reclaims the expired ones");
    let run = f.test_run(&udp("2001:db8:7:1::1", 80)).unwrap();
    assert_eq!(run.action, XdpAction::Pass);
    let _ = Counter::default();
}

#[test]
fn auto_block_by_a_rate_limit() {
    let f = load();
    let id = f.rules().add(rule("rate-limit 1/s burst 2 per src/24/128 block 10m udp dport 53")).unwrap();
    let mut t = Table::new(&f, "auto-block");
    t.pass("1", &udp("203.0.113.1", 53), id);
    t.pass("2", &udp("203.0.113.2", 53), id);
    t.limited("3: over, and its /24 is blocked", &udp("203.0.113.3", 53), id);
    t.run("the /24 is blocked on any port", &udp("203.0.113.99", 80), XdpAction::Drop, "timed_blocked", None);
    t.run("before the rules see it", &udp("203.0.113.4", 53), XdpAction::Drop, "timed_blocked", None);
    assert_eq!(counts(&f, id), (3, 1), "the blocked packets reach no rule");
    let e = f.rules().list().unwrap().into_iter().find(|e| e.id == id).unwrap();
    assert_eq!(e.auto_blocks, 1);
    let blocks = f.timed_blocks().list().unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].prefix, blocks[0].by), (net("203.0.113.0/24"), BlockedBy::Rule(id)));
    assert!(blocks[0].remaining > Duration::from_secs(590), "{blocks:?}");
    f.advance_clock(Duration::from_secs(601)).unwrap();
    t.run("10 min later: unblocked", &udp("203.0.113.99", 80), XdpAction::Pass, "passed", None);
    t.pass("and limited afresh", &udp("203.0.113.4", 53), id);

    // `after N`: blocked by the Nth packet over the limit.
    let patient = f.rules().add(rule("rate-limit 1/s burst 1 block 1m after 3 udp dport 55")).unwrap();
    t.pass("after 3: first packet", &udp("192.0.2.50", 55), patient);
    t.limited("over once: not blocked yet", &udp("192.0.2.50", 55), patient);
    t.limited("over twice: not yet", &udp("192.0.2.50", 55), patient);
    t.run("still reaches other ports", &udp("192.0.2.50", 80), XdpAction::Pass, "passed", None);
    t.limited("over a third time: blocked", &udp("192.0.2.50", 55), patient);
    t.run("now blocked everywhere", &udp("192.0.2.50", 80), XdpAction::Drop, "timed_blocked", None);
    f.timed_blocks().remove(net("192.0.2.50/32")).unwrap();
    // `after 1` is the default: the first packet over blocks.
    let eager = f.rules().add(rule("rate-limit 1/s burst 1 block 1m after 1 udp dport 56")).unwrap();
    t.pass("after 1: first packet", &udp("192.0.2.51", 56), eager);
    t.limited("over once: blocked", &udp("192.0.2.51", 56), eager);
    t.run("blocked everywhere", &udp("192.0.2.51", 80), XdpAction::Drop, "timed_blocked", None);
    f.timed_blocks().remove(net("192.0.2.51/32")).unwrap();

    // IPv6: keyed and blocked by /64.
    let v6 = f.rules().add(rule("rate-limit 1/s burst 1 per src/32/64 block 30s ipv6 udp dport 54")).unwrap();
    t.pass("v6 1", &udp("2001:db8:1:2::1", 54), v6);
    t.limited("v6 2, same /64: over, the /64 blocked", &udp("2001:db8:1:2::ff", 54), v6);
    t.run("the /64 is blocked", &udp("2001:db8:1:2:abcd::1", 80), XdpAction::Drop, "timed_blocked", None);
    t.run("the next /64 is not", &udp("2001:db8:1:3::1", 80), XdpAction::Pass, "passed", None);
    let blocks = f.timed_blocks().list().unwrap();
    assert_eq!(
        blocks.iter().map(|b| (b.prefix, b.by)).collect::<Vec<_>>(),
        [(net("2001:db8:1:2::/64"), BlockedBy::Rule(v6))]
    );
    f.advance_clock(Duration::from_secs(31)).unwrap();
    t.run("30 s later: unblocked", &udp("2001:db8:1:2:abcd::1", 80), XdpAction::Pass, "passed", None);
    t.finish();
}

/// Rule ids are reused; a bucket (and its over-limit count) is its rule's.
#[test]
fn a_new_rule_on_a_reused_id_starts_with_no_buckets() {
    let f = load();
    let old = f.rules().add(rule("rate-limit 1/s burst 2 udp dport 53")).unwrap();
    let mut t = Table::new(&f, "a reused rule id");
    t.pass("old rule: 1", &udp("203.0.113.7", 53), old);
    t.pass("old rule: 2", &udp("203.0.113.7", 53), old);
    for i in 1..=3 {
        t.limited(&format!("old rule: over {i}"), &udp("203.0.113.7", 53), old);
    }
    assert_eq!(f.limiter_stats().unwrap().buckets, 1, "the source has a bucket");
    f.rules().remove(old).unwrap();
    let new = f.rules().add(rule("rate-limit 1000/s burst 1000 block 1m after 2 udp dport 53")).unwrap();
    assert_eq!(new, old, "the id is reused (what this test is about)");
    assert_eq!(f.limiter_stats().unwrap().buckets, 0, "the old rule's buckets went before the new rule came");
    for i in 1..=5 {
        t.pass(&format!("new rule, far within its limit: {i}"), &udp("203.0.113.7", 53), new);
    }
    t.finish();
    assert!(f.timed_blocks().list().unwrap().is_empty(), "no auto-block");
}

/// A timed block names the rule that made it, and never another rule that
/// got its id later: a removed rule's blocks keep blocking until they
/// expire, listed as a removed rule's.
#[test]
fn a_removed_rules_timed_blocks_are_not_listed_as_a_new_rules() {
    let f = load();
    let old = f.rules().add(rule("rate-limit 1/s burst 1 block 10m udp dport 53")).unwrap();
    let mut t = Table::new(&f, "a removed rule's timed blocks");
    t.pass("old rule: 1", &udp("203.0.113.8", 53), old);
    t.limited("old rule: over, blocked", &udp("203.0.113.8", 53), old);
    t.finish();
    let by = |f: &Filter| f.timed_blocks().list().unwrap().into_iter().map(|b| (b.prefix, b.by)).collect::<Vec<_>>();
    assert_eq!(by(&f), [(net("203.0.113.8/32"), BlockedBy::Rule(old))]);
    f.rules().remove(old).unwrap();
    assert_eq!(by(&f), [(net("203.0.113.8/32"), BlockedBy::RemovedRule)], "removed, its id free");
    let new = f.rules().add(rule("rate-limit 1/s burst 1 block 10m udp dport 54")).unwrap();
    assert_eq!(new, old, "the id is reused (what this test is about)");
    assert_eq!(by(&f), [(net("203.0.113.8/32"), BlockedBy::RemovedRule)], "not the new rule's");
    let mut t = Table::new(&f, "the new rule's own block");
    t.run("the old block still drops", &udp("203.0.113.8", 80), XdpAction::Drop, "timed_blocked", None);
    t.pass("new rule: 1", &udp("203.0.113.9", 54), new);
    t.limited("new rule: over, blocked", &udp("203.0.113.9", 54), new);
    t.finish();
    let mut listed = by(&f);
    listed.sort_by_key(|(net, _)| *net);
    assert_eq!(
        listed,
        [(net("203.0.113.8/32"), BlockedBy::RemovedRule), (net("203.0.113.9/32"), BlockedBy::Rule(new))]
    );
}

#[test]
fn a_full_lru_evicts_cold_buckets_not_an_active_client() {
    // The default table (65,536), and one of `max_limit_buckets`.
    full_lru_keeps_the_active_client(load(), 70_000, 500, 65_536);
    let small = Filter::builder().v4_capacity(1024).v6_capacity(1024).max_limit_buckets(300).load().expect("load");
    full_lru_keeps_the_active_client(small, 1_000, 20, 300);
}

/// Admit 0 and no cap: every new source gets a bucket, so `sources`
/// sources overfill a table of `capacity`; the client, over its limit and
/// seen every `every` sources, keeps its bucket.
///
/// Real time runs between the steps (the clock can only be stepped
/// forward), so the client's bucket must not refill while the loop runs,
/// however slowly a loaded machine runs it. With `1/s burst 1` it did
/// after one second: on 2 busy cores the loop takes longer than that, and
/// the refilled client passed as if its bucket had been evicted. A byte
/// rate of 1 B/s drained with small frames and probed with large ones
/// refills a probe only after `PROBE - DRAIN` seconds (~17 minutes),
/// while an evicted bucket is made fresh (its whole burst) and passes the
/// probe at once: the verdict tells eviction apart from time. The thread
/// stays on one CPU (the LRU hands out and evicts nodes per CPU).
fn full_lru_keeps_the_active_client(f: Filter, sources: u32, every: u32, capacity: u64) {
    pin_to_cpu0();
    // 8 bit/s; the burst defaults to one jumbo frame (9,018 bytes).
    f.rules().add(rule("rate-limit 8bit/s udp dport 53")).unwrap();
    f.set_limiter_promote_max(u32::MAX).unwrap();
    let drain = udp_sized("192.0.2.10", 53, 0);
    let probe = udp_sized("192.0.2.10", 53, 1000);
    assert!(probe.len() - drain.len() >= 1000, "{} vs {} bytes", probe.len(), drain.len());
    // Drain the bucket with small frames: it is left within one of them of
    // empty, and a probe needs ~1,000 s of refill.
    let mut drained = 0;
    while f.test_run(&drain).unwrap().action == XdpAction::Pass {
        drained += 1;
        assert!(drained <= 9_018 / drain.len() + 1, "the client's bucket never emptied");
    }
    assert!(drained >= 9_018 / drain.len() - 1, "the client's first {drained} frames passed: its whole burst");
    assert_eq!(f.test_run(&probe).unwrap().action, XdpAction::Drop, "the client is over its limit");
    let mut client_passed = 0;
    for i in 0..sources {
        let src = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff);
        assert_eq!(f.test_run(&udp(&src, 53)).unwrap().action, XdpAction::Pass, "{src}: a new bucket, full");
        if i % every == 0 && f.test_run(&probe).unwrap().action == XdpAction::Pass {
            client_passed += 1;
        }
    }
    let s = f.limiter_stats().unwrap();
    assert!(s.buckets_made >= u64::from(sources), "{s:?}");
    assert!(s.buckets as u64 <= capacity, "bounded by {capacity}: {s:?}");
    // The client, over its limit all along, kept its bucket: evicting it
    // would have given it a fresh burst.
    assert_eq!(client_passed, 0, "the active client's bucket was never evicted (table of {capacity})");
    // And the probe was refused by the bucket's state, not for its size:
    // once the bucket has refilled it passes.
    f.advance_clock(Duration::from_secs(2_000)).unwrap();
    assert_eq!(f.test_run(&probe).unwrap().action, XdpAction::Pass, "the client's bucket refilled");
}

/// A loaded filter reports the rule stage's capacities it was loaded with:
/// what its builder said it would load (defaults applied, the rule index
/// rounded up to even), and none without a rule stage.
#[test]
fn a_filter_reports_the_rule_capacities_its_builder_set() {
    let builder = || Filter::builder().v4_capacity(1024).v6_capacity(1024);
    let b = builder().max_rules(100).max_rule_refs(1001).max_set_entries(77).max_timed_blocks(5).max_limit_buckets(9);
    let wanted = b.rule_capacities();
    assert_eq!(
        wanted.named(),
        [
            ("max_rules", 100),
            ("max_rule_records", 200),
            ("max_rule_refs", 1002),
            ("max_set_entries", 77),
            ("max_timed_blocks", 5),
            ("max_limit_buckets", 9)
        ]
    );
    let f = b.load().expect("load");
    assert_eq!(f.rule_capacities(), Some(wanted));
    let defaults = builder().load().expect("load");
    assert_eq!(defaults.rule_capacities(), Some(Filter::builder().rule_capacities()));
    assert_eq!(defaults.rule_capacities().map(|c| c.max_rules), Some(xdpguard::DEFAULT_MAX_RULES));
    assert_eq!(defaults.rule_capacities().map(|c| c.max_limit_buckets), Some(xdpguard::DEFAULT_MAX_LIMIT_BUCKETS));
    let Err(bad) = builder().max_limit_buckets(0).load() else { panic!("no buckets is refused") };
    assert!(bad.to_string().contains("max_limit_buckets"), "{bad}");
    let bare = builder().guard(false).load().expect("load without a rule stage");
    assert_eq!(bare.rule_capacities(), None);
}

/// The timed-block table's capacity is the builder's (`max_timed_blocks`):
/// full, an insert is refused with a `RuleError::Full` that names the
/// option, the blocks in it keep blocking, and a rate limit's auto-block is
/// counted as failed (its packets still limited) until a block is removed.
#[test]
fn a_full_timed_block_table_refuses_and_names_its_capacity() {
    pin_to_cpu0();
    let Err(bad) = Filter::builder().max_timed_blocks(0).load() else { panic!("a capacity of 0 is refused") };
    assert!(bad.to_string().contains("max_timed_blocks"), "{bad}");
    let f = Filter::builder().v4_capacity(1024).v6_capacity(1024).max_timed_blocks(3).load().expect("load");
    let tb = f.timed_blocks();
    for b in ["192.0.2.7", "192.0.2.8", "2001:db8:7::/48"] {
        tb.insert(net(b), Duration::from_secs(60)).unwrap();
    }
    let err = tb.insert(net("192.0.2.9"), Duration::from_secs(60)).unwrap_err();
    assert!(matches!(err, RuleError::Full { capacity: 3, setter: "max_timed_blocks", .. }), "{err:?}");
    assert!(err.to_string().contains("--max-timed-blocks"), "{err}");
    // Renewing a block already there needs no room.
    tb.insert(net("192.0.2.7"), Duration::from_secs(120)).unwrap();
    assert_eq!(tb.list().unwrap().len(), 3);

    let id = f.rules().add(rule("rate-limit 1/s burst 1 block 10m udp dport 53")).unwrap();
    let mut t = Table::new(&f, "full timed-block table");
    t.run("a block made before it filled", &udp("192.0.2.8", 53), XdpAction::Drop, "timed_blocked", None);
    t.pass("1", &udp("198.51.100.1", 53), id);
    t.limited("2: over, no room for its block", &udp("198.51.100.1", 53), id);
    t.run("so not blocked elsewhere", &udp("198.51.100.1", 80), XdpAction::Pass, "passed", None);
    assert_eq!(f.limiter_stats().unwrap().blocks_failed, 1);
    assert!(tb.remove(net("192.0.2.8")).unwrap());
    t.limited("3: over again, blocked now", &udp("198.51.100.1", 53), id);
    t.run("blocked on any port", &udp("198.51.100.1", 80), XdpAction::Drop, "timed_blocked", None);
    t.finish();
    assert_eq!(tb.list().unwrap().len(), 3);
}
