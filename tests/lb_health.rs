//! Backend health checks (`xdpguard::health`, `xdpguard-lb health`) end to
//! end: a pinned DSR load balancer in front of three backends running
//! `python3 -m http.server`, steady curl traffic from the client, the
//! health agent running in the LB's namespace. A killed server is drained
//! within `interval × fall + timeout` (no new connection reaches it after
//! that), a restarted one restored to its weight within `rise × interval`;
//! a restarted agent restores what the previous one drained; an operator's
//! weight is never overwritten. And the probes themselves, against real
//! servers: why a check fails.
//!
//! Needs root, `python3` and `curl`; fails (never skips) without them.

mod common {
    pub mod cli;
    pub mod scratch;
}

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::cli::XDPGUARD_LB;
use common::scratch::ScratchDir;
use xdpguard::health_check::{Check, HealthChecker, HealthConfig, ProbeError};
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::{NetNs, Pair};
use xdpguard::{LoadBalancer, Vip};

const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 3;
/// What the upper bounds allow on top for scheduling: the agent's timers,
/// the test's 20 ms polls and process start-up on a shared 2-core machine
/// (measured at load average ~10: drains 0.83-0.86 s against 1.1 s,
/// restores 0.36-0.63 s against 0.6 s). Generous, as the whole suite runs
/// in parallel on CI: a late drain or restore is caught all the same, and
/// the lower bounds and the order of events are checked without slack.
const SLACK: Duration = Duration::from_millis(1500);

/// `python3 -m http.server` in a namespace, serving `dir` on port 80.
struct HttpServer {
    child: Child,
}

impl HttpServer {
    /// Starts it and waits until it accepts connections (from inside its
    /// namespace, so nothing the checker sees is warmed).
    fn start(ns: &NetNs, dir: &std::path::Path) -> HttpServer {
        let dir = dir.to_owned();
        let child = ns.run(move || {
            // Debian's python3 (on the fresh image), not a shim on the caller's PATH.
            Command::new("/usr/bin/python3")
                .args(["-m", "http.server", "80", "--bind", "0.0.0.0", "--directory"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start python3 -m http.server")
        });
        let started = Instant::now();
        ns.run(move || {
            while TcpStream::connect(("127.0.0.1", 80)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(10), "http.server never listened");
                thread::sleep(Duration::from_millis(10));
            }
        });
        HttpServer { child }
    }

    /// Kills it; returns when its socket is closed.
    fn kill(mut self) {
        self.child.kill().expect("kill http.server");
        self.child.wait().expect("reap http.server");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `xdpguard-lb health` running in the background; its stderr collected.
struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Agent {
    fn start(args: &[&str]) -> Agent {
        // check-deps: built-here (CARGO_BIN_EXE_xdpguard-lb)
        let mut child = Command::new(XDPGUARD_LB.path())
            .arg("health")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start xdpguard-lb health");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                lines.lock().unwrap().push(line);
            }
        });
        Agent { child, log, reader: Some(reader) }
    }

