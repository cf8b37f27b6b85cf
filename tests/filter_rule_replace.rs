//! `Rules::replace` (what `apply` and `rule replace --file` run) with a
//! rule's `monitor` flag switched: the rule keeps its id, its counter, its
//! place and its metric series, as `rule monitor` keeps them; a rate-limit
//! rule's timed blocks stay its own. Frames through `BPF_PROG_TEST_RUN`.
//!
//! Needs root; fails (never skips) without it.

mod common {
    pub mod scratch;
    pub mod verdict;
}

use common::scratch::ScratchDir;
use common::verdict::{dst_for, ip, net, rule};
use xdpguard::metrics::{Format, Metrics};
use xdpguard::testing::frame::Frame;
use xdpguard::{BlockedBy, Counter, Filter, RuleId, XdpAction};

fn udp(src: &str, dport: u16) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).udp(40000, dport).payload(&[0x5a; 32]).build()
}

/// Sends `frame` `n` times; each gets `action`.
fn send(f: &Filter, frame: &Frame, n: usize, action: XdpAction) {
    for i in 0..n {
        let run = f.test_run(frame).expect("test run");
        assert_eq!(run.action, action, "frame {i}");
    }
}

fn hits(f: &Filter) -> Vec<(RuleId, bool, Counter)> {
    f.rules().list().unwrap().into_iter().map(|e| (e.id, e.rule.monitor, e.hits)).collect()
}

/// The value of the rule's packet counter in a scrape.
fn scraped(metrics: &Metrics, pin: &str, id: RuleId, text: &str) -> f64 {
    let body = metrics.render(Format::Prometheus);
    let key =
        format!("xdpguard_filter_rule_packets_total{{pin=\"{pin}\",rule=\"{id}\",action=\"drop\",text=\"{text}\"}} ");
    let line = body.lines().find(|l| l.starts_with(&key)).unwrap_or_else(|| panic!("no {key} in\n{body}"));
    line[key.len()..].parse().unwrap()
}

#[test]
fn a_replace_that_only_switches_monitor_keeps_the_rules_id_counter_and_series() {
    let pin = ScratchDir::bpffs("frr");
    let f = Filter::builder().v4_capacity(1024).v6_capacity(1024).max_rules(16).pin(pin.path()).load().unwrap();
    let metrics = Metrics::new().filter(pin.path()).unwrap();
    let text = "drop udp dport 9999";
    let change = f.rules().replace([rule("count udp dport 80"), rule(text)]).unwrap();
    let [count, drop] = change.ids[..] else { panic!("{change:?}") };
    let frame = udp("192.0.2.7", 9999);
    send(&f, &frame, 20, XdpAction::Drop);
    let twenty = Counter { packets: 20, bytes: 20 * frame.len() as u64 };
    assert_eq!(hits(&f)[1], (drop, false, twenty));
    assert_eq!(scraped(&metrics, pin.arg(), drop, text), 20.0);

    // Switched to monitor mode by a whole-set replace.
    let change = f.rules().replace([rule("count udp dport 80"), rule(&format!("monitor {text}"))]).unwrap();
    assert_eq!((change.added, change.removed, change.kept), (0, 0, 2), "{change:?}");
    assert_eq!(change.ids, [count, drop], "the same ids");
    assert_eq!(hits(&f)[1], (drop, true, twenty), "same id, counter kept, now monitored");
    assert_eq!(scraped(&metrics, pin.arg(), drop, text), 20.0, "the same series, its value kept");
    // It decides nothing now, and goes on counting.
    send(&f, &frame, 5, XdpAction::Pass);
    assert_eq!(hits(&f)[1].2.packets, 25);
    assert_eq!(scraped(&metrics, pin.arg(), drop, text), 25.0);

    // And back, in a set where a new rule comes before it: still its own.
    let change = f.rules().replace([rule("drop udp dport 7"), rule(text), rule("count udp dport 80")]).unwrap();
    assert_eq!((change.added, change.removed, change.kept), (1, 0, 2), "{change:?}");
    assert_eq!(change.ids[1..], [drop, count]);
    send(&f, &frame, 1, XdpAction::Drop);
    assert_eq!(hits(&f)[1], (drop, false, Counter { packets: 26, bytes: 26 * frame.len() as u64 }));
    assert_eq!(scraped(&metrics, pin.arg(), drop, text), 26.0);
}

/// Of two rules that differ only in `monitor`, each keeps its own id when
/// both stay (written the same pairs first), whatever their order.
#[test]
fn rules_written_the_same_pair_before_rules_that_differ_in_monitor() {
    let f = common::verdict::load(16);
    let change = f.rules().replace([rule("drop udp dport 53"), rule("monitor drop udp dport 53")]).unwrap();
    let [plain, watched] = change.ids[..] else { panic!("{change:?}") };
    let change = f.rules().replace([rule("monitor drop udp dport 53"), rule("drop udp dport 53")]).unwrap();
    assert_eq!(change.ids, [watched, plain], "{change:?}");
    // One of them dropped, the other switched: the switched one keeps its id.
    let change = f.rules().replace([rule("monitor drop udp dport 53")]).unwrap();
    assert_eq!((change.ids.clone(), change.removed), (vec![watched], 1));
    let change = f.rules().replace([rule("drop udp dport 53")]).unwrap();
    assert_eq!((change.ids, change.kept, change.added), (vec![watched], 1, 0));
}

/// A rate-limit rule switched to monitor mode by a replace: its timed
/// blocks stay its own (not relabelled as a removed rule's), and keep
/// blocking.
#[test]
fn a_rate_limit_rule_switched_by_replace_keeps_its_timed_blocks() {
    let f = common::verdict::load(16);
    let text = "rate-limit 1/s burst 1 block 10m udp dport 53";
    let id = f.rules().replace([rule(text)]).unwrap().ids[0];
    let frame = udp("203.0.113.8", 53);
    send(&f, &frame, 1, XdpAction::Pass);
    send(&f, &frame, 1, XdpAction::Drop);
    let by = |f: &Filter| f.timed_blocks().list().unwrap().into_iter().map(|b| (b.prefix, b.by)).collect::<Vec<_>>();
    assert_eq!(by(&f), [(net("203.0.113.8/32"), BlockedBy::Rule(id))]);
    let change = f.rules().replace([rule(&format!("monitor {text}"))]).unwrap();
    assert_eq!(change.ids, [id]);
    assert_eq!(by(&f), [(net("203.0.113.8/32"), BlockedBy::Rule(id))], "still the rule's own block");
    let run = f.test_run(&udp("203.0.113.8", 80)).unwrap();
    assert_eq!(run.action, XdpAction::Drop, "the block still drops");
}
