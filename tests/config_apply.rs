//! `xdpguard apply --config FILE` and `xdpguard down` (src/config/, the
//! CLI in src/bin/xdpguard.rs) against real pinned programs in test
//! namespaces: a bad file is rejected whole and applies nothing; a dry run
//! changes nothing; apply creates, fills, chains and attaches; a second run
//! changes nothing (every generation counter stays put); an edited file
//! changes only what differs (one list replace, one backend batch); fixed
//! settings need --recreate; rules, named sets and monitor mode are planned
//! the same way (one set replace, one whole rule-set switch, removals last);
//! `down` removes everything; and an apply killed
//! with SIGKILL at any point is finished by the next one.
//!
//! Needs root; fails (never skips) without it.

mod common {
    pub mod cli;
    pub mod scratch;
    pub mod udp_echo;
}

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cli::{refused, XDPGUARD};
use common::scratch::ScratchDir;
use common::udp_echo::{udp_echo_reaches, UdpEcho};
use xdpguard::config::Config;
use xdpguard::testing::netns::*;
use xdpguard::{Decap, Filter, LoadBalancer, SynPolicy, Vip};

const UDP_PORT: u16 = 7300;

struct Bed {
    pair: Pair,
    dir: ScratchDir,
    filter_pin: ScratchDir,
    lb_pin: ScratchDir,
    decap_pin: ScratchDir,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let pair = Pair::new(tag);
        // The LB runs in the server: a real LB host forwards (a new
        // namespace does not, and `status --exit-code` says so: 7) and
        // routes its backends (8 otherwise).
        lb_host_forwards(&pair.server);
        let dir = ScratchDir::new("/tmp", tag);
        std::fs::create_dir_all(dir.path()).unwrap();
        Bed {
            pair,
            dir,
            filter_pin: ScratchDir::bpffs(&format!("{tag}f")),
            lb_pin: ScratchDir::bpffs(&format!("{tag}l")),
            decap_pin: ScratchDir::bpffs(&format!("{tag}d")),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("xdpguard.toml")
    }

    fn arg(&self) -> String {
        self.file().display().to_string()
    }

    /// The configuration: a filter on the server's eth0 passing what it
    /// passes to an LB that sends out of the same eth0, and a decapsulator
    /// on the client's eth0. `extra_lb` goes into the [[lb]] section,
    /// `vips` after it.
    fn write(&self, blocklist: &str, extra_lb: &str, vips: &str, locals: &str) {
        self.write_with_rules(blocklist, "", extra_lb, vips, locals);
    }

    /// As `write`, with `guard` (monitor, rules, `[filter.sets]`) at the
    /// end of the [[filter]] section.
    fn write_with_rules(&self, blocklist: &str, guard: &str, extra_lb: &str, vips: &str, locals: &str) {
        let guard = if guard.is_empty() { String::new() } else { format!("\n{guard}") };
        let (f, l, d) = (self.filter_pin.arg(), self.lb_pin.arg(), self.decap_pin.arg());
        let (s, c) = (&self.pair.server.name, &self.pair.client.name);
        let text = format!(
            r#"# written by tests/config_apply.rs
[[filter]]
pin = "{f}"
netns = "{s}"
interfaces = ["eth0"]
mode = "generic"
v4_capacity = 200000
allowlist = ["198.51.100.0/24"]
blocklist = [{blocklist}]
blocklist_files = ["drop.txt"]
next = "{l}"{guard}

[[lb]]
pin = "{l}"
netns = "{s}"
redirect = ["eth0"]
ipip_sources = ["203.0.113.128/25", "2001:db8:ff::/64"]
hash_seed = 7
max_vips = 64
max_backends = 512
connections = 4096
{extra_lb}

{vips}

[[decap]]
pin = "{d}"
netns = "{c}"
interfaces = ["eth0"]
locals = [{locals}]
"#
        );
        std::fs::write(self.file(), text).unwrap();
    }

    fn drop_list(&self, lines: &str) {
        std::fs::write(self.dir.path().join("drop.txt"), lines).unwrap();
    }

    fn pins_exist(&self) -> [bool; 3] {
        [self.filter_pin.path().exists(), self.lb_pin.path().exists(), self.decap_pin.path().exists()]
    }
}

const VIPS: &str = r#"
[[lb.vip]]
vip = "tcp 203.0.113.10:80"
mode = "ipip"
table_size = 1021
backends = ["198.51.100.11", { addr = "198.51.100.12", weight = 2 }, "2001:db8:b::13"]

[[lb.vip]]
vip = "udp [2001:db8::10]:53"
mode = "dsr"
backends = ["2001:db8::21", "2001:db8::22"]
"#;

fn vip(s: &str) -> Vip {
    s.parse().unwrap()
}

/// IP forwarding on in `ns` (every interface, and those made later), and
/// routes to the backends, as on an LB host.
fn lb_host_forwards(ns: &NetNs) {
    ns.sysctl("net.ipv4.ip_forward", "1");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    // The files' backends outside the pair's subnets, on-link out of eth0
    // (its only interface): a backend with no route is not served.
    ns.ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"]);
    ns.ip(&["-6", "route", "add", "2001:db8:b::/64", "dev", "eth0"]);
}

fn xdp_on(ns: &NetNs) -> bool {
    String::from_utf8_lossy(&ns.ip(&["link", "show", "dev", "eth0"]).stdout).contains("xdp")
}

fn reaches(client: &NetNs, src: &str, tries: u32) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst = SocketAddr::new("192.0.2.2".parse().unwrap(), UDP_PORT);
    client.run(move || udp_echo_reaches(src, dst, tries, Duration::from_millis(300)))
}

/// Lines of stdout that are changes (not the digest and summary lines).
fn changes(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| {
            !l.contains(": digest ") && !l.starts_with("applied ") && !l.starts_with("note: ") && *l != "no changes"
        })
        .collect()
}

