//! The metrics exporter (`xdpguard metrics`, src/bin/xdpguard/metrics.rs,
//! over src/metrics/) end to end: pinned filter, load balancer and
//! decapsulators in test namespaces, the exporter listening inside one,
//! scraped with curl from there, its output checked by `promtool check
//! metrics` (Debian's prometheus), and counters that move with real
//! traffic. Also `xdpguard-lb stats --watch`, and the exporter's typed
//! error when its address is taken.
//!
//! Needs root; fails (never skips) without it.

mod common {
    pub mod cli;
    pub mod scratch;
    pub mod udp_echo;
}

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{Running, XDPGUARD, XDPGUARD_LB};
use common::scratch::ScratchDir;
use common::udp_echo::{udp_echo_reaches, UdpEcho};
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::{NetNs, Pair};

const LISTEN: &str = "127.0.0.1:9435";
const UDP_PORT: u16 = 7100;

/// `xdpguard metrics` with these arguments, inside `ns`.
fn exporter(ns: &NetNs, args: &[&str]) -> Running {
    // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
    let child = Command::new(XDPGUARD.path())
        .args(["metrics", "--netns", &ns.name, "--listen", LISTEN])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the exporter");
    Running(child)
}

/// One scrape with curl inside `ns`: (content type, body).
fn scrape(ns: &NetNs, accept: Option<&str>) -> (String, String) {
    let url = format!("http://{LISTEN}/metrics");
    let header = format!("Accept: {}", accept.unwrap_or("*/*"));
    let started = Instant::now();
    loop {
        // The last line is the content type (`-w`), after the body.
        let out =
            ns.try_exec(&["curl", "-sS", "--fail", "--noproxy", "*", "-H", &header, "-w", "\n%{content_type}", &url]);
        if out.status.success() {
            let text = String::from_utf8(out.stdout).expect("UTF-8 metrics");
            let (body, content_type) = text.rsplit_once('\n').unwrap();
            return (content_type.to_owned(), body.to_owned());
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the exporter never answered: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics` on a scrape (Prometheus text format): no
/// parse error and no lint problem (its exit status is 3 for those).
fn promtool_check(body: &str) {
    let dir = ScratchDir::new("/tmp", "metrics");
    std::fs::write(dir.path(), body).unwrap();
    let file = std::fs::File::open(dir.path()).unwrap();
    let out = Command::new("promtool").args(["check", "metrics"]).stdin(file).output().expect("run promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics: {said}\n{body}");
    let _ = std::fs::remove_file(dir.path());
}

/// The samples of a scrape: `name{labels}` to value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}"));
            (key.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a number: {l}")))
        })
        .collect()
}

/// The value of `name` with `labels` (given in their encoded order).
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let key = format!("{name}{{{}}}", labels.join(","));
    *samples.get(&key).unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

/// Sends `n` UDP datagrams of `len` bytes from `src` to `dst` (no answer
/// awaited: the filter drops them). Call inside the sender's namespace.
fn send_udp(src: IpAddr, dst: SocketAddr, n: usize, len: usize) {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind");
    for _ in 0..n {
        sock.send_to(&vec![0x5a; len], dst).expect("send");
    }
}

#[test]
fn the_exporter_serves_pinned_programs_and_its_counters_move_with_traffic() {
    // A filter on the server of a pair; 192.0.2.3 of the client is blocked.
    let pair = Pair::new("met");
    pair.client.addr("eth0", "192.0.2.3/24");
    pair.client.addr("eth0", "192.0.2.5/24");
    pair.server.static_neighbours("eth0", &["192.0.2.1", "192.0.2.3"], pair.client.mac("eth0"));
    pair.client.static_neighbours("eth0", &["192.0.2.2"], pair.server.mac("eth0"));
    let _echo = UdpEcho::start(&pair.server, UDP_PORT);
    let fpin = ScratchDir::bpffs("metf");
    let fp = fpin.arg();
    let attach_filter = ["attach", "--iface", "eth0", "--netns", &pair.server.name, "--pin", fp];
    XDPGUARD.ok(&[&attach_filter[..], &["--max-timed-blocks", "5000", "--max-limit-buckets", "3000"]].concat());
    XDPGUARD.ok(&["block", "192.0.2.3", "--pin", fp]);
    // Two rules: count what goes to the echo port, drop it from 192.0.2.5.
    let port = UDP_PORT.to_string();
    XDPGUARD.ok(&["rule", "add", "--pin", fp, "count", "udp", "dport", &port]);
    XDPGUARD.ok(&["rule", "add", "--pin", fp, "drop", "udp", "dport", &port, "from", "192.0.2.5"]);
    let (count_text, drop_text) =
        (format!("count udp dport {UDP_PORT}"), format!("drop udp from 192.0.2.5/32 dport {UDP_PORT}"));
    let count_rule = [("pin", fp), ("rule", "0"), ("action", "count"), ("text", count_text.as_str())];
    let drop_rule = [("pin", fp), ("rule", "1"), ("action", "drop"), ("text", drop_text.as_str())];

    // An IPIP load balancer with two backends, each with a pinned
    // decapsulator.
    let net = LbNet::new("metl", 2, BackendKind::VipOnLoopback);
    let _servers: Vec<Servers> = net
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| Servers::start(ns, &format!("b{}", i + 1), 80, vec![IpAddr::V4(VIP_V4)]))
        .collect();
    let lpin = ScratchDir::bpffs("metl");
    let lp = lpin.arg();
    let dpins: Vec<ScratchDir> = (0..2).map(|_| ScratchDir::bpffs("metd")).collect();
    let lb = XDPGUARD_LB;
    lb.ok(&[
        "attach",
        "--iface",
        "eth0",
        "--iface",
        "eth1",
        "--netns",
        &net.lb.name,
        "--ipip-source",
        IPIP_SRC_V4,
        "--pin",
        lp,
    ]);
    let vip = "203.0.113.10:80";
    lb.ok(&["vip", "add", vip, "--mode", "ipip", "--pin", lp]);
    for (i, (ns, dp)) in net.backends.iter().zip(&dpins).enumerate() {
        let local = backend_v4(i + 1).to_string();
        lb.ok(&["backend", "add", vip, &local, "--pin", lp]);
        lb.ok(&["decap", "attach", "--iface", "eth0", "--local", &local, "--netns", &ns.name, "--pin", dp.arg()]);
    }

    // The exporter, listening inside the filter's namespace.
    let args = ["--filter", fp, "--lb", lp, "--decap", dpins[0].arg(), "--decap", dpins[1].arg()];
    let _exporter = exporter(&pair.server, &args);
    let (content_type, before) = scrape(&pair.server, None);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check(&before);
    let before = samples(&before);
    for (program, pin) in [("filter", fp), ("lb", lp), ("decap", dpins[0].arg()), ("decap", dpins[1].arg())] {
        assert_eq!(value(&before, "xdpguard_up", &[("program", program), ("pin", pin)]), 1.0, "{program} {pin}");
    }
    let attached = [("program", "filter"), ("pin", fp), ("interface", "eth0"), ("mode", "native")];
    assert_eq!(value(&before, "xdpguard_attached", &attached), 1.0);
    assert_eq!(value(&before, "xdpguard_filter_list_entries", &[("pin", fp), ("list", "block")]), 1.0);
    assert_eq!(value(&before, "xdpguard_filter_monitor", &[("pin", fp)]), 0.0);
    assert_eq!(value(&before, "xdpguard_filter_rule_packets_total", &drop_rule), 0.0);
    assert_eq!(value(&before, "xdpguard_filter_rule_monitor", &[("pin", fp), ("rule", "1")]), 0.0);
    let backend1 = backend_v4(1).to_string();
    let vip_label = format!("tcp {vip}");
    let b1 = [("pin", lp), ("vip", vip_label.as_str()), ("backend", backend1.as_str())];
    assert_eq!(value(&before, "xdpguard_lb_backend_weight", &b1), 1.0);
    let vl = [("pin", lp), ("vip", vip_label.as_str())];
    assert_eq!(value(&before, "xdpguard_lb_vip_backends", &[vl[0], vl[1], ("state", "active")]), 2.0);

    // Real traffic: 200 datagrams the filter drops, 100 it passes (echoed),
    // 20 connections through the LB and the decapsulators.
    let server = SocketAddr::new("192.0.2.2".parse().unwrap(), UDP_PORT);
    pair.client.run(move || send_udp("192.0.2.3".parse().unwrap(), server, 200, 100));
    pair.client.run(move || send_udp("192.0.2.5".parse().unwrap(), server, 50, 100));
    pair.client.run(move || {
        for _ in 0..100 {
            assert!(udp_echo_reaches("192.0.2.1".parse().unwrap(), server, 3, Duration::from_millis(300)));
        }
    });
    let to = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    net.client.run(move || {
        for _ in 0..20 {
            Conn::open(to, Duration::from_secs(2)).expect("connect").ask().expect("answer");
        }
    });

    let (_, after) = scrape(&pair.server, None);
    promtool_check(&after);
    let after = samples(&after);
    let delta = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    let blocked = [("pin", fp), ("reason", "blocked_v4")];
    assert_eq!(delta("xdpguard_filter_packets_total", &blocked), 200.0, "exactly the datagrams sent");
    assert_eq!(delta("xdpguard_filter_bytes_total", &blocked), 200.0 * (14.0 + 20.0 + 8.0 + 100.0));
    assert!(delta("xdpguard_filter_packets_total", &[("pin", fp), ("reason", "passed")]) >= 100.0);
    // The rules: the drop rule exactly the 50 from 192.0.2.5, the count rule
    // those and the echoed ones (not the blocklisted: the lists come first).
    assert_eq!(delta("xdpguard_filter_rule_packets_total", &drop_rule), 50.0);
    assert_eq!(delta("xdpguard_filter_rule_bytes_total", &drop_rule), 50.0 * (14.0 + 20.0 + 8.0 + 100.0));
    assert_eq!(delta("xdpguard_filter_packets_total", &[("pin", fp), ("reason", "rule_dropped")]), 50.0);
    let counted = delta("xdpguard_filter_rule_packets_total", &count_rule);
    assert!((150.0..400.0).contains(&counted), "{counted}");
    let vip_packets = delta("xdpguard_lb_vip_packets_total", &vl);
    assert!(vip_packets >= 20.0 * 4.0, "a connection is a few packets each way: {vip_packets}");
    assert!(delta("xdpguard_lb_vip_new_flows_total", &vl) >= 20.0);
    let mut backends = 0.0;
    let mut decapsulated = 0.0;
    for (i, dp) in dpins.iter().enumerate() {
        let b = backend_v4(i + 1).to_string();
        backends += delta("xdpguard_lb_backend_packets_total", &[vl[0], vl[1], ("backend", b.as_str())]);
        decapsulated += delta("xdpguard_decap_packets_total", &[("pin", dp.arg()), ("reason", "decapsulated")]);
        let resolved = [vl[0], vl[1], ("backend", b.as_str()), ("state", "resolved")];
        assert_eq!(value(&after, "xdpguard_lb_backend_neighbour_state", &resolved), 1.0, "{b}");
        let hop = [vl[0], vl[1], ("backend", b.as_str()), ("via", b.as_str()), ("interface", "eth1")];
        assert_eq!(value(&after, "xdpguard_lb_backend_next_hop", &hop), 1.0, "{b}");
    }
    assert_eq!(backends, vip_packets, "every VIP packet went to a backend");
    assert_eq!(decapsulated, vip_packets, "and was decapsulated there");
    let redirected = delta("xdpguard_lb_event_packets_total", &[("pin", lp), ("event", "redirected")]);
    assert_eq!(redirected, vip_packets, "out of the backends' interface");

    // Monitor mode, for the whole filter and then for the drop rule: the
    // gauges say so, the rule's series goes on (same labels), what it would
    // drop is counted and passed.
    XDPGUARD.ok(&["monitor", "--pin", fp, "on"]);
    XDPGUARD.ok(&["rule", "monitor", "--pin", fp, "1"]);
    pair.client.run(move || send_udp("192.0.2.5".parse().unwrap(), server, 10, 100));
    let (_, watched) = scrape(&pair.server, None);
    promtool_check(&watched);
    let watched = samples(&watched);
    assert_eq!(value(&watched, "xdpguard_filter_monitor", &[("pin", fp)]), 1.0);
    assert_eq!(value(&watched, "xdpguard_filter_rule_monitor", &[("pin", fp), ("rule", "1")]), 1.0);
    assert_eq!(value(&watched, "xdpguard_filter_rule_monitor", &[("pin", fp), ("rule", "0")]), 0.0);
    let moved = |name: &str, labels: &[(&str, &str)]| value(&watched, name, labels) - value(&after, name, labels);
    assert_eq!(moved("xdpguard_filter_rule_packets_total", &drop_rule), 10.0);
    assert_eq!(moved("xdpguard_filter_packets_total", &[("pin", fp), ("reason", "rule_dropped")]), 0.0);
    // A monitored rule decides nothing: no rule decided these, they passed.
    assert!(moved("xdpguard_filter_packets_total", &[("pin", fp), ("reason", "passed")]) >= 10.0);
    XDPGUARD.ok(&["rule", "monitor", "--pin", fp, "1", "--off"]);
    XDPGUARD.ok(&["monitor", "--pin", fp, "off"]);

    // OpenMetrics, when asked for as Prometheus asks: the same samples.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, om) = scrape(&pair.server, Some(accept));
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# UNIT xdpguard_filter_bytes bytes\n"), "{om}");
    let names = |s: &BTreeMap<String, f64>| s.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(names(&samples(&om)), names(&after));
    assert_eq!(
        value(&samples(&om), "xdpguard_filter_packets_total", &blocked),
        value(&after, "xdpguard_filter_packets_total", &blocked)
    );

    // The guard stage: a SYN-guarded port (drop mode, far above the test's
    // rate: its SYNs counted and passed), a tight rate limit a burst goes
    // over (the limiter makes an exact bucket), a timed block, and drop
    // events to a reader.
    let (syn_port, limit_port) = (7200u16, 7300u16);
    let syn_labels = |counted| [("pin", fp), ("port", "7200"), ("counted", counted)];
    XDPGUARD.ok(&["syn", "protect", "--pin", fp, &syn_port.to_string(), "--mode", "drop", "--threshold", "1000"]);
    XDPGUARD.ok(&["rule", "add", "--pin", fp, &format!("rate-limit 10/s udp dport {limit_port}")]);
    let guarded = samples(&scrape(&pair.server, None).1);
    assert_eq!(value(&guarded, "xdpguard_filter_syn_packets_total", &syn_labels("syns")), 0.0);
    assert_eq!(value(&guarded, "xdpguard_filter_timed_blocks", &[("pin", fp)]), 0.0);
    XDPGUARD.ok(&["block", "--pin", fp, "--ttl", "10m", "198.51.100.0/24"]);
    // Five SYNs: nothing listens on the port, so each connect is refused
    // (one SYN, one RST, no retry).
    let syn_to = SocketAddr::new("192.0.2.2".parse().unwrap(), syn_port);
    pair.client.run(move || {
        for _ in 0..5 {
            let refused = TcpStream::connect_timeout(&syn_to, Duration::from_secs(2)).unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
        }
    });
    let limited_to = SocketAddr::new("192.0.2.2".parse().unwrap(), limit_port);
    pair.client.run(move || send_udp("192.0.2.1".parse().unwrap(), limited_to, 300, 100));
    // A reader of one drop event; blocked datagrams until it has it.
    // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
    let child = Command::new(XDPGUARD.path())
        .args(["events", "--pin", fp, "--count", "1", "--timeout", "30"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start events");
    let mut reader = Running(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.0.try_wait().expect("events").is_none() {
        assert!(Instant::now() < deadline, "the events reader saw no drop");
        pair.client.run(move || send_udp("192.0.2.3".parse().unwrap(), server, 1, 100));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(reader);
    let (_, body) = scrape(&pair.server, None);
    promtool_check(&body);
    let guarded2 = samples(&body);
    let grew = |name: &str, labels: &[(&str, &str)]| value(&guarded2, name, labels) - value(&guarded, name, labels);
    assert_eq!(grew("xdpguard_filter_syn_packets_total", &syn_labels("syns")), 5.0);
    assert_eq!(grew("xdpguard_filter_syn_packets_total", &syn_labels("dropped")), 0.0, "under the threshold");
    assert!(value(&guarded2, "xdpguard_filter_syn_rate", &[("pin", fp), ("port", "7200")]) >= 0.0);
    assert!(grew("xdpguard_filter_limiter_total", &[("pin", fp), ("counted", "buckets_made")]) >= 1.0);
    assert!(value(&guarded2, "xdpguard_filter_limiter_buckets", &[("pin", fp)]) >= 1.0);
    assert!(grew("xdpguard_filter_packets_total", &[("pin", fp), ("reason", "rate_limited")]) >= 100.0);
    // And per rule: what it limited, and the blocks it made (none: no `block`).
    let limit_rule = XDPGUARD.json(&["rule", "list", "--pin", fp, "--json"]);
    let rules = limit_rule["rules"].as_array().unwrap();
    let limit_rule = rules.iter().find(|r| r["rule"].as_str().unwrap().starts_with("rate-limit")).unwrap();
    let limit_rule = limit_rule["id"].to_string();
    let rule_labels = [("pin", fp), ("rule", limit_rule.as_str())];
    assert!(value(&guarded2, "xdpguard_filter_rule_limited_packets_total", &rule_labels) >= 100.0);
    assert!(value(&guarded2, "xdpguard_filter_rule_limited_bytes_total", &rule_labels) >= 100.0 * 100.0);
    assert_eq!(value(&guarded2, "xdpguard_filter_rule_auto_blocks_total", &rule_labels), 0.0);
    assert_eq!(value(&guarded2, "xdpguard_filter_timed_blocks", &[("pin", fp)]), 1.0);
    assert_eq!(value(&guarded2, "xdpguard_filter_timed_blocks_capacity", &[("pin", fp)]), 5000.0, "--max-timed-blocks");
    let buckets_capacity = value(&guarded2, "xdpguard_filter_limiter_buckets_capacity", &[("pin", fp)]);
    assert_eq!(buckets_capacity, 3000.0, "--max-limit-buckets");
    assert!(grew("xdpguard_filter_drop_events_total", &[("pin", fp), ("counted", "sent")]) >= 1.0);
    for counted in ["limited", "lost"] {
        assert!(value(&guarded2, "xdpguard_filter_drop_events_total", &[("pin", fp), ("counted", counted)]) >= 0.0);
    }
    // Unprotected: the port's series go.
    XDPGUARD.ok(&["syn", "unprotect", "--pin", fp, &syn_port.to_string()]);
    let unguarded = samples(&scrape(&pair.server, None).1);
    assert!(!unguarded.keys().any(|k| k.starts_with("xdpguard_filter_syn_")), "{unguarded:#?}");

    // The filter detached: down, and its counters gone; re-created under the
    // same pin directory: read again (a new program, counting from zero).
    XDPGUARD.ok(&["detach", "--pin", fp]);
    let (_, gone) = scrape(&pair.server, None);
    promtool_check(&gone);
    let gone = samples(&gone);
    assert_eq!(value(&gone, "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 0.0);
    assert!(!gone.keys().any(|k| k.starts_with("xdpguard_filter_")), "{gone:#?}");
    assert_eq!(value(&gone, "xdpguard_up", &[("program", "lb"), ("pin", lp)]), 1.0, "the others are still read");
    XDPGUARD.ok(&attach_filter);
    XDPGUARD.ok(&["block", "192.0.2.3", "--pin", fp]);
    pair.client.run(move || send_udp("192.0.2.3".parse().unwrap(), server, 50, 100));
    let again = samples(&scrape(&pair.server, None).1);
    assert_eq!(value(&again, "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 1.0);
    assert_eq!(value(&again, "xdpguard_filter_packets_total", &blocked), 50.0, "the new program's counters");

    // A second exporter on the same address: a typed error, at once.
    // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
    let out = Command::new(XDPGUARD.path())
        .args(["metrics", "--netns", &pair.server.name, "--listen", LISTEN, "--filter", fp])
        .output()
        .expect("run the second exporter");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("error: cannot listen on {LISTEN}: the address is in use")), "{err}");

    // `xdpguard-lb stats --watch`: a round per interval, with rates from the
    // second on.
    // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
    let child = Command::new(XDPGUARD_LB.path())
        .args(["stats", "--watch", "--interval", "1", "--json", "--pin", lp])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start stats --watch");
    let mut watch = Running(child);
    let mut lines = BufReader::new(watch.0.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(first["global"].get("rates").is_none(), "{first}");
    net.client.run(move || Conn::open(to, Duration::from_secs(2)).expect("connect").ask().expect("answer"));
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(second["global"]["rates"]["redirected"]["pps"].as_f64().unwrap() > 0.0, "{second}");
    assert!(second["vips"][0]["pps"].as_f64().unwrap() > 0.0, "{second}");
    drop(watch);

    for dp in &dpins {
        lb.ok(&["decap", "detach", "--pin", dp.arg()]);
    }
    lb.ok(&["detach", "--pin", lp]);
    XDPGUARD.ok(&["detach", "--pin", fp]);
}

#[test]
fn the_exporter_needs_a_program() {
    let out = XDPGUARD.run(&["metrics", "--listen", LISTEN]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no program given: name at least one pin directory"));
}

/// The pins of a filter the exporter reads removed by hand (`rm -r`): the
/// exporter's handle holds the program's links, and keeps them while the
/// pins cannot be reopened (`xdpguard_up` 0), so the program keeps running
/// on its interface (it dropped the handle at the next scrape, which
/// detached the program).
#[test]
fn the_exporter_keeps_a_program_running_whose_pins_were_removed() {
    let pair = Pair::new("mrm");
    let pin = ScratchDir::bpffs("mrm");
    let fp = pin.arg();
    XDPGUARD.ok(&["attach", "--iface", "eth0", "--netns", &pair.server.name, "--mode", "generic", "--pin", fp]);
    let metrics = xdpguard::metrics::Metrics::new().filter(pin.path()).unwrap();
    let up = |body: &str| value(&samples(body), "xdpguard_up", &[("program", "filter"), ("pin", fp)]);
    assert_eq!(up(&metrics.render(xdpguard::metrics::Format::Prometheus)), 1.0);
    let xdp_on_eth0 =
        || String::from_utf8_lossy(&pair.server.ip(&["link", "show", "dev", "eth0"]).stdout).contains("xdp");
    assert!(xdp_on_eth0());

    std::fs::remove_dir_all(pin.path()).unwrap();
    for scrape in 0..3 {
        assert_eq!(up(&metrics.render(xdpguard::metrics::Format::Prometheus)), 0.0, "scrape {scrape}");
        assert!(xdp_on_eth0(), "the program detached at scrape {scrape} after its pins were removed");
    }
    // The last handle gone, so is the program.
    drop(metrics);
    assert!(!xdp_on_eth0(), "the exporter's handle was the program's last reference");
}

/// One GET of `target` with curl inside `ns`: (HTTP status, body).
fn get(ns: &NetNs, target: &str) -> (u16, String) {
    let url = format!("http://{LISTEN}{target}");
    let out = ns.try_exec(&["curl", "-sS", "--noproxy", "*", "-w", "\n%{http_code}", &url]);
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

/// An attachment lost (its interface deleted, `xdpguard status` says
/// "lost:") is `xdpguard_attached` 0, not a series that just ends; and a
/// query string (a scraper's `params`) still reaches /metrics.
#[test]
fn a_lost_attachment_is_exported_as_0_and_a_query_string_is_ignored() {
    let pair = Pair::new("mlo");
    let pin = ScratchDir::bpffs("mlo");
    let fp = pin.arg();
    XDPGUARD.ok(&["attach", "--iface", "eth0", "--netns", &pair.server.name, "--mode", "generic", "--pin", fp]);
    let _exporter = exporter(&pair.server, &["--filter", fp]);
    let attached = [("program", "filter"), ("pin", fp), ("interface", "eth0"), ("mode", "generic")];
    let (_, body) = scrape(&pair.server, None);
    assert_eq!(value(&samples(&body), "xdpguard_attached", &attached), 1.0);

    // The query string: the same metrics, not a 404.
    let (code, queried) = get(&pair.server, "/metrics?x=1");
    assert_eq!(code, 200, "{queried}");
    assert_eq!(value(&samples(&queried), "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 1.0);
    assert_eq!(get(&pair.server, "/elsewhere?x=1").0, 404);

    assert!(pair.server.ip(&["link", "del", "eth0"]).status.success());
    let status = XDPGUARD.ok(&["status", "--pin", fp]);
    assert!(status.contains("lost:"), "{status}");
    let (_, body) = scrape(&pair.server, None);
    promtool_check(&body);
    let lost = samples(&body);
    assert_eq!(value(&lost, "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 1.0);
    assert_eq!(value(&lost, "xdpguard_attached", &attached), 0.0, "lost: 0, not gone");
    let (_, om) = scrape(&pair.server, Some("application/openmetrics-text"));
    assert_eq!(value(&samples(&om), "xdpguard_attached", &attached), 0.0);
    XDPGUARD.ok(&["detach", "--pin", fp]);
}

#[test]
fn the_exporter_refuses_a_pin_given_twice() {
    for (first, second) in [
        ("/sys/fs/bpf/xdpguard-dup", "/sys/fs/bpf/xdpguard-dup"),
        ("/sys/fs/bpf/xdpguard-dup", "/sys/fs/bpf/xdpguard-dup/"),
    ] {
        let out = XDPGUARD.run(&["metrics", "--listen", LISTEN, "--filter", first, "--filter", second]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("the pin directory /sys/fs/bpf/xdpguard-dup is given twice"), "{err}");
    }
}

/// A scrape never waits for the pin directory's lock. With the lock of
/// the filter's directory and of its guard stage's held (as a long `apply`
/// holds them), a scrape through a handle already open returns at once
/// (well under 2 s) with the program up, its live counters, and the list
/// sizes and rules it last read; the timed blocks are counted read-only
/// (live ones only), not listed as an edit, which would wait for the lock.
/// A scrape that must open the program first does not wait either: down
/// at that scrape, the reason naming the edit; up once the lock is free.
#[test]
fn a_scrape_does_not_wait_for_an_edit_holding_the_pin_lock() {
    use nix::fcntl::{Flock, FlockArg};
    use std::sync::{mpsc, Arc, Mutex};
    use xdpguard::metrics::{Format, Metrics};
    use xdpguard::testing::frame::{Frame, DST_V4, PAYLOAD};
    use xdpguard::{Filter, XdpAction};

    let pin = ScratchDir::bpffs("mlock");
    let fp = pin.arg();
    let filter = Filter::builder().v4_capacity(64).v6_capacity(64).pin(fp).load().expect("load the filter (root)");
    filter.blocklist().insert("192.0.2.0/24".parse().unwrap()).unwrap();
    let rule = filter.rules().add("drop udp dport 1900".parse().unwrap()).unwrap().to_string();
    filter.timed_blocks().insert("198.51.100.7".parse().unwrap(), Duration::from_secs(600)).unwrap();
    filter.timed_blocks().insert("198.51.100.8".parse().unwrap(), Duration::from_secs(5)).unwrap();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook = {
        let errors = errors.clone();
        move |e: &xdpguard::metrics::MetricsError| errors.lock().unwrap().push(e.to_string())
    };
    let metrics = Metrics::new().filter(pin.path()).unwrap().on_error(hook.clone());
    let gauge = |s: &BTreeMap<String, f64>, name: &str| value(s, name, &[("pin", fp)]);
    let s = samples(&metrics.render(Format::Prometheus));
    assert_eq!(value(&s, "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 1.0);
    assert_eq!(gauge(&s, "xdpguard_filter_timed_blocks"), 2.0);

    // Renders on another thread: None when it took 2 s or more.
    let scrape_within_2s = |m: &Metrics| -> Option<String> {
        let (tx, rx) = mpsc::channel();
        let m = m.clone();
        std::thread::spawn(move || {
            let _ = tx.send(m.render(Format::Prometheus));
        });
        rx.recv_timeout(Duration::from_secs(2)).ok()
    };

    // The edit locks taken here (flock: another open file of the directory
    // conflicts, in this process too).
    let lock = |dir: &std::path::Path| {
        Flock::lock(std::fs::File::open(dir).unwrap(), FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap()
    };
    let held = [lock(pin.path()), lock(&pin.path().join("guard"))];
    // Meanwhile: the short block expires, and packets are counted.
    filter.advance_clock(Duration::from_secs(10)).unwrap();
    let frame = Frame::builder().ipv4("192.0.2.1".parse().unwrap(), DST_V4).udp(40000, 53).payload(PAYLOAD).build();
    for _ in 0..3 {
        assert_eq!(filter.test_run(frame.bytes()).unwrap().action, XdpAction::Drop);
    }
    let started = Instant::now();
    let body = scrape_within_2s(&metrics).expect("a scrape waited for the pin directory's lock");
    eprintln!("scraped in {:?} with the lock held", started.elapsed());
    promtool_check(&body);
    let s = samples(&body);
    assert_eq!(value(&s, "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 1.0, "{:?}", errors.lock().unwrap());
    assert_eq!(value(&s, "xdpguard_filter_packets_total", &[("pin", fp), ("reason", "blocked_v4")]), 3.0);
    assert_eq!(value(&s, "xdpguard_filter_list_entries", &[("pin", fp), ("list", "block")]), 1.0);
    assert_eq!(gauge(&s, "xdpguard_filter_timed_blocks"), 1.0, "the expired block is not counted");
    assert!(body.contains(&format!("xdpguard_filter_rule_monitor{{pin=\"{fp}\",rule=\"{rule}\"}} 0")), "{body}");

    // No handle yet: down at this scrape, without waiting, the edit named.
    let fresh = Metrics::new().filter(pin.path()).unwrap().on_error(hook);
    errors.lock().unwrap().clear();
    let body = scrape_within_2s(&fresh).expect("a first scrape waited for the pin directory's lock");
    assert_eq!(value(&samples(&body), "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 0.0);
    let said = errors.lock().unwrap().join("\n");
    assert!(said.contains("an edit holds its lock") && said.contains(fp), "{said}");

    drop(held);
    let s = samples(&fresh.render(Format::Prometheus));
    assert_eq!(value(&s, "xdpguard_up", &[("program", "filter"), ("pin", fp)]), 1.0);
    assert_eq!(gauge(&s, "xdpguard_filter_timed_blocks"), 1.0);
    drop((metrics, fresh));
    filter.unpin().unwrap();
}