    /// Waits for a log line containing every one of `parts`.
    fn wait_for(&self, parts: &[&str], within: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l.clone();
            }
            assert!(started.elapsed() < within, "no agent line with {parts:?}: {:?}", self.log.lock().unwrap());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// One curl request: when it started, and the backend that
/// answered (None: it failed).
#[derive(Debug, Clone)]
struct Request {
    start: Instant,
    answer: Option<String>,
}

/// curl to the VIP in a loop from the client, a new connection each time.
struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &NetNs) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = client.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let start = Instant::now();
                // A child started from this thread is in the client's namespace.
                let out = Command::new("curl")
                    .args(["-s", "--noproxy", "*", "--max-time", "2", &format!("http://{VIP_V4}/whoami")])
                    .output()
                    .expect("run curl");
                let answer = out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned());
                l.lock().unwrap().push(Request { start, answer });
                thread::sleep(Duration::from_millis(15));
            }
        });
        Traffic { stop, log, thread: Some(thread) }
    }

    fn since(&self, t: Instant) -> Vec<Request> {
        self.log.lock().unwrap().iter().filter(|r| r.start >= t).cloned().collect()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls a backend's weight until it is `want`; returns when it was seen.
fn weight_becomes(lb: &LoadBalancer, vip: &Vip, backend: IpAddr, want: u32, within: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let w = lb.backends(vip).unwrap().into_iter().find(|b| b.addr.ip == backend).map(|b| b.weight);
        if w == Some(want) {
            return Instant::now();
        }
        assert!(started.elapsed() < within, "{backend} still at weight {w:?}, not {want}, after {within:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn failing_backends_are_drained_and_restored_under_traffic() {
    let pin = ScratchDir::bpffs("lbhealth");
    let www = ScratchDir::new("/tmp", "health-www");
    let state = ScratchDir::new("/tmp", "health-state");
    let net = LbNet::new("lhc", 3, BackendKind::VipOnLoopback);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    cli.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &net.lb.name, p[0], p[1]]);
    let vip_arg = format!("{VIP_V4}:80");
    cli.ok(&["vip", "add", &vip_arg, "--mode", "dsr", p[0], p[1]]);
    let weights = [1u32, 2, 1];
    for (i, w) in weights.iter().enumerate() {
        cli.ok(&["backend", "add", &vip_arg, &backend_v4(i + 1).to_string(), "--weight", &w.to_string(), p[0], p[1]]);
    }
    let vip = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), 80));
    let b = |i: usize| IpAddr::V4(backend_v4(i));

    // Each backend serves /whoami: its name.
    std::fs::create_dir_all(www.path()).unwrap();
    let dirs: Vec<_> = (1..=3)
        .map(|i| {
            let d = www.path().join(format!("b{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("whoami"), format!("b{i}")).unwrap();
            d
        })
        .collect();
    let mut servers: Vec<Option<HttpServer>> =
        net.backends.iter().zip(&dirs).map(|(ns, d)| Some(HttpServer::start(ns, d))).collect();

    let (interval, timeout) = (format!("{}ms", INTERVAL.as_millis()), format!("{}ms", TIMEOUT.as_millis()));
    std::fs::create_dir_all(state.path()).unwrap();
    let state_file = state.path().join("health.json");
    let state_arg = state_file.to_str().unwrap().to_owned();
    #[rustfmt::skip]
    let agent_args = [
        "--pin", pin.arg(), "--netns", &net.lb.name, "--interval", &interval, "--timeout", &timeout,
        "--rise", "2", "--fall", "3", "--http", "/whoami", "--state", &state_arg,
    ];
    let config = HealthConfig::new(Check::Http { path: "/whoami".into() })
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .rise(RISE)
        .fall(FALL);
    let (drain_bound, restore_bound) = (config.drain_bound(), config.restore_bound());
    let agent = Agent::start(&agent_args);
    agent.wait_for(&["health: checking backends every 300ms", "HTTP GET /whoami"], Duration::from_secs(5));

    let lb = LoadBalancer::open_pinned(pin.path()).unwrap();
    let traffic = Traffic::start(&net.client);
    // Every backend answers while all are healthy.
    thread::sleep(Duration::from_secs(1));
    let healthy = traffic.since(Instant::now() - Duration::from_secs(1));
    for i in 1..=3 {
        assert!(healthy.iter().any(|r| r.answer.as_deref() == Some(&format!("b{i}"))), "b{i} answers: {healthy:?}");
    }
    assert!(healthy.iter().all(|r| r.answer.is_some()), "no failures while healthy: {healthy:?}");

    // Kill b2's server: drained within interval × fall + timeout.
    servers[1].take().unwrap().kill();
    let killed = Instant::now();
    let drained = weight_becomes(&lb, &vip, b(2), 0, drain_bound + SLACK + Duration::from_secs(2));
    let took = drained - killed;
    eprintln!("b2 drained {took:?} after its server died (bound {drain_bound:?})");
    assert!(took <= drain_bound + SLACK, "drained after {took:?}, over {drain_bound:?} (+{SLACK:?})");
    assert!(took >= INTERVAL * (FALL - 1), "drained after {took:?}: before {FALL} failed checks could run");
    agent.wait_for(&["backend 198.51.100.12: down after 3 failed checks", "drained (weight 2 -> 0)"], SLACK);
    // Others untouched; b2 drained, not removed.
    let now: Vec<u32> = lb.backends(&vip).unwrap().iter().map(|b| b.weight).collect();
    assert_eq!(now, [1, 0, 1]);
    thread::sleep(Duration::from_secs(1));
    let during = traffic.since(killed);
    let failed: Vec<&Request> = during.iter().filter(|r| r.answer.is_none()).collect();
    assert!(!failed.is_empty(), "some connections reached the dead b2 before the drain: {during:?}");
    for r in &failed {
        let at = r.start - killed;
        assert!(at <= drain_bound + SLACK, "a connection failed {at:?} after the kill (bound {drain_bound:?})");
        assert!(r.start <= drained, "a connection started after the drain failed ({at:?} after the kill)");
    }
    let after = traffic.since(drained);
    assert!(after.len() >= 10, "traffic kept going: {after:?}");
    assert!(after.iter().all(|r| r.answer.as_deref().is_some_and(|a| a != "b2")), "{after:?}");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let b2 = file["backends"].as_array().unwrap().iter().find(|e| e["backend"] == "198.51.100.12").unwrap().clone();
    assert_eq!((b2["state"].as_str(), b2["drained_from"].as_u64()), (Some("down"), Some(2)), "{file}");
    assert!(b2["last_error"].as_str().unwrap().contains("198.51.100.12:80"), "{b2}");

    // Restart it: restored to weight 2 within rise × interval, and new
    // connections reach it again.
    servers[1] = Some(HttpServer::start(&net.backends[1], &dirs[1]));
    let up = Instant::now();
    let restored = weight_becomes(&lb, &vip, b(2), 2, restore_bound + SLACK + Duration::from_secs(2));
    let took = restored - up;
    eprintln!("b2 restored {took:?} after its server came back (bound {restore_bound:?})");
    assert!(took <= restore_bound + SLACK, "restored after {took:?}, over {restore_bound:?} (+{SLACK:?})");
    agent.wait_for(&["backend 198.51.100.12: up after 2 passed checks", "restored (weight 0 -> 2)"], SLACK);
    thread::sleep(Duration::from_secs(1));
    let back = traffic.since(restored);
    assert!(back.iter().any(|r| r.answer.as_deref() == Some("b2")), "b2 answers again: {back:?}");
    assert!(back.iter().all(|r| r.answer.is_some()), "{back:?}");
    drop(traffic);

    // b3 dies and is drained; the agent is killed and another started with
    // the same state file: it restores b3 when its server is back.
    servers[2].take().unwrap().kill();
    weight_becomes(&lb, &vip, b(3), 0, drain_bound + SLACK + Duration::from_secs(2));
    agent.wait_for(&["backend 198.51.100.13: down"], SLACK);
    drop(agent);
    let agent = Agent::start(&agent_args);
    agent.wait_for(&["health: checking backends"], Duration::from_secs(5));
    thread::sleep(INTERVAL * 2);
    assert_eq!(lb.backends(&vip).unwrap()[2].weight, 0, "still down: still drained");
    servers[2] = Some(HttpServer::start(&net.backends[2], &dirs[2]));
    weight_becomes(&lb, &vip, b(3), 1, restore_bound + SLACK + Duration::from_secs(2));
    agent.wait_for(&["backend 198.51.100.13: up after 2 passed checks", "restored (weight 0 -> 1)"], SLACK);

    // An operator's weight is never overwritten, and a down backend takes no
    // new flow whatever its weight: b1 dies and is drained; the operator
    // sets weight 3 while it is down: held at 0 again; it comes back at 3.
    // The same for b1 removed and added again while down (weight 4).
    servers[0].take().unwrap().kill();
    weight_becomes(&lb, &vip, b(1), 0, drain_bound + SLACK + Duration::from_secs(2));
    cli.ok(&["backend", "weight", &vip_arg, &b(1).to_string(), "3", p[0], p[1]]);
    agent.wait_for(&["backend 198.51.100.11: an operator set weight 3", "held at 0"], INTERVAL * 2 + SLACK);
    weight_becomes(&lb, &vip, b(1), 0, INTERVAL * 2 + SLACK);
    cli.ok(&["backend", "del", &vip_arg, &b(1).to_string(), p[0], p[1]]);
    cli.ok(&["backend", "add", &vip_arg, &b(1).to_string(), "--weight", "4", p[0], p[1]]);
    weight_becomes(&lb, &vip, b(1), 0, INTERVAL * 2 + SLACK);
    servers[0] = Some(HttpServer::start(&net.backends[0], &dirs[0]));
    agent.wait_for(
        &["backend 198.51.100.11: up after 2 passed checks", "restored (weight 0 -> 4)"],
        restore_bound + SLACK * 2,
    );
    let weight_of = |a| lb.backends(&vip).unwrap().iter().find(|x| x.addr.ip == b(a)).map(|x| x.weight);
    assert_eq!([weight_of(1), weight_of(2), weight_of(3)], [Some(4), Some(2), Some(1)]);
    drop(agent);
    drop(lb);
    cli.ok(&["detach", p[0], p[1]]);
}

/// A backend that goes down takes its tracked flows with it: a UDP flow
/// that keeps sending from one port (which never idles out of the
/// connection table) reaches a live backend within the drain bound after
/// its backend's server dies, not only new flows. (Weight 0 alone kept it
/// on the dead backend for good.) A DSR UDP VIP on port 81, checked with a
/// TCP connect on 81, where each backend serves both.
#[test]
fn a_down_backends_tracked_udp_flow_moves_to_a_live_one() {
    let pin = ScratchDir::bpffs("lbhealthudp");
    let net = LbNet::new("lhu", 2, BackendKind::VipOnLoopback);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    cli.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &net.lb.name, p[0], p[1]]);
    let vip_arg = format!("{VIP_V4}:81");
    cli.ok(&["vip", "add", &vip_arg, "--proto", "udp", "--mode", "dsr", p[0], p[1]]);
    for i in 1..=2 {
        cli.ok(&[
            "backend",
            "add",
            &vip_arg,
            &backend_v4(i).to_string(),
            "--weight",
            "1",
            "--proto",
            "udp",
            p[0],
            p[1],
        ]);
    }
    let mut servers: Vec<Option<Servers>> = net
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| Some(Servers::start(ns, &format!("b{}", i + 1), 81, vec![IpAddr::V4(VIP_V4)])))
        .collect();
    let interval = format!("{}ms", INTERVAL.as_millis());
    let timeout = format!("{}ms", TIMEOUT.as_millis());
    #[rustfmt::skip]
    let agent = Agent::start(&[
        "--pin", pin.arg(), "--netns", &net.lb.name, "--interval", &interval, "--timeout", &timeout,
        "--rise", "2", "--fall", "3", "--tcp", "--port", "81", "--vip", &format!("{vip_arg}/udp"),
    ]);
    agent.wait_for(&["health: checking backends"], Duration::from_secs(5));
    let drain_bound = HealthConfig::new(Check::Tcp).interval(INTERVAL).timeout(TIMEOUT).fall(FALL).drain_bound();

    // One flow: a datagram every 50 ms from one port, each answer logged
    // with when it came (None: no answer within 150 ms).
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<Request>::new()));
    let (s, l) = (stop.clone(), log.clone());
    let sender = net.client.spawn(move || {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(CLIENT_V4), 40081)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
        let to = SocketAddr::new(IpAddr::V4(VIP_V4), 81);
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            sock.send_to(b"who", to).unwrap();
            let answer = match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == to => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                _ => None,
            };
            l.lock().unwrap().push(Request { start: Instant::now(), answer });
            thread::sleep(Duration::from_millis(50));
        }
    });
    let answers_since =
        |t: Instant| -> Vec<Request> { log.lock().unwrap().iter().filter(|r| r.start >= t).cloned().collect() };
    thread::sleep(Duration::from_millis(700));
    let before = answers_since(Instant::now() - Duration::from_millis(500));
    let first = before.iter().find_map(|r| r.answer.clone()).expect("the flow is answered");
    assert!(
        before.iter().all(|r| r.answer.as_deref() == Some(first.as_str())),
        "one backend answers the flow: {before:?}"
    );
    let (dead, live) = if first == "b1" { (0, "b2") } else { (1, "b1") };

    // Its backend's servers die (the check's TCP port and the UDP service).
    servers[dead].take();
    let killed = Instant::now();
    agent.wait_for(
        &[&format!("backend {}: down after 3 failed checks", backend_v4(dead + 1)), "tracked flows moved"],
        drain_bound + SLACK + Duration::from_secs(2),
    );
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let after = answers_since(killed);
    let moved = after.iter().find(|r| r.answer.as_deref() == Some(live)).map(|r| r.start - killed);
    let took = moved.unwrap_or_else(|| panic!("the flow never reached {live} after its backend died: {after:?}"));
    eprintln!("the flow reached {live} {took:?} after its backend died (bound {drain_bound:?})");
    assert!(took <= drain_bound + SLACK, "moved after {took:?}, over {drain_bound:?} (+{SLACK:?})");
    assert!(took >= INTERVAL * (FALL - 1), "moved after {took:?}: before {FALL} failed checks could run");
    // And stays there: every datagram after it is answered by the live one.
    let settled: Vec<_> = after.iter().filter(|r| r.start - killed > took).collect();
    assert!(settled.len() >= 10, "the flow kept sending: {settled:?}");
    assert!(settled.iter().all(|r| r.answer.as_deref() == Some(live)), "{settled:?}");
    drop(agent);
    drop(servers);
    cli.ok(&["detach", p[0], p[1]]);
}