#[test]
fn apply_converges_changes_only_what_differs_and_down_removes_it() {
    let bed = Bed::new("cfga");
    let (client, server) = (&bed.pair.client, &bed.pair.server);
    server.static_neighbours("eth0", &["192.0.2.1"], client.mac("eth0"));
    client.static_neighbours("eth0", &["192.0.2.2"], server.mac("eth0"));
    let _echo = UdpEcho::start(server, UDP_PORT);
    let cfg = bed.arg();
    bed.drop_list("# blocked sources\n192.0.2.1\n203.0.113.0/25\n2001:db8:bad::/48\n");

    // A file with several problems is rejected whole, each with its place,
    // and nothing is applied.
    bed.write("\"192.0.2.300\"", "echo = \"loud\"", VIPS, "\"198.51.100.11\"");
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rejected, nothing applied (2 problems)"), "{err}");
    assert!(err.contains(&format!("{cfg}:9:14: ")) && err.contains("192.0.2.300"), "{err}");
    assert!(err.contains(&format!("{cfg}:22:8: unknown echo policy `loud`")), "{err}");
    assert_eq!(bed.pins_exist(), [false; 3], "a rejected file creates nothing");

    // A dry run plans everything and changes nothing.
    bed.write("\"203.0.113.200\"", "", VIPS, "\"198.51.100.11\"");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg, "--dry-run"]);
    assert!(out.contains("would filter ") && out.contains(": create and pin"), "{out}");
    assert!(out.lines().any(|l| l.contains("VIP tcp 203.0.113.10:80 backends: add")), "{out}");
    assert_eq!(bed.pins_exist(), [false; 3], "a dry run creates nothing");
    // --exit-code: 2 while the host differs from the file (1 is an error).
    let drift = XDPGUARD.run(&["apply", "--config", &cfg, "--dry-run", "--exit-code"]);
    assert_eq!(drift.status.code(), Some(2), "{}", String::from_utf8_lossy(&drift.stderr));
    assert_eq!(String::from_utf8_lossy(&drift.stdout), out, "the same plan printed");
    assert_eq!(bed.pins_exist(), [false; 3]);
    assert!(!xdp_on(server) && !xdp_on(client));
    assert!(reaches(client, "192.0.2.1", 5), "nothing filters yet");

    // An interface another XDP program holds is found by the host check:
    // refused before anything is created (not at its attach, after the rest).
    let other = ScratchDir::bpffs("cfgao");
    XDPGUARD.ok(&["attach", "--iface", "eth0", "--pin", other.arg(), "--netns", &client.name]);
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already has an XDP program attached"), "{err}");
    // It names the filter holding it, and the commands that free it.
    let held = format!(
        "the xdpguard filter pinned at {}; detach it first (`xdpguard detach --pin {}`)",
        other.arg(),
        other.arg()
    );
    assert!(err.contains(&held) && err.contains("xdpguard next LB_PIN --pin"), "{err}");
    assert_eq!(bed.pins_exist(), [false; 3], "refused whole");
    XDPGUARD.ok(&["detach", "--pin", other.arg()]);

    // Apply: everything is created, filled, chained and attached.
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let done = changes(&out);
    assert!(out.ends_with(&format!("applied {} changes\n", done.len())), "{out}");
    assert!(xdp_on(server) && xdp_on(client));
    let filter = Filter::open_pinned(bed.filter_pin.path()).unwrap();
    let lb = LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap();
    let decap = Decap::open_pinned(bed.decap_pin.path()).unwrap();
    let block: Vec<String> = filter.blocklist().iter().unwrap().map(|n| n.to_string()).collect();
    assert_eq!(block, ["192.0.2.1/32", "203.0.113.0/25", "203.0.113.200/32", "2001:db8:bad::/48"]);
    assert_eq!(filter.next_program().unwrap(), Some(lb.program_id().unwrap()));
    assert_eq!(lb.vips().unwrap().len(), 2);
    let weights: Vec<(String, u32)> =
        lb.backends(&vip("tcp 203.0.113.10:80")).unwrap().iter().map(|b| (b.addr.to_string(), b.weight)).collect();
    assert_eq!(weights, [("198.51.100.11".into(), 1), ("198.51.100.12".into(), 2), ("2001:db8:b::13".into(), 1)]);
    assert_eq!(decap.locals(), ["198.51.100.11".parse::<IpAddr>().unwrap()]);
    // The digest printed is the running LB's and the file's.
    let digest = lb.digest().unwrap();
    assert!(out.contains(&format!("digest {} (2 VIPs)", digest.overall)), "{out}");
    let config = Config::from_file(bed.file()).unwrap();
    assert_eq!(config.lbs[0].expected_digest(), digest);
    let lb_cli = common::cli::XDPGUARD_LB.ok(&["digest", "--pin", bed.lb_pin.arg()]);
    assert!(lb_cli.starts_with(&format!("overall {}\n", digest.overall)), "{lb_cli}");
    // Real packets: the blocklisted client is dropped.
    assert!(!reaches(client, "192.0.2.1", 2), "192.0.2.1 is blocklisted");

    // A second run changes nothing: no map is written.
    let generations = (filter.generation(), lb.generation());
    let ids = (filter.program_id().unwrap(), lb.program_id().unwrap());
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.ends_with("no changes\n") && changes(&out).is_empty(), "{out}");
    assert_eq!((filter.generation(), lb.generation()), generations);
    assert_eq!((filter.program_id().unwrap(), lb.program_id().unwrap()), ids);
    assert!(config.plan().unwrap().is_empty());
    assert_eq!(XDPGUARD.ok(&["apply", "--config", &cfg, "--dry-run"]), "no changes\n");
    assert_eq!(XDPGUARD.ok(&["apply", "--config", &cfg, "--dry-run", "--exit-code"]), "no changes\n");

    // An edited file: the client unblocked (list file), one weight changed,
    // a backend added, another removed, a policy, a decap address. One list
    // replace, one batch for the VIP; the other VIP and the allowlist
    // untouched.
    bed.drop_list("203.0.113.0/25\n2001:db8:bad::/48\n");
    let vips = VIPS.replace("weight = 2 }, \"2001:db8:b::13\"", "weight = 5 }, \"198.51.100.14\"");
    bed.write("\"203.0.113.200\"", "echo = \"drop\"", &vips, "\"198.51.100.11\", \"198.51.100.14\"");
    let plan = XDPGUARD.ok(&["apply", "--config", &cfg, "--dry-run"]);
    assert_eq!(filter.generation(), generations.0, "a dry run writes nothing");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let done = changes(&out);
    let planned: Vec<&str> = plan.lines().filter_map(|l| l.strip_prefix("would ")).collect();
    assert_eq!(planned, done, "the dry run showed what was done");
    assert_eq!(done.len(), 4, "{out}");
    assert!(done[0].ends_with(": decapsulate for 198.51.100.14"), "{out}");
    assert!(done[1].ends_with(": set echo answer -> drop"), "{out}");
    assert!(
        done[2].ends_with(
            "VIP tcp 203.0.113.10:80 backends: add 198.51.100.14 weight 1; weight 198.51.100.12 2 -> 5; \
             remove 2001:db8:b::13 (one table swap)"
        ),
        "{out}"
    );
    assert!(done[3].ends_with(": blocklist: replace with 3 entries (+0 -1)"), "{out}");
    assert_eq!(filter.generation(), generations.0 + 1, "one atomic replace");
    assert_eq!(lb.generation(), generations.1 + 1, "one batch: one Maglev swap");
    assert_eq!(filter.allowlist().len().unwrap(), 1);
    assert_eq!(lb.echo_policy().to_string(), "drop");
    assert!(reaches(client, "192.0.2.1", 5), "192.0.2.1 is no longer blocklisted");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // Rules, named sets and monitor mode. A drop rule on the echo port for
    // sources outside a set, first watched (monitor mode: counted, passed).
    let guard = |monitor: bool, rules: &str, sets: &str, syn: &str| {
        format!("monitor = {monitor}\nrules = \"\"\"\n{rules}\"\"\"\n\n[filter.sets]\n{sets}\n{syn}")
    };
    let cookie = "[[filter.syn]]\nport = 8080\nmode = \"cookie\"\nmss = 1460\n";
    let drop_mode = "[[filter.syn]]\nport = 8080\nmode = \"drop\"\nthreshold = 1000\n";
    let write_guard = |g: &str| {
        bed.write_with_rules("\"203.0.113.200\"", g, "echo = \"drop\"", &vips, "\"198.51.100.11\", \"198.51.100.14\"")
    };
    let echo_rules = format!("count udp dport {UDP_PORT}\ndrop udp dport {UDP_PORT} not from set friends\n");
    write_guard(&guard(
        true,
        &echo_rules,
        "friends = [\"198.51.100.0/24\", \"2001:db8:f::/48\"]\nspare = []\n",
        cookie,
    ));
    let plan = XDPGUARD.ok(&["apply", "--config", &cfg, "--dry-run"]);
    assert!(filter.rules().is_empty().unwrap() && !filter.monitor(), "a dry run applies nothing");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let done = changes(&out);
    let planned: Vec<&str> = plan.lines().filter_map(|l| l.strip_prefix("would ")).collect();
    assert_eq!(planned, done, "the dry run showed what was done");
    // Cookie mode needs nftables synproxy: said by the plan and the apply.
    for text in [&plan, &out] {
        assert!(text.contains("note: port 8080 in cookie mode needs nftables synproxy"), "{text}");
        assert!(text.contains("xdpguard syn nft-rules --port 8080 --apply"), "{text}");
    }
    // Cookie mode offers the MSS alone unless the file gives `wscale`.
    let syn = ": SYN guard: protect port 8080 (cookie mss 1460 mss-only)".to_string();
    let want = [
        ": monitor mode on (count what would be dropped, drop nothing)",
        ": set friends: create",
        ": set friends: replace with 2 entries (+2 -0)",
        ": set spare: create",
        ": rules: replace with 2 rules (+2 -0, 0 kept; one switch)",
        &syn,
    ];
    assert_eq!(done.len(), want.len(), "{out}");
    for (d, w) in done.iter().zip(want) {
        assert!(d.ends_with(w), "{d} / {w}\n{out}");
    }
    let rule_texts = |f: &Filter| f.rules().list().unwrap().iter().map(|e| e.rule.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rule_texts(&filter),
        [format!("count udp dport {UDP_PORT}"), format!("drop udp not from set friends dport {UDP_PORT}")]
    );
    assert_eq!(filter.sets().names().unwrap(), ["friends", "spare"]);
    assert!(filter.monitor());
    assert_eq!(filter.syn_guard().policy(8080).unwrap(), Some(SynPolicy::cookies().with_mss(1460)));
    assert_eq!(filter.generation(), generations.0 + 1, "the lists are untouched");
    let before = filter.stats().unwrap();
    assert!(reaches(client, "192.0.2.1", 5), "monitor mode: the drop rule drops nothing");
    let moved = filter.stats().unwrap().since(&before);
    assert!(moved.would_drop_rule.packets > 0 && moved.rule_dropped.packets == 0, "{moved:?}");
    let drop_id = filter.rules().list().unwrap()[1].id;
    assert!(filter.rules().list().unwrap()[1].hits.packets > 0);
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // Monitor off, one rule changed, a set shrunk and another gone: one set
    // replace, one rule-set switch (the unchanged rule keeps its id), the
    // set deleted after the rules, monitor off last.
    let echo_rules =
        format!("count udp dport {UDP_PORT} from 192.0.2.0/24\ndrop udp dport {UDP_PORT} not from set friends\n");
    write_guard(&guard(false, &echo_rules, "friends = [\"198.51.100.0/24\"]\n", drop_mode));
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let done = changes(&out);
    let syn = ": SYN guard: port 8080 cookie mss 1460 mss-only -> drop above 1000/s".to_string();
    let want = [
        ": set friends: replace with 1 entries (+0 -1)",
        ": rules: replace with 2 rules (+1 -1, 1 kept; one switch)",
        ": set spare: delete",
        &syn,
        ": monitor mode off",
    ];
    assert_eq!(done.len(), want.len(), "{out}");
    for (d, w) in done.iter().zip(want) {
        assert!(d.ends_with(w), "{d} / {w}\n{out}");
    }
    assert_eq!(filter.rules().list().unwrap()[1].id, drop_id, "the kept rule keeps its id");
    assert!(!filter.monitor());
    assert_eq!(filter.syn_guard().policy(8080).unwrap(), Some(SynPolicy::drop_above(1000)));
    assert!(!reaches(client, "192.0.2.1", 2), "the drop rule drops now");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // A bad rule: reported at its line and column of the TOML file,
    // nothing applied.
    let bad = format!("drop udp dport {UDP_PORT} not from set friends\n   drop udp sport 70000\n");
    write_guard(&guard(false, &bad, "friends = [\"198.51.100.0/24\"]\n", drop_mode));
    let text = std::fs::read_to_string(bed.file()).unwrap();
    let line = text.lines().position(|l| l.contains("sport 70000")).unwrap() + 1;
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("{cfg}:{line}:4: rule `drop udp sport 70000`")), "{err}");
    assert_eq!(rule_texts(&filter).len(), 2, "nothing applied");
    // Bad SYN guard values likewise: an MSS in drop mode, a threshold of 0,
    // a mode the CLI does not know.
    let rules =
        format!("count udp dport {UDP_PORT} from 192.0.2.0/24\ndrop udp dport {UDP_PORT} not from set friends\n");
    let bad_syn = "[[filter.syn]]\nport = 8080\nmode = \"drop\"\nmss = 1460\n\n\
                   [[filter.syn]]\nport = 8081\nmode = \"drop\"\nthreshold = 0\n\n\
                   [[filter.syn]]\nport = 8082\nmode = \"syncookie\"\n";
    write_guard(&guard(false, &rules, "friends = [\"198.51.100.0/24\"]\n", bad_syn));
    let text = std::fs::read_to_string(bed.file()).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let mss = format!("{cfg}:{}:7: `mss` is for mode = \"cookie\"", line_of("mss = 1460"));
    assert!(err.contains(&mss), "{err}");
    assert!(err.contains(&format!("{cfg}:{}:13: 0 is out of range", line_of("threshold = 0"))), "{err}");
    assert!(err.contains(&format!("{cfg}:{}:8: ", line_of("syncookie"))), "{err}");
    assert_eq!(filter.syn_guard().policy(8080).unwrap(), Some(SynPolicy::drop_above(1000)), "nothing applied");
    assert_eq!(filter.syn_guard().policy(8081).unwrap(), None);

    // No rules, no sets: the rule set emptied, then the set deleted.
    write_guard("");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let done = changes(&out);
    assert_eq!(done.len(), 3, "{out}");
    assert!(done[0].ends_with(": rules: replace with 0 rules (+0 -2, 0 kept; one switch)"), "{out}");
    assert!(done[1].ends_with(": set friends: delete"), "{out}");
    assert!(done[2].ends_with(": SYN guard: unprotect port 8080"), "{out}");
    assert!(filter.syn_guard().status().unwrap().is_empty());
    assert!(filter.rules().is_empty().unwrap() && filter.sets().names().unwrap().is_empty());
    assert!(reaches(client, "192.0.2.1", 5));
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // A fixed setting: refused with the way out, nothing changed...
    let seeded = std::fs::read_to_string(bed.file()).unwrap().replace("hash_seed = 7", "hash_seed = 8");
    std::fs::write(bed.file(), seeded).unwrap();
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("hash_seed 7 -> 8") && err.contains("--recreate"), "{err}");
    assert_eq!(lb.hash_seed(), 7);
    // ...or the LB re-created, and the filter passes to the new one.
    let out = XDPGUARD.ok(&["apply", "--config", &cfg, "--recreate"]);
    assert!(out.contains("remove, to create again (hash_seed 7 -> 8)"), "{out}");
    let lb2 = LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap();
    assert_eq!(lb2.hash_seed(), 8);
    assert_eq!(filter.next_program().unwrap(), Some(lb2.program_id().unwrap()));
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    // The filter's rule-stage capacities are fixed settings too.
    let text = std::fs::read_to_string(bed.file()).unwrap();
    let more = text.replace("v4_capacity = 200000", "v4_capacity = 200000\nmax_timed_blocks = 1000");
    std::fs::write(bed.file(), more).unwrap();
    refused(&XDPGUARD.run(&["apply", "--config", &cfg]), &["max_timed_blocks 65536 -> 1000", "--recreate"]);
    // And the LB's NAT table and interface map (not read back before).
    let more = text.replace("connections = 4096", "connections = 4096\nnat_connections = 8192\nmax_interfaces = 32");
    std::fs::write(bed.file(), &more).unwrap();
    refused(
        &XDPGUARD.run(&["apply", "--config", &cfg]),
        &["nat_connections 4096 -> 8192", "max_interfaces", "-> 32", "--recreate"],
    );
    // Both sections' at once, each named.
    let (fp, lp) = (bed.filter_pin.arg(), bed.lb_pin.arg());
    let both = more.replace("v4_capacity = 200000", "v4_capacity = 300000");
    std::fs::write(bed.file(), both).unwrap();
    refused(
        &XDPGUARD.run(&["apply", "--config", &cfg]),
        &[
            &format!("lb {lp}: nat_connections 4096 -> 8192"),
            &format!("filter {fp}: v4_capacity 200000 -> 300000"),
            "--recreate",
        ],
    );
    std::fs::write(bed.file(), text).unwrap();
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    drop((filter, lb, lb2, decap));

    // down: everything detached and unpinned; a second down has nothing to
    // do. It reads only the pins and namespaces: a file that no longer
    // checks (a key this build does not know) and whose namespaces are gone
    // (their names changed here: the programs are reached from this one)
    // still takes everything down.
    let text = std::fs::read_to_string(bed.file()).unwrap();
    let ns_lines: Vec<String> = text.lines().filter(|l| l.starts_with("netns = ")).map(str::to_owned).collect();
    assert!(!ns_lines.is_empty());
    let mut broken = format!("{text}\nnot_a_key = 1\n");
    for l in &ns_lines {
        broken = broken.replace(l.as_str(), "netns = \"xgcfg-gone\"");
    }
    std::fs::write(bed.file(), broken).unwrap();
    refused(&XDPGUARD.run(&["apply", "--config", &cfg]), &["not_a_key"]);
    let pending = XDPGUARD.run(&["down", "--config", &cfg, "--dry-run", "--exit-code"]);
    assert_eq!(pending.status.code(), Some(2), "{}", String::from_utf8_lossy(&pending.stderr));
    let out = XDPGUARD.ok(&["down", "--config", &cfg]);
    assert_eq!(changes(&out).len(), 3, "{out}");
    assert_eq!(bed.pins_exist(), [false; 3]);
    assert!(!xdp_on(server) && !xdp_on(client));
    assert!(reaches(client, "192.0.2.1", 5));
    assert_eq!(XDPGUARD.ok(&["down", "--config", &cfg]), "no changes\n");
    assert_eq!(XDPGUARD.ok(&["down", "--config", &cfg, "--dry-run", "--exit-code"]), "no changes\n");
    // An error is 1, not "differs": a file that is not there.
    let missing = XDPGUARD.run(&["apply", "--config", "/nonexistent/xg.toml", "--dry-run", "--exit-code"]);
    assert_eq!(missing.status.code(), Some(1));
}

