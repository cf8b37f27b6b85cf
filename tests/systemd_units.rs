//! The shipped systemd unit (dist/systemd/) checked by systemd itself
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
}