/// The probes against real servers: what passes, and why a check fails.
/// A drain is journaled before it is made (the window an agent killed
/// between the weight change and its state file left): the journal sees
/// the LB's weights unchanged and the backends to drain already holding the
/// weight to restore; a journal that fails applies nothing (each change an
/// `EditFailed` naming it, made at the next round); a restore needs no
/// journal. Probes run in a namespace of the test's own, whose only route
/// is its loopback: a backend is up while a listener holds its address.
#[test]
fn a_drain_is_journaled_before_it_is_made() {
    use xdpguard::health_check::{BackendHealth, HealthEventKind, HealthState};
    use xdpguard::{BackendAddr, ForwardingMode, VipConfig};

    let ns = NetNs::new("hjr");
    let backends: [IpAddr; 2] = ["198.51.100.11".parse().unwrap(), "198.51.100.12".parse().unwrap()];
    let outcome = ns.run(move || {
        let lb = LoadBalancer::builder().connections(1024).load().expect("load the LB");
        let vip = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), 80));
        lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr)).unwrap();
        lb.batch(&vip).add(BackendAddr::new(backends[0]), 5).add(BackendAddr::new(backends[1]), 7).apply().unwrap();
        // The first backend's address on the loopback, after it was added
        // (`batch` refuses a backend at the LB host's own address).
        let up = std::process::Command::new("ip").args(["addr", "add", "198.51.100.11/32", "dev", "lo"]).status();
        assert!(up.is_ok_and(|s| s.success()), "ip addr add in the test's namespace");
        let weights = |lb: &LoadBalancer| -> Vec<u32> {
            backends
                .iter()
                .map(|ip| lb.backends(&vip).unwrap().into_iter().find(|b| b.addr.ip == *ip).unwrap().weight)
                .collect()
        };
        let config = HealthConfig::new(Check::Tcp).interval(INTERVAL).timeout(TIMEOUT).rise(1).fall(1);
        let checker = HealthChecker::new(config).unwrap();
        let drained = |status: &[BackendHealth]| -> Vec<Option<u32>> {
            backends.iter().map(|ip| status.iter().find(|h| h.backend.ip == *ip).unwrap().drained_from).collect()
        };

        // Nothing listens on either: both fail. The journal refuses: nothing drained.
        let mut calls = 0;
        let refused = checker
            .round_journaled(&lb, &mut |_: &[BackendHealth]| {
                calls += 1;
                Err("the disk is full".into())
            })
            .unwrap();
        let refused_weights = weights(&lb);

        // The journal keeps it: it sees the weights before the drain and the drains ahead.
        let mut seen = Vec::new();
        let drain = checker
            .round_journaled(&lb, &mut |status: &[BackendHealth]| {
                seen.push((weights(&lb), drained(status)));
                Ok(())
            })
            .unwrap();
        let drained_weights = weights(&lb);

        // The first is back: restored with no journal call.
        let listener = std::net::TcpListener::bind("198.51.100.11:80").unwrap();
        let mut restore_calls = 0;
        let restore = checker
            .round_journaled(&lb, &mut |_: &[BackendHealth]| {
                restore_calls += 1;
                Ok(())
            })
            .unwrap();
        drop(listener);
        let restored_weights = weights(&lb);
        (calls, refused, refused_weights, seen, drain, drained_weights, restore_calls, restore, restored_weights)
    });
    let (calls, refused, refused_weights, seen, drain, drained_weights, restore_calls, restore, restored_weights) =
        outcome;

    assert_eq!(calls, 1, "one journal call for the round's drains");
    assert_eq!(refused_weights, [5, 7], "a refused journal applies nothing: {refused:?}");
    assert_eq!(refused.len(), 2, "{refused:?}");
    for e in &refused {
        assert!(
            matches!(&e.kind, HealthEventKind::EditFailed { to: HealthState::Down, error } if error.contains("the journal refused the change: the disk is full")),
            "{e:?}"
        );
    }
    assert_eq!(seen, [(vec![5, 7], vec![Some(5), Some(7)])], "journaled before the LB changed");
    assert_eq!(drained_weights, [0, 0], "{drain:?}");
    assert!(drain.iter().all(|e| matches!(e.kind, HealthEventKind::Down { drained_from: Some(_), .. })), "{drain:?}");
    assert_eq!(restore_calls, 0, "a restore needs no journal: {restore:?}");
    assert_eq!(restored_weights, [5, 0], "{restore:?}");
    assert!(
        restore
            .iter()
            .any(|e| e.backend.ip == backends[0] && matches!(e.kind, HealthEventKind::Up { restored: Some(5), .. })),
        "{restore:?}"
    );
}

