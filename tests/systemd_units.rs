//! The shipped systemd units (dist/systemd/) checked by systemd itself
//! (`systemd-analyze verify`, with the binary path pointed at the one cargo
//! built), its start/reload/stop commands, and the shipped example
//! configuration (dist/xdpguard.toml) read by the library.

mod common {
    pub mod cli;
    pub mod scratch;
}

use std::path::Path;
use std::process::Command;

use common::cli::XDPGUARD;
use common::scratch::ScratchDir;
use xdpguard::config::Config;

const UNIT: &str = include_str!("../dist/systemd/xdpguard.service");
const INSTALLED_BINARY: &str = "/usr/local/bin/xdpguard";

/// The value of every `KEY=` line of the unit, in order.
fn values(key: &str) -> Vec<&'static str> {
    UNIT.lines().filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).collect()
}

#[test]
fn systemd_accepts_the_unit() {
    let dir = ScratchDir::new("/tmp", "unit");
    std::fs::create_dir_all(dir.path()).unwrap();
    let unit = dir.path().join("xdpguard.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED_BINARY, XDPGUARD.path().to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed:\n{said}");
    assert!(said.trim().is_empty(), "systemd-analyze verify warned:\n{said}");

    // The check is real: a unit with a mistake is refused.
    std::fs::write(&unit, UNIT.replace("Type=oneshot", "Type=oneshot\nExecStartt=/bin/true")).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run systemd-analyze");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown key"), "{out:?}");
}

/// The exporter's and the BIRD health agent's units: accepted by systemd
/// (their programs pointed at the ones here), restarted when they die, and
/// their commands' flags are the tools' own.
#[test]
fn systemd_accepts_the_exporter_and_health_agent_units() {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/bird/xdpguard-bird-health.sh");
    let dir = ScratchDir::new("/tmp", "units");
    std::fs::create_dir_all(dir.path()).unwrap();
    for (name, text, installed, here) in [
        (
            "xdpguard-metrics.service",
            include_str!("../dist/systemd/xdpguard-metrics.service"),
            INSTALLED_BINARY,
            XDPGUARD.path().to_str().unwrap(),
        ),
        (
            "xdpguard-bird-health.service",
            include_str!("../dist/systemd/xdpguard-bird-health.service"),
            "/usr/local/bin/xdpguard-bird-health",
            agent.to_str().unwrap(),
        ),
    ] {
        let unit = dir.path().join(name);
        std::fs::write(&unit, text.replace(installed, here)).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run systemd-analyze");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "{name}: systemd-analyze verify:\n{said}");
        assert!(text.contains("\nRestart=on-failure\n") && text.contains("\nAfter=xdpguard.service"), "{name}");
    }
    let help = XDPGUARD.ok(&["metrics", "--help"]);
    assert!(help.contains("--filter <PIN>") && help.contains("--lb <PIN>") && help.contains("--listen"), "{help}");
    let script = std::fs::read_to_string(&agent).unwrap();
    assert!(
        script.contains("Usage: xdpguard-bird-health.sh [-s BIRD_SOCKET] [-p PIN] [-c CONFIG"),
        "the agent takes -c"
    );
}

#[test]
fn the_unit_applies_at_boot_after_the_network_re_applies_on_reload_and_takes_down_on_stop() {
    assert_eq!(values("Type"), ["oneshot"]);
    assert_eq!(values("RemainAfterExit"), ["yes"]);
    assert_eq!(values("Wants"), ["network-online.target"]);
    assert_eq!(values("After"), ["network-online.target"]);
    assert_eq!(values("WantedBy"), ["multi-user.target"]);
    let config = "--config /etc/xdpguard/xdpguard.toml";
    assert_eq!(values("ExecStart"), [format!("{INSTALLED_BINARY} apply {config}")]);
    assert_eq!(values("ExecReload"), [format!("{INSTALLED_BINARY} apply {config}")]);
    assert_eq!(values("ExecStop"), [format!("{INSTALLED_BINARY} down {config}")]);
    // A boot whose interface or namespace comes late is tried again.
    assert_eq!(values("Restart"), ["on-failure"]);
    assert_eq!(values("RestartSec"), ["10s"]);
    // The commands exist in the tool with those flags.
    for cmd in ["apply", "down"] {
        let help = XDPGUARD.ok(&[cmd, "--help"]);
        assert!(help.contains("--config <CONFIG>") && help.contains("--dry-run"), "{help}");
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/xdpguard.toml");
    let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((config.filters.len(), config.lbs.len(), config.decaps.len()), (1, 1, 0));
    assert_eq!(config.lbs[0].vips.len(), 2);
    assert_eq!(config.filters[0].next.as_deref(), Some(config.lbs[0].pin.as_path()));
    assert_eq!(config.filters[0].rules.len(), 3);
    assert_eq!(config.filters[0].sets["resolvers"].len(), 2);
    // And from the CLI, checking the file alone (no host needed).
    let out = XDPGUARD.ok(&["apply", "--config", path.to_str().unwrap(), "--validate"]);
    assert!(out.contains("valid (1 filter(s), 1 load balancer(s) with 2 VIP(s), 0 decapsulator(s))"), "{out}");
    let dir = ScratchDir::new("/tmp", "badcfg");
    std::fs::create_dir_all(dir.path()).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[filter]]\ninterfaces = [\"eth0\"]\nmonitr = true\n").unwrap();
    let out = XDPGUARD.run(&["apply", "--config", bad.to_str().unwrap(), "--validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown key `monitr`"), "{err}");
}

/// The way to change the file that the BIRD health agent tolerates (apply a
/// copy, then rename it over the file) is the one docs/deployment.md gives,
/// written the same in the README's systemd section and the unit's
/// comments; none of them says to edit the file in place and reload.
#[test]
fn the_docs_give_one_safe_procedure_to_change_the_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let deployment = std::fs::read_to_string(root.join("docs/deployment.md")).unwrap();
    let start = readme.find("### systemd and the boot story").expect("the README's systemd section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n##").map_or(section.len(), |e| e + 4)];
    let copy = "cp /etc/xdpguard/xdpguard.toml /etc/xdpguard/xdpguard.toml.new   # edit the copy";
    let apply = "xdpguard apply --config /etc/xdpguard/xdpguard.toml.new && mv /etc/xdpguard/xdpguard.toml.new \
                 /etc/xdpguard/xdpguard.toml";
    for (name, text) in
        [("README.md's systemd section", section), ("docs/deployment.md", &deployment), ("the unit", UNIT)]
    {
        assert!(text.contains(copy) && text.contains(apply), "{name} gives the copy-apply-rename procedure");
    }
    assert!(deployment.contains("Apply a copy beside the file and rename it over the file once applied"));
    assert!(section.contains("apply an edited copy beside it and rename it\nover the file once applied"));
    for text in [section, UNIT] {
        assert!(
            !text.contains("after editing the file changes only what differs"),
            "no edit-in-place-and-reload advice"
        );
    }
}
