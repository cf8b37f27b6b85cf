//! What the CLI examples (`xdpguard`, `xdpguard-lb`) share: the error
//! wrapper around a command, entering a named network namespace, and how
//! attachments are reported. Included with
//! `#[path = "common/mod.rs"] mod common;` (a directory without a main.rs
//! is not an example of its own).

#![allow(dead_code)]

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};
use xdpguard::Attachment;

/// A command's result: any error is printed for the user.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The exit status for a command's result; an error goes to stderr as
/// `error: ...`.
pub fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Moves this (single-threaded) process into a named network namespace,
/// keeping the mount namespace, so bpffs stays visible.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|e| format!("network namespace {name}: {e}"))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering network namespace {name}: {e}"))?;
    Ok(())
}

/// After `attach`: where the program runs, and that it outlives the command.
pub fn print_attached(attachments: &[Attachment], pin: &Path) {
    for a in attachments {
        println!("attached to {} (ifindex {}) in {} mode", a.interface, a.ifindex, a.mode);
    }
    println!("pinned at {}; it keeps running after this command exits", pin.display());
}

/// After `detach`: the interfaces it left and the pin directory removed.
pub fn print_detached(attachments: &[Attachment], pin: &Path) {
    let names: Vec<&str> = attachments.iter().map(|a| a.interface.as_str()).collect();
    println!("detached from [{}] and removed {}", names.join(", "), pin.display());
}

/// One attachment in `status --json`.
pub fn attachment_json(a: &Attachment) -> Value {
    json!({ "interface": a.interface, "ifindex": a.ifindex, "mode": a.mode.to_string() })
}