/// Starts `apply`, kills it with SIGKILL once it has printed `after`
/// changes (or at once, for `None`); returns whether it was still running.
fn killed_apply(cfg: &str, after: Option<usize>, delay: Duration) -> bool {
    // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
    let mut child = Command::new(XDPGUARD.path())
        .args(["apply", "--config", cfg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..after.unwrap_or(0) {
        if lines.next().is_none() {
            break;
        }
    }
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap_or(());
    child.wait().unwrap();
    running
}

/// Two states to move between: `a` or not. Each has a 20,000-entry
/// blocklist (so its replace takes a while) and VIPs of 40 backends.
fn kill_state(bed: &Bed, a: bool) {
    let mut list = String::new();
    for i in 0..20_000u32 {
        list.push_str(&format!("10.{}.{}.0/24\n", (i >> 8) + if a { 0 } else { 100 }, i & 255));
    }
    bed.drop_list(&list);
    let mut vips = String::new();
    for v in (0..6).filter(|v| a || *v != 0).chain((!a).then_some(9)) {
        vips.push_str(&format!("[[lb.vip]]\nvip = \"tcp 203.0.113.{}:80\"\nmode = \"ipip\"\nbackends = [", 10 + v));
        for b in 0..40 {
            let weight = if !a && v % 2 == 0 { 2 } else { 1 };
            vips.push_str(&format!("{{ addr = \"198.51.{}.{}\", weight = {weight} }}, ", 100 + v, 10 + b));
        }
        vips.push_str("]\n\n");
    }
    let (echo, locals) =
        if a { ("", "\"198.51.100.11\"") } else { ("echo = \"drop\"", "\"198.51.100.11\", \"2001:db8:b::11\"") };
    // Rules and sets that differ both ways: a -> b turns monitor mode on,
    // creates and fills a set, replaces another and the rules; b -> a
    // replaces a set and the rules, deletes the set, turns monitor mode off.
    // SYN guard: a -> b changes port 443 and protects 8443; b -> a the reverse.
    let guard = if a {
        "monitor = false\nrules = \"\"\"\ndrop udp sport 53 not from set resolvers\ndrop udp dport 1900,11211\n\"\"\"\n\
         [filter.sets]\nresolvers = [\"192.0.2.53\"]\n\n[[filter.syn]]\nport = 443\nmode = \"cookie\"\n"
    } else {
        "monitor = true\nrules = \"\"\"\ndrop udp sport 53 not from set resolvers\ncount tcp dport 22 from set office\n\"\"\"\n\
         [filter.sets]\nresolvers = [\"192.0.2.53\", \"2001:db8::53\"]\noffice = [\"198.51.100.0/24\"]\n\n\
         [[filter.syn]]\nport = 443\nmode = \"drop\"\nthreshold = 500\n\n\
         [[filter.syn]]\nport = 8443\nmode = \"cookie\"\nmss = 1400\n"
    };
    bed.write_with_rules("\"203.0.113.200\"", guard, echo, &vips, locals);
}

/// Kills an apply at `point` and checks the next apply converges on the
/// file; returns whether the kill landed mid-way (the next run had work).
fn kill_and_converge(bed: &Bed, point: (Option<usize>, Duration)) -> bool {
    let cfg = bed.arg();
    let running = killed_apply(&cfg, point.0, point.1);
    // What the killed run left: the next run finishes it...
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    // ...to exactly the file, which a third run confirms.
    let config = Config::from_file(bed.file()).unwrap();
    assert!(config.plan().unwrap().is_empty(), "after a kill at {point:?}: {out}");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    let filter = Filter::open_pinned(bed.filter_pin.path()).unwrap();
    assert_eq!(filter.blocklist().len().unwrap(), 20_001);
    let f = &config.filters[0];
    let rules: Vec<_> = filter.rules().list().unwrap().into_iter().map(|e| e.rule).collect();
    assert_eq!(rules, f.rules);
    assert_eq!(filter.monitor(), f.monitor);
    assert_eq!(filter.sets().names().unwrap().len(), f.sets.len());
    let syn: std::collections::BTreeMap<_, _> =
        filter.syn_guard().status().unwrap().into_iter().map(|p| (p.port, p.policy)).collect();
    assert_eq!(syn, f.syn);
    let lb = LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap();
    assert_eq!(lb.digest().unwrap(), config.lbs[0].expected_digest());
    running && !out.ends_with("no changes\n")
}

#[test]
fn an_apply_killed_at_any_point_is_finished_by_the_next() {
    let bed = Bed::new("cfgk");
    let cfg = bed.arg();

    // Killed while creating: from nothing each time (creating the LB takes
    // about a second, most of it the verifier, so a few points only).
    kill_state(&bed, true);
    let steps = Config::from_file(bed.file()).unwrap().plan().unwrap().len();
    assert!(steps > 15, "{steps} steps");
    let mut landed = 0;
    let creating = [
        (None, Duration::from_millis(5)),
        (None, Duration::from_millis(400)),
        (Some(1), Duration::ZERO),
        (Some(3), Duration::ZERO),
        (Some(steps - 4), Duration::ZERO),
        (Some(steps - 2), Duration::ZERO),
    ];
    for point in creating {
        landed += usize::from(kill_and_converge(&bed, point));
        XDPGUARD.ok(&["down", "--config", &cfg]);
        assert_eq!(bed.pins_exist(), [false; 3]);
    }
    assert!(landed >= 4, "only {landed} of the kills while creating landed mid-way");

    // Killed while changing from one state to the other, after each step.
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    kill_state(&bed, false);
    let steps = Config::from_file(bed.file()).unwrap().plan().unwrap().len();
    assert!(steps >= 8, "{steps} steps");
    let mut landed = 0;
    for k in 0..steps {
        // a -> b, b -> a, ...: the same steps each way.
        kill_state(&bed, k % 2 == 1);
        landed += usize::from(kill_and_converge(&bed, (Some(k), Duration::ZERO)));
    }
    eprintln!("{landed} of {steps} kills while changing landed mid-way");
    assert!(landed * 2 >= steps, "only {landed} of {steps} kills while changing landed mid-way");
    XDPGUARD.ok(&["down", "--config", &cfg]);
}

/// A load balancer chained behind a filter (the file's `next`) serves
/// through it: its health says so (a BGP agent announces it), `detach` and
/// a `down` that would leave the filter running refuse to orphan it, an
/// upgrade passes the filter on to the new program, and `xdpguard next`
/// unchains and chains it again.
#[test]
fn a_chained_lb_serves_behind_its_filter_and_is_never_left_out_of_reach() {
    let bed = Bed::new("cfgc");
    let cfg = bed.arg();
    let lb_cli = common::cli::XDPGUARD_LB;
    let (fp, lp) = (bed.filter_pin.arg(), bed.lb_pin.arg());
    bed.drop_list("");
    bed.write("", "", VIPS, "\"198.51.100.11\"");
    // Two applies at once (a reload during a manual run) take turns: both
    // succeed, and the second finds nothing left to do.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || XDPGUARD.run(&["apply", "--config", &cfg]))
        })
        .collect();
    let outs: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let texts: Vec<String> = outs.iter().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).collect();
    assert!(outs.iter().all(|o| o.status.success()), "{outs:?}");
    assert_eq!(texts.iter().filter(|t| t.ends_with("no changes\n")).count(), 1, "{texts:?}");
    let filter = Filter::open_pinned(bed.filter_pin.path()).unwrap();
    let lb = LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap();
    assert!(lb.attachments().is_empty(), "the LB itself is attached nowhere");
    let chains = lb.chained_from();
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert_eq!(chains[0].program_id, filter.program_id().unwrap());
    assert_eq!(chains[0].pin.as_deref(), Some(bed.filter_pin.path()));
    assert_eq!(chains[0].ifindexes.len(), 1, "the filter runs on the server's eth0: {chains:?}");

    // A mode the interface refuses: the run stops there, and the filter is
    // attached again as it was, not left off the interface.
    let text = std::fs::read_to_string(bed.file()).unwrap();
    std::fs::write(bed.file(), text.replace("mode = \"generic\"", "mode = \"offload\"")).unwrap();
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains("attached to eth0 again, in generic mode as before"), "{printed}");
    assert_eq!(Filter::open_pinned(bed.filter_pin.path()).unwrap().attachments().len(), 1, "still on eth0");
    std::fs::write(bed.file(), text).unwrap();
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // Serving, behind the filter: exit code 0, and status says where.
    let out = lb_cli.run(&["status", "--pin", lp, "--exit-code"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("behind:      the filter pinned at {fp}")) && !text.contains("nowhere"), "{text}");
    assert!(text.contains("serving: attached to 0 interface(s), behind a filter on 1"), "{text}");
    // Interfaces named as the LB's namespace names them (not this one's).
    assert!(text.contains("on eth0 (ifindex ") && text.contains("redirect:    eth0 (ifindex "), "{text}");
    let status = XDPGUARD.json(&["status", "--pin", fp, "--json"]);
    assert_eq!(status["next_program"], lb.program_id().unwrap(), "{status}");
    // With the fleet's file and no --pin: the file's only [[lb]]; a file
    // that cannot be read is a usage error (2), not "no LB" (1).
    assert_eq!(lb_cli.run(&["status", "--exit-code", "--config", &cfg]).status.code(), Some(0));
    let digest = lb_cli.json(&["digest", "--config", &cfg, "--json"]);
    assert_eq!(digest["digest"], lb.digest().unwrap().overall.to_string(), "{digest}");
    let gone = format!("{cfg}.missing");
    assert_eq!(lb_cli.run(&["status", "--exit-code", "--config", &gone, "--pin", lp]).status.code(), Some(2));

    // Not orphaned: detach, and a file taking down the LB alone, refused.
    refused(
        &lb_cli.run(&["detach", "--pin", lp]),
        &[fp, &format!("xdpguard next none --pin {fp}"), "nothing was changed"],
    );
    let text = std::fs::read_to_string(bed.file()).unwrap();
    let lb_only = bed.dir.path().join("lb-only.toml");
    let lb_section = &text[text.find("[[lb]]").unwrap()..text.find("[[decap]]").unwrap()];
    std::fs::write(&lb_only, lb_section).unwrap();
    let lb_only = lb_only.display().to_string();
    refused(&XDPGUARD.run(&["down", "--config", &lb_only]), &["is not taken down by this file", "xdpguard next none"]);
    assert_eq!(bed.pins_exist(), [true; 3]);

    // An upgrade hands the filter the new program.
    let out = lb_cli.ok(&["upgrade", "--pin", lp]);
    let lb = LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap();
    let new_id = lb.program_id().unwrap();
    assert_eq!(filter.next_program().unwrap(), Some(new_id), "{out}");
    assert!(out.contains(&format!("now pass their packets on to program {new_id}")), "{out}");
    // The filter upgraded while this process holds its old program (which
    // shares its next slot): still one filter, its pinned program named,
    // which the handle opened before now names too.
    let old_filter = filter.program_id().unwrap();
    XDPGUARD.ok(&["upgrade", "--pin", fp]);
    let chains = lb.chained_from();
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert_ne!(chains[0].program_id, old_filter, "the new program: {chains:?}");
    assert_eq!(chains[0].program_id, filter.program_id().unwrap(), "the held handle follows: {chains:?}");
    assert_eq!(chains[0].pin.as_deref(), Some(bed.filter_pin.path()));

    // Unchained: not serving (3), and detach would be allowed; chained again.
    XDPGUARD.ok(&["next", "none", "--pin", fp]);
    assert_eq!(filter.next_program().unwrap(), None);
    assert_eq!(lb_cli.run(&["status", "--pin", lp, "--exit-code"]).status.code(), Some(3));
    let out = XDPGUARD.ok(&["next", lp, "--pin", fp]);
    assert!(out.contains(&format!("program {new_id}")), "{out}");
    assert_eq!(filter.next_program().unwrap(), Some(new_id));
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // A backend the health checker drained on this node: applying the
    // file restores the file's weight, unless the [[lb]] says
    // keep_drained; then it stays drained, said, and the file's weight
    // lands once the checker restores it. (The checker is one that took
    // over 198.51.100.12's drain from a journal: it marks the drain as its
    // own in its first round; the other backends, unreachable, stay up for
    // fall = 3 rounds, and this test runs two.)
    let vip80 = "tcp 203.0.113.10:80";
    let weight_of = |ip: &str| {
        let b = lb.backends(&vip(vip80)).unwrap();
        b.iter().find(|b| b.addr.ip.to_string() == ip).map(|b| b.weight).unwrap()
    };
    let checker = xdpguard::health_check::HealthChecker::new(
        xdpguard::health_check::HealthConfig::new(xdpguard::health_check::Check::Tcp)
            .interval(Duration::from_millis(100))
            .timeout(Duration::from_millis(100))
            .fall(3)
            .vip(vip(vip80)),
    )
    .unwrap();
    lb_cli.ok(&["backend", "weight", "203.0.113.10:80", "198.51.100.12", "0", "--pin", lp]);
    checker.adopt(vip(vip80), "198.51.100.12".parse::<IpAddr>().unwrap().into(), 2);
    checker.round(&lb).unwrap();
    let plain = std::fs::read_to_string(bed.file()).unwrap();
    let keep = plain.replace("hash_seed = 7", "hash_seed = 7\nkeep_drained = true");
    std::fs::write(bed.file(), &keep).unwrap();
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains(&format!("note: lb {lp}: VIP {vip80} backend 198.51.100.12 kept drained")), "{out}");
    assert!(out.ends_with("no changes\n"), "{out}");
    assert_eq!(weight_of("198.51.100.12"), 0);
    // Also through a VIP reconfigured in place: its backends keep their
    // slots, and the checker's marks with them.
    std::fs::write(bed.file(), keep.replace("table_size = 1021", "table_size = 2053")).unwrap();
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains(&format!("reconfigure VIP {vip80} in place")) && out.contains("kept drained"), "{out}");
    assert_eq!(weight_of("198.51.100.12"), 0);
    std::fs::write(bed.file(), &keep).unwrap();
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    drop(checker);
    lb_cli.ok(&["backend", "weight", "203.0.113.10:80", "198.51.100.12", "2", "--pin", lp]);
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.ends_with("no changes\n") && !out.contains("note:"), "{out}");
    // A 0 an operator set is not held, with keep_drained or without:
    // nothing would ever restore it.
    lb_cli.ok(&["backend", "weight", "203.0.113.10:80", "198.51.100.12", "0", "--pin", lp]);
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains("198.51.100.12 0 -> 2") && !out.contains("kept drained"), "{out}");
    assert_eq!(weight_of("198.51.100.12"), 2);
    lb_cli.ok(&["backend", "weight", "203.0.113.10:80", "198.51.100.12", "0", "--pin", lp]);
    std::fs::write(bed.file(), &plain).unwrap();
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains("198.51.100.12 0 -> 2"), "{out}");
    assert_eq!(weight_of("198.51.100.12"), 2);
    // Nor is a 0 the file itself set (the reviewer's case): with
    // keep_drained, the file's weight 0 and then its weight again lands.
    std::fs::write(
        bed.file(),
        keep.replace("{ addr = \"198.51.100.12\", weight = 2 }", "{ addr = \"198.51.100.12\", weight = 0 }"),
    )
    .unwrap();
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains("198.51.100.12 2 -> 0"), "{out}");
    assert_eq!(weight_of("198.51.100.12"), 0);
    std::fs::write(bed.file(), &keep).unwrap();
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains("198.51.100.12 0 -> 2") && !out.contains("kept drained"), "{out}");
    assert_eq!(weight_of("198.51.100.12"), 2);
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    assert_eq!(lb_cli.run(&["status", "--pin", lp, "--exit-code", "--config", &cfg]).status.code(), Some(0));
    std::fs::write(bed.file(), &plain).unwrap();

    // The server's eth0 moved from the filter (now on another interface,
    // chaining nothing) to the LB in one file: the filter leaves eth0
    // right before the LB takes it (sections run decapsulators, LBs, then
    // filters, so the LB's attach came first and was refused, every time).
    bed.pair.server.ip(&["link", "add", "xgd0", "type", "veth", "peer", "name", "xgd1"]);
    let chained = std::fs::read_to_string(bed.file()).unwrap();
    let next_line = format!("next = \"{lp}\"\n");
    let moved = chained
        .replacen("interfaces = [\"eth0\"]\nmode = \"generic\"", "interfaces = [\"xgd0\"]\nmode = \"generic\"", 1)
        .replace(&next_line, "\n")
        .replace("redirect = [\"eth0\"]", "redirect = [\"eth0\"]\ninterfaces = [\"eth0\"]");
    assert_ne!(moved, chained);
    std::fs::write(bed.file(), &moved).unwrap();
    let dry = XDPGUARD.ok(&["apply", "--dry-run", "--config", &cfg]);
    let at = |what: &str| dry.find(what).unwrap_or_else(|| panic!("{what}: {dry}"));
    assert!(at(&format!("filter {fp}: detach from eth0")) < at(&format!("lb {lp}: attach to eth0")), "{dry}");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains(&format!("lb {lp}: attach to eth0")), "{out}");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    let names = |a: Vec<xdpguard::Attachment>| a.into_iter().map(|a| a.interface).collect::<Vec<_>>();
    assert_eq!(names(lb.attachments()), ["eth0"]);
    assert_eq!(names(filter.attachments()), ["xgd0"]);
    // And back (the filter's attach comes after the LB's detach already).
    std::fs::write(bed.file(), &chained).unwrap();
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    assert!(lb.attachments().is_empty());
    assert_eq!(names(filter.attachments()), ["eth0"]);
    drop((filter, lb));
    XDPGUARD.ok(&["down", "--config", &cfg]);
    assert_eq!(bed.pins_exist(), [false; 3]);
}

