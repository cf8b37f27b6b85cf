//! The README's recipes, run exactly as written: the amplification rules
//! (`dist/rules/amplification.rules`, which the README's rule block must
//! equal), the README's CLI commands against a pinned filter, and the
//! README's `apply --config` snippet applied to a filter in a test
//! namespace. Each time the same verdict table runs through the real
//! filter (BPF_PROG_TEST_RUN): DNS answers from open resolvers dropped,
//! from the resolvers set passed (IPv4 and IPv6), SSDP and memcached
//! dropped both ways, DNS over TCP and queries to this host passed.
//!
//! Needs root; fails (never skips) without it.

mod common {
    pub mod cli;
    pub mod scratch;
}

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use common::cli::XDPGUARD;
use common::scratch::ScratchDir;
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::Frame;
use xdpguard::testing::netns::Pair;
use xdpguard::{parse_rules, Filter, XdpAction};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The fenced block after the README's `<!-- recipe: NAME -->` marker.
fn recipe(name: &str) -> String {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let marker = format!("<!-- recipe: {name} -->");
    let at = readme.find(&marker).unwrap_or_else(|| panic!("README.md has no {marker}"));
    let mut lines = readme[at + marker.len()..].lines().skip_while(|l| !l.starts_with("```"));
    lines.next().expect("an opening fence");
    let body: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    body.join("\n") + "\n"
}

const RULES: &str = "dist/rules/amplification.rules";

/// What the recipe must do, through the filter's real program.
fn check(filter: &Filter, name: &str) {
    let udp = |src: &str, sport: u16, dport: u16| {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr =
            if src.is_ipv4() { "198.51.100.1".parse().unwrap() } else { "2001:db8:1::1".parse().unwrap() };
        Frame::builder().ip(src, dst).udp(sport, dport).payload(b"answer").build()
    };
    let tcp =
        Frame::builder().ip("203.0.113.9".parse().unwrap(), "198.51.100.1".parse().unwrap()).tcp(53, 40000).build();
    let mut t = FixtureTable::new(filter, name);
    for (what, frame, action) in [
        ("DNS answer from an open resolver", udp("203.0.113.9", 53, 40000), XdpAction::Drop),
        ("DNS answer from our resolver", udp("192.0.2.53", 53, 40000), XdpAction::Pass),
        ("DNS answer from our IPv6 resolver", udp("2001:db8::53", 53, 40000), XdpAction::Pass),
        ("DNS answer from another IPv6 source", udp("2001:db8::99", 53, 40000), XdpAction::Drop),
        ("a DNS query to this host", udp("203.0.113.9", 40000, 53), XdpAction::Pass),
        ("SSDP reflection", udp("203.0.113.9", 1900, 40000), XdpAction::Drop),
        ("memcached reflection", udp("2001:db8::99", 11211, 40000), XdpAction::Drop),
        ("to our SSDP", udp("203.0.113.9", 40000, 1900), XdpAction::Drop),
        ("to our memcached", udp("203.0.113.9", 40000, 11211), XdpAction::Drop),
        ("from our resolver to our memcached", udp("192.0.2.53", 40000, 11211), XdpAction::Drop),
        ("DNS over TCP", tcp, XdpAction::Pass),
    ] {
        t.run(Fixture::new(what, frame.bytes()).action(action).unchanged());
    }
    t.finish();
    let hits: Vec<u64> = filter.rules().list().unwrap().iter().map(|e| e.hits.packets).collect();
    assert_eq!(hits, [2, 2, 3], "{name}: each rule's counter");
}

#[test]
fn the_readme_shows_the_rule_file() {
    let file = std::fs::read_to_string(repo(RULES)).unwrap();
    assert_eq!(recipe("amplification.rules"), file, "README.md's rule block and {RULES} differ");
    assert_eq!(parse_rules(file.as_bytes(), RULES).unwrap().len(), 3);
}

#[test]
fn the_readme_cli_recipe_works_as_written() {
    let pin = ScratchDir::bpffs("rcpc");
    let filter = Filter::builder().pin(pin.path()).load().expect("load (needs root)");
    let commands = recipe("amplification.sh");
    let mut ran = 0;
    for line in commands.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "xdpguard", "{line}");
        // The rule file is the one under dist/; every command on this pin.
        let file = repo(RULES).display().to_string();
        let mut args: Vec<&str> =
            words[1..].iter().map(|w| if *w == "amplification.rules" { file.as_str() } else { w }).collect();
        args.extend(["--pin", pin.arg()]);
        XDPGUARD.ok(&args);
        ran += 1;
    }
    assert_eq!(ran, 3);
    check(&filter, "README CLI recipe");
}

#[test]
fn the_readme_config_recipe_applies_as_written() {
    let pair = Pair::new("rcpa");
    let dir = ScratchDir::new("/tmp", "rcpa");
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::copy(repo(RULES), dir.path().join("amplification.rules")).unwrap();
    let pin = ScratchDir::bpffs("rcpa");
    // The snippet, placed in the test's namespace and pin directory.
    let snippet = recipe("amplification.toml");
    let placed = snippet.replacen(
        "[[filter]]\n",
        &format!("[[filter]]\npin = \"{}\"\nnetns = \"{}\"\nmode = \"generic\"\n", pin.arg(), pair.server.name),
        1,
    );
    assert_ne!(placed, snippet);
    let file = dir.path().join("xdpguard.toml");
    std::fs::write(&file, placed).unwrap();
    let cfg = file.display().to_string();
    let out = XDPGUARD.ok(&["apply", "--config", &cfg]);
    assert!(
        out.contains("set resolvers: replace with 2 entries") && out.contains("rules: replace with 3 rules"),
        "{out}"
    );
    let filter = Filter::open_pinned(pin.path()).unwrap();
    check(&filter, "README config recipe");
    assert!(XDPGUARD.ok(&["apply", "--config", &cfg]).ends_with("no changes\n"));
    XDPGUARD.ok(&["down", "--config", &cfg]);
}