#[test]
fn probes_say_why_a_check_fails() {
    let pair = Pair::new("hpr");
    let www = ScratchDir::new("/tmp", "health-probe");
    std::fs::create_dir_all(www.path()).unwrap();
    std::fs::write(www.path().join("ok"), "ok").unwrap();
    let _http = HttpServer::start(&pair.server, www.path());
    // A TCP server that answers anything with a line that is not HTTP.
    let garbage = pair.server.run(|| TcpListener::bind("0.0.0.0:81").unwrap());
    let garbage_thread = thread::spawn(move || {
        for mut s in garbage.incoming().flatten().take(1) {
            let _ = s.write_all(b"SSH-2.0-not-http\r\n");
        }
    });

    let timeout = Duration::from_millis(200);
    let results = pair.client.run(move || {
        let checker = |check: Check| {
            HealthChecker::new(HealthConfig::new(check).timeout(timeout).interval(Duration::from_secs(1))).unwrap()
        };
        let http = |path: &str| checker(Check::Http { path: path.into() });
        let at = |port: u16| SocketAddr::from(([192, 0, 2, 2], port));
        let absent = SocketAddr::from(([192, 0, 2, 99], 80));
        let started = Instant::now();
        let timed_out = checker(Check::Tcp).probe(absent);
        let waited = started.elapsed();
        let http_timed_out = http("/ok").probe(absent);
        (
            checker(Check::Tcp).probe(at(80)),
            checker(Check::Tcp).probe(at(82)),
            timed_out,
            waited,
            http_timed_out,
            http("/ok").probe(at(80)),
            http("/missing").probe(at(80)),
            http("/ok").probe(at(81)),
        )
    });
    let _ = garbage_thread.join();
    let (tcp_ok, refused, timed_out, waited, http_timed_out, http_ok, missing, not_http) = results;
    assert!(tcp_ok.is_ok(), "{tcp_ok:?}");
    let e = refused.unwrap_err();
    assert!(matches!(&e, ProbeError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("192.0.2.2:82") && e.to_string().contains("refused"), "{e}");
    assert!(matches!(timed_out, Err(ProbeError::Timeout { .. })), "{timed_out:?}");
    assert!(waited >= timeout && waited < timeout * 3, "a check lasts its timeout: {waited:?}");
    assert!(matches!(http_timed_out, Err(ProbeError::Timeout { .. })), "{http_timed_out:?}");
    assert!(http_ok.is_ok(), "{http_ok:?}");
    let e = missing.unwrap_err();
    assert!(matches!(&e, ProbeError::Status { status: 404, .. }), "{e:?}");
    assert_eq!(e.to_string(), "GET http://192.0.2.2:80/missing answered 404");
    assert!(matches!(not_http, Err(ProbeError::Http { .. })), "{not_http:?}");
}

/// A checker outside the LB's network namespace checks from the LB's: a
/// backend it reaches only from there stays up (checked from the caller's
/// namespace, every backend failed and was drained). The checker runs in a
/// namespace of its own, with no route anywhere, so a check made from
/// there fails at once.
#[test]
fn checks_start_in_the_lbs_network_namespace() {
    use xdpguard::{BackendAddr, ForwardingMode, VipConfig};

    let ns = NetNs::new("hns");
    let away = NetNs::new("hna");
    let dir = ScratchDir::bpffs("hns");
    let vip = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), 80));
    let backend: IpAddr = "198.51.100.11".parse().unwrap();
    let d = dir.path().to_owned();
    ns.run(move || {
        let lb = LoadBalancer::builder().connections(1024).pin(&d).load().expect("load the LB");
        lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr)).unwrap();
        lb.batch(&vip).add(BackendAddr::new(backend), 5).apply().unwrap();
    });
    // The backend's address on the loopback, after it was added (`batch`
    // refuses a backend at the LB host's own address).
    ns.ip(&["addr", "add", "198.51.100.11/32", "dev", "lo"]);
    // Listening in the LB's namespace only.
    let listening = Arc::new(AtomicBool::new(true));
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = listening.clone();
    let server = ns.spawn(move || {
        let l = TcpListener::bind("198.51.100.11:80").unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while keep.load(Ordering::Relaxed) {
            let _ = l.accept();
            thread::sleep(Duration::from_millis(5));
        }
    });
    rx.recv().unwrap();

    let (d, name) = (dir.path().to_owned(), ns.name.clone());
    let stop = listening.clone();
    let (weights, last) = away.run(move || {
        // The LB is found by its namespace's name.
        let lb = LoadBalancer::open_pinned(&d).expect("open the LB from another namespace");
        assert_eq!(lb.netns_name(), Some(name));
        let checker = HealthChecker::new(HealthConfig::new(Check::Tcp).timeout(TIMEOUT).rise(1).fall(1)).unwrap();
        let mut weights = Vec::new();
        for _ in 0..3 {
            let events = checker.round(&lb).expect("a round");
            weights.push((lb.backends(&vip).unwrap()[0].weight, format!("{events:?}")));
        }
        stop.store(false, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(50));
        let events = checker.round(&lb).expect("a round");
        (weights, (lb.backends(&vip).unwrap()[0].weight, format!("{events:?}")))
    });
    server.join().unwrap();
    for (round, (w, events)) in weights.iter().enumerate() {
        assert_eq!(*w, 5, "round {round}: the backend answers in the LB's namespace: {events}");
    }
    assert_eq!(last.0, 0, "its server gone, it is drained: {}", last.1);
    drop(dir);
}