/// A bpffs of the test's own, mounted on a temporary directory (named as
/// `.ci/run` cleans up after a killed run): pins outside /sys/fs/bpf.
/// Unmounted and removed on drop.
struct PrivateBpffs(PathBuf);

impl PrivateBpffs {
    fn new(tag: &str) -> PrivateBpffs {
        let mount = std::env::temp_dir().join(format!("xg-faults-bpffs-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&mount).unwrap();
        let ok = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&mount).status().unwrap();
        assert!(ok.success(), "mount -t bpf bpf {}", mount.display());
        PrivateBpffs(mount)
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        for _ in 0..100 {
            if Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A filter and the LB behind it (the file's `next`), pinned on a bpffs
/// mounted elsewhere than /sys/fs/bpf: `status` names each by its pin
/// directory; when the FILTER loses an interface (deleted), the LB is not
/// serving (`xdpguard-lb status --exit-code` exits 6, also with --config)
/// and status names the interface and the command attaching the filter
/// there again; and `down` takes the pair down (it took its own filter for
/// another one, "not taken down by this file", and refused).
#[test]
fn a_chained_lb_outside_sys_fs_bpf_loses_its_filters_interface_and_goes_down() {
    let mnt = PrivateBpffs::new("cfgo");
    let pair = Pair::new("cfgo");
    let (s, server) = (&pair.server.name, &pair.server);
    lb_host_forwards(server);
    server.ip(&["link", "add", "xgo0", "type", "veth", "peer", "name", "xgo1"]);
    server.ip(&["link", "set", "xgo0", "up"]);
    server.ip(&["link", "set", "xgo1", "up"]);
    let (fpath, lpath) = (mnt.0.join("filter"), mnt.0.join("lb"));
    let (fp, lp) = (fpath.to_str().unwrap(), lpath.to_str().unwrap());
    let dir = ScratchDir::new("/tmp", "cfgo");
    std::fs::create_dir_all(dir.path()).unwrap();
    let file = dir.path().join("xdpguard.toml");
    std::fs::write(
        &file,
        format!(
            r#"[[filter]]
pin = "{fp}"
netns = "{s}"
interfaces = ["eth0", "xgo0"]
mode = "generic"
next = "{lp}"

[[lb]]
pin = "{lp}"
netns = "{s}"
redirect = ["eth0"]

[[lb.vip]]
vip = "udp 203.0.113.10:53"
mode = "dsr"
backends = ["198.51.100.11"]
"#
        ),
    )
    .unwrap();
    let cfg = file.display().to_string();
    let lb_cli = common::cli::XDPGUARD_LB;
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    let lb_id = LoadBalancer::open_pinned(&lpath).unwrap().program_id().unwrap();
    // Its own file would take both down (its filter is no other's).
    let dry = XDPGUARD.ok(&["down", "--config", &cfg, "--dry-run"]);
    assert!(dry.contains(&format!("filter {fp}")) && dry.contains(&format!("lb {lp}")), "{dry}");

    // Each named by its pin directory, though not under /sys/fs/bpf.
    let text = XDPGUARD.ok(&["status", "--pin", fp]);
    assert!(text.contains(&format!("next:       the load balancer pinned at {lp} (program {lb_id};")), "{text}");
    let out = lb_cli.run(&["status", "--pin", lp, "--exit-code"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("behind:      the filter pinned at {fp} (program ")), "{text}");
    assert_eq!(lb_cli.run(&["status", "--exit-code", "--config", &cfg]).status.code(), Some(0));

    // The filter's second interface deleted: what it received no longer
    // reaches the LB, which is not serving.
    server.ip(&["link", "del", "xgo0"]);
    let out = lb_cli.run(&["status", "--pin", lp, "--exit-code"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "the filter lost xgo0: {text}");
    assert!(text.contains("lost:        xgo0, by the filter in front of it"), "{text}");
    assert!(text.contains(&format!("`xdpguard attach --iface xgo0 --pin {fp}`")), "{text}");
    assert!(
        text.contains("health:      not serving: attached to 0 interface(s), lost 1, behind a filter on 1"),
        "{text}"
    );
    assert_eq!(lb_cli.run(&["status", "--exit-code", "--config", &cfg]).status.code(), Some(6));
    let json = lb_cli.json(&["status", "--json", "--pin", lp]);
    let lost = &json["chained_from"][0]["lost_attachments"];
    assert_eq!((json["serving"].as_bool(), lost[0]["interface"].as_str()), (Some(false), Some("xgo0")), "{json}");
    // The interface made again and the filter attached there: serving.
    server.ip(&["link", "add", "xgo0", "type", "veth", "peer", "name", "xgo1"]);
    XDPGUARD.ok(&["attach", "--iface", "xgo0", "--mode", "generic", "--pin", fp, "--netns", s]);
    assert_eq!(lb_cli.run(&["status", "--exit-code", "--config", &cfg]).status.code(), Some(0));

    // Its own file takes both down.
    let out = XDPGUARD.ok(&["down", "--config", &cfg]);
    assert!(!fpath.exists() && !lpath.exists(), "{out}");
}

/// An interface moved from the LB to a filter (sections run decap, lb,
/// filter: the LB's detach is in an earlier section) is handed over: the
/// LB leaves it right before the filter's attach, not before the filter is
/// created and filled; and a refused attach gives it back to the LB.
#[test]
fn an_interface_moved_from_the_lb_to_a_filter_is_handed_over() {
    let bed = Bed::new("cfgh");
    let cfg = bed.arg();
    let lb_cli = common::cli::XDPGUARD_LB;
    let (fp, lp, s) = (bed.filter_pin.arg(), bed.lb_pin.arg(), &bed.pair.server.name);
    let lb = |interfaces: &str| {
        format!(
            "[[lb]]\npin = \"{lp}\"\nnetns = \"{s}\"\n{interfaces}redirect = [\"eth0\"]\nmax_vips = 8\n\
             max_backends = 64\nconnections = 1024\n\n[[lb.vip]]\nvip = \"tcp 203.0.113.10:80\"\n\
             mode = \"dsr\"\nbackends = [\"198.51.100.11\"]\n"
        )
    };
    std::fs::write(bed.file(), lb("interfaces = [\"eth0\"]\nmode = \"generic\"\n")).unwrap();
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert_eq!(LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap().attachments().len(), 1);

    let moved = |mode: &str| {
        let filter = format!(
            "[[filter]]\npin = \"{fp}\"\nnetns = \"{s}\"\ninterfaces = [\"eth0\"]\nmode = \"{mode}\"\n\
             blocklist = [\"192.0.2.99\"]\nnext = \"{lp}\"\n\n"
        );
        std::fs::write(bed.file(), filter + &lb("")).unwrap();
    };
    // A mode it takes: the LB's detach comes right before the filter's
    // attach, after the filter was created and filled.
    moved("generic");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let lines = changes(&out);
    let detach = lines.iter().position(|l| *l == format!("lb {lp}: detach from eth0 (generic mode)"));
    let attach = lines.iter().position(|l| *l == format!("filter {fp}: attach to eth0 (generic mode)"));
    let create = lines.iter().position(|l| *l == format!("filter {fp}: create and pin"));
    assert!(create.is_some() && detach.is_some() && create < detach, "{out}");
    assert_eq!(attach, detach.map(|d| d + 1), "{out}");
    assert!(LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap().attachments().is_empty());
    assert_eq!(Filter::open_pinned(bed.filter_pin.path()).unwrap().attachments().len(), 1);
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // Back to the LB alone, then a mode the veth refuses: the run stops at
    // the filter's attach, and the LB is attached to eth0 again, not left
    // off it.
    XDPGUARD.ok(&["down", "--config", &cfg]);
    std::fs::write(bed.file(), lb("interfaces = [\"eth0\"]\nmode = \"generic\"\n")).unwrap();
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    moved("offload");
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains(&format!("lb {lp}: attached to eth0 again, in generic mode as before")), "{printed}");
    assert_eq!(LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap().attachments().len(), 1, "{printed}");
    let status = lb_cli.ok(&["status", "--pin", lp]);
    assert!(status.contains("attached:    eth0") && !status.contains("attached:    nowhere"), "{status}");
    XDPGUARD.ok(&["down", "--config", &cfg]);
}

/// Backend batches whose removals another VIP's additions need run those
/// removals first: two NAT VIPs swapping their backends (each clashes with
/// the other's until it is removed), and a backend slot moved from a later
/// VIP to an earlier one on a full backend table.
#[test]
fn removals_another_vips_backends_need_run_first() {
    let bed = Bed::new("cfgr");
    let cfg = bed.arg();
    let (lp, s) = (bed.lb_pin.arg(), &bed.pair.server.name);
    let write = |max_backends: u32, first: &str, second: &str| {
        let text = format!(
            "[[lb]]\npin = \"{lp}\"\nnetns = \"{s}\"\ninterfaces = [\"eth0\"]\nmode = \"generic\"\nmax_vips = 8\n\
             max_backends = {max_backends}\nconnections = 1024\n\n\
             [[lb.vip]]\nvip = \"tcp 203.0.113.20:80\"\nmode = \"nat\"\nbackends = [{first}]\n\n\
             [[lb.vip]]\nvip = \"tcp 203.0.113.21:80\"\nmode = \"nat\"\nbackends = [{second}]\n"
        );
        std::fs::write(bed.file(), text).unwrap();
    };
    let (a, b, c) = ("\"198.51.100.50:8080\"", "\"198.51.100.51:8080\"", "\"198.51.100.52:8080\"");
    let lb = || LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap();
    let addrs = |v: &str| {
        let mut a: Vec<String> = lb().backends(&vip(v)).unwrap().iter().map(|b| b.addr.to_string()).collect();
        a.sort();
        a
    };

    // Swapped between two NAT VIPs.
    write(64, a, b);
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    write(64, b, a);
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert_eq!(addrs("tcp 203.0.113.20:80"), ["198.51.100.51:8080"], "{out}");
    assert_eq!(addrs("tcp 203.0.113.21:80"), ["198.51.100.50:8080"], "{out}");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    XDPGUARD.ok(&["down", "--config", &cfg]);

    // The second VIP changed in place (another table size) gives the first
    // the NAT backend it runs: its removal runs before the first VIP's
    // additions, and its new table keeps its other backends' connections.
    let write_sized = |first: &str, second: &str, size: u32| {
        write(64, first, second);
        let text = std::fs::read_to_string(bed.file()).unwrap();
        let sized = text.replace(
            "vip = \"tcp 203.0.113.21:80\"\nmode = \"nat\"\n",
            &format!("vip = \"tcp 203.0.113.21:80\"\nmode = \"nat\"\ntable_size = {size}\n"),
        );
        assert_ne!(sized, text);
        std::fs::write(bed.file(), sized).unwrap();
    };
    write_sized(a, b, 1021);
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    write_sized(b, a, 2053);
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains("reconfigure VIP tcp 203.0.113.21:80 in place"), "{out}");
    let readd =
        out.find("VIP tcp 203.0.113.21:80 backends: remove 198.51.100.51:8080").unwrap_or_else(|| panic!("{out}"));
    let takes = out.find("VIP tcp 203.0.113.20:80 backends: add 198.51.100.51:8080").unwrap_or_else(|| panic!("{out}"));
    assert!(readd < takes, "{out}");
    assert_eq!(addrs("tcp 203.0.113.20:80"), ["198.51.100.51:8080"], "{out}");
    assert_eq!(addrs("tcp 203.0.113.21:80"), ["198.51.100.50:8080"], "{out}");
    assert_eq!(lb().vip_config(&vip("tcp 203.0.113.21:80")).unwrap().table_size, 2053);
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    XDPGUARD.ok(&["down", "--config", &cfg]);

    // A slot moved from the second VIP to the first, the table full.
    write(2, a, b);
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    write(2, &format!("{a}, {c}"), "");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert_eq!(addrs("tcp 203.0.113.20:80"), ["198.51.100.50:8080", "198.51.100.52:8080"], "{out}");
    assert!(addrs("tcp 203.0.113.21:80").is_empty(), "{out}");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    XDPGUARD.ok(&["down", "--config", &cfg]);
}

/// A named set over half the prefix table changes by its differences (no
/// room for a second copy beside it); a file whose sets need more than the
/// table is refused when it is checked, before anything is created.
#[test]
fn a_set_over_half_the_prefix_table_changes_in_place() {
    let bed = Bed::new("cfgs");
    let cfg = bed.arg();
    let (fp, s) = (bed.filter_pin.arg(), &bed.pair.server.name);
    let write = |entries: &str| {
        let text = format!(
            "[[filter]]\npin = \"{fp}\"\nnetns = \"{s}\"\ninterfaces = [\"eth0\"]\nmode = \"generic\"\n\
             max_set_entries = 5\nrules = \"drop udp dport 9 from set big\"\n\n[filter.sets]\nbig = [{entries}]\n"
        );
        std::fs::write(bed.file(), text).unwrap();
    };
    let set = || {
        let f = Filter::open_pinned(bed.filter_pin.path()).unwrap();
        let v: Vec<String> = f.sets().get("big").iter().unwrap().map(|n| n.to_string()).collect();
        v
    };
    // Six prefixes in a table of five: refused at its key, nothing created.
    write("\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.3\", \"192.0.2.4\", \"192.0.2.5\", \"192.0.2.6\"");
    let out = XDPGUARD.run(&["apply", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(":6:19: the named sets hold 6 prefixes"), "{err}");
    assert!(!bed.filter_pin.path().exists(), "{err}");

    write("\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.3\"");
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    write("\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.4\"");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains("set big: remove 1, then add 1 in place"), "{out}");
    assert_eq!(set(), ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.4/32"], "{out}");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // A set the rules name dropped while another grows into its room: the
    // file fits the table, but not beside the dropped set, so the growth
    // waits for the rule replace and that set's deletion (it failed, full).
    let two = |rules: &str, sets: &str| {
        let text = format!(
            "[[filter]]\npin = \"{fp}\"\nnetns = \"{s}\"\ninterfaces = [\"eth0\"]\nmode = \"generic\"\n\
             max_set_entries = 5\nrules = \"\"\"\n{rules}\"\"\"\n\n[filter.sets]\n{sets}"
        );
        std::fs::write(bed.file(), text).unwrap();
    };
    two(
        "drop udp dport 9 from set big\ndrop udp dport 10 from set gone\n",
        "big = [\"192.0.2.1\", \"192.0.2.2\"]\ngone = [\"192.0.2.9\", \"192.0.2.10\"]\n",
    );
    XDPGUARD.ok(&["apply", "--config", &cfg]);
    two(
        "drop udp dport 9 from set big\n",
        "big = [\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.3\", \"192.0.2.4\", \"192.0.2.5\"]\n",
    );
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let at = |what: &str| out.find(what).unwrap_or_else(|| panic!("{what}: {out}"));
    assert!(at("rules: replace") < at("set gone: delete") && at("set gone: delete") < at("set big: "), "{out}");
    assert_eq!(set().len(), 5, "{out}");
    let f = Filter::open_pinned(bed.filter_pin.path()).unwrap();
    assert_eq!(f.sets().names().unwrap(), ["big"]);
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    XDPGUARD.ok(&["down", "--config", &cfg]);
}

/// A VIP at an address of the LB host itself is refused before anything
/// changes, naming the file's key that permits it (`permit_local`, the
/// CLI's `vip add --force`); with the key it is added, and changed in place
/// without it.
#[test]
fn a_vip_at_a_host_address_needs_permit_local() {
    let bed = Bed::new("cfgp");
    let cfg = bed.arg();
    let (lp, s) = (bed.lb_pin.arg(), &bed.pair.server.name);
    let write = |extra: &str| {
        let text = format!(
            "[[lb]]\npin = \"{lp}\"\nnetns = \"{s}\"\ninterfaces = [\"eth0\"]\nmode = \"generic\"\nmax_vips = 8\n\
             max_backends = 64\nconnections = 1024\n\n\
             [[lb.vip]]\nvip = \"udp 198.51.100.80:53\"\nmode = \"dsr\"\n\n\
             [[lb.vip]]\nvip = \"udp 192.0.2.2:53\"\nmode = \"dsr\"\n{extra}backends = [\"198.51.100.11\"]\n"
        );
        std::fs::write(bed.file(), text).unwrap();
    };
    write("");
    refused(
        &XDPGUARD.run(&["apply", "--config", &cfg]),
        &["VIP udp 192.0.2.2:53 is at an address of this host (on eth0)", "permit_local = true", "nothing applied"],
    );
    assert!(!bed.lb_pin.path().exists(), "refused before the LB was created");

    write("permit_local = true\n");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    let lb = LoadBalancer::open_pinned(bed.lb_pin.path()).unwrap();
    assert_eq!(lb.backends(&vip("udp 192.0.2.2:53")).unwrap().len(), 1, "{out}");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));

    // Changed in place (another table size): the VIP stays where it is, so
    // nothing is asked of the key.
    write("table_size = 1021\n");
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(out.contains("reconfigure VIP udp 192.0.2.2:53 in place"), "{out}");
    assert_eq!(lb.vip_config(&vip("udp 192.0.2.2:53")).unwrap().table_size, 1021);

    // A backend at the host's own address: refused while planning (the
    // backend batch would refuse it half-way), nothing applied.
    let text = std::fs::read_to_string(bed.file()).unwrap();
    let local_backend = text.replace(
        "vip = \"udp 198.51.100.80:53\"\nmode = \"dsr\"\n",
        "vip = \"udp 198.51.100.80:53\"\nmode = \"dsr\"\nbackends = [\"192.0.2.2\"]\n",
    );
    assert_ne!(local_backend, text);
    std::fs::write(bed.file(), local_backend).unwrap();
    refused(
        &XDPGUARD.run(&["apply", "--config", &cfg]),
        &[
            "backend 192.0.2.2 of VIP udp 198.51.100.80:53 is an address of the load balancer host itself",
            "nothing applied",
        ],
    );
    assert!(lb.backends(&vip("udp 198.51.100.80:53")).unwrap().is_empty());
    std::fs::write(bed.file(), text).unwrap();
    drop(lb);
    XDPGUARD.ok(&["down", "--config", &cfg]);
}