/// A checker given VIPs the LB does not have refuses to run (it would
/// check nothing, forever), naming them and a VIP at that address and port
/// with another protocol; a VIP removed while it runs is said once per
/// backend, not an error, and its backends are checked again when it is
/// added back.
#[test]
fn vips_not_there_are_refused_and_removed_ones_said() {
    use xdpguard::health_check::{HealthError, HealthEventKind};
    use xdpguard::{BackendAddr, ForwardingMode, Protocol, VipConfig};

    let ns = NetNs::new("hvip");
    ns.run(move || {
        let lb = LoadBalancer::builder().connections(1024).load().expect("load the LB");
        let tcp = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), 80));
        let udp = Vip::new(SocketAddr::new(IpAddr::V4(VIP_V4), 53), Protocol::Udp);
        for vip in [tcp, udp] {
            lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr)).unwrap();
            lb.batch(&vip).add(BackendAddr::new("198.51.100.11".parse().unwrap()), 5).apply().unwrap();
        }
        let config = || HealthConfig::new(Check::Tcp).interval(INTERVAL).timeout(TIMEOUT);
        let run = |config: HealthConfig| {
            let checker = HealthChecker::new(config).unwrap();
            let stop = AtomicBool::new(false);
            // Without the check at its start, it would run (checking nothing) until stopped.
            thread::scope(|s| {
                s.spawn(|| {
                    thread::sleep(Duration::from_secs(2));
                    stop.store(true, Ordering::Relaxed);
                });
                checker.run(&lb, &stop, |_| {})
            })
        };
        // `--vip 203.0.113.10:53`: TCP, and the LB has it as UDP only.
        let tcp53 = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), 53));
        let other = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), 8080));
        match run(config().vip(tcp).vip(tcp53).vip(other)) {
            Err(e @ HealthError::VipsNotFound { .. }) => {
                let HealthError::VipsNotFound { missing, other_protocol, .. } = &e else { unreachable!() };
                assert_eq!((missing.as_slice(), other_protocol.as_slice()), (&[tcp53, other][..], &[udp][..]));
                let text = e.to_string();
                assert!(text.contains("no VIP tcp 203.0.113.10:53, no VIP tcp 203.0.113.10:8080"), "{text}");
                assert!(text.contains("--vip 203.0.113.10:53/udp") && text.contains("xdpguard-lb vip list"), "{text}");
            }
            other => panic!("must be refused at the start: {other:?}"),
        }

        // Removed while it runs: said once, for each backend.
        let checker = HealthChecker::new(config().vip(tcp)).unwrap();
        checker.check_vips(&lb).unwrap();
        let first = checker.round(&lb).unwrap();
        assert_eq!(checker.status().len(), 1, "{first:?}");
        lb.remove_vip(&tcp).unwrap();
        let gone = checker.round(&lb).expect("a removed VIP is no error");
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(matches!(gone[0].kind, HealthEventKind::Unchecked { reason } if reason.contains("its VIP was removed")));
        assert_eq!(gone[0].to_string(), "tcp 203.0.113.10:80 backend 198.51.100.11: not checked: its VIP was removed from the load balancer; checked again if it is added back");
        assert!(checker.round(&lb).unwrap().is_empty(), "said once");
        assert!(checker.status().is_empty());
        // Added back: checked again.
        lb.add_vip(tcp, VipConfig::new(ForwardingMode::L2Dsr)).unwrap();
        lb.batch(&tcp).add(BackendAddr::new("198.51.100.11".parse().unwrap()), 5).apply().unwrap();
        checker.round(&lb).unwrap();
        assert_eq!(checker.status().len(), 1);
    });
}
