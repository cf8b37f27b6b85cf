//! What the command-line tools (`xdpguard`, `xdpguard-lb`) share: the error
//! wrapper around a command, the arguments of every `attach`, how
//! attachments, counters and memory are shown. Each tool includes it with
//! `mod common;` (a directory under `src/bin/` without a `main.rs` is not a
//! binary of its own). Values (modes, policies, VIPs, backends) are parsed
//! by the library's `FromStr`, so the tools and a program using the library
//! accept the same words.

// Each tool uses most of this, not all of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};
use xdpguard::{AttachMode, Attachment, Counter};

/// A command's result: any error is printed for the user.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Restores SIGPIPE's default action, which the Rust runtime sets to
/// ignore: a reader that closes the pipe early (`xdpguard list | head`)
/// then ends the tool quietly, as it ends any Unix filter, instead of a
/// panic in `println!`. Called first in `main`.
pub fn default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in `main`, before any other thread
    // exists; SIG_DFL installs no handler, so no Rust code runs on the
    // signal.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// The exit status for a command's result; an error goes to stderr as
/// `error: ...`, in the tool's words where the library's name an API call
/// ([`cli_text`]).
pub fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match cli_text(e.as_ref()) {
                Some(text) => eprintln!("error: {text}"),
                None => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// The network namespace this process entered (`--netns`, or the one a
/// pinned program was loaded in), by name: where interfaces are looked up.
static ENTERED_NETNS: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The name of the network namespace entered with [`enter_netns`], if any.
pub fn entered_netns() -> Option<String> {
    ENTERED_NETNS.lock().ok().and_then(|n| n.clone())
}

/// A library error in a CLI user's words, where the library's own text
/// fits a program using the library and not someone at a shell: it names
/// the namespace an interface was looked up in (the library knows only
/// "this one"), or the command and flag rather than the API call. `None`:
/// the library's text is the one to print. The error is the crate's
/// [`xdpguard::Error`] or one of its area errors, as a command returned it.
pub fn cli_text(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use xdpguard::{AttachError, Error, LbError, RuleError};
    let top = e.downcast_ref::<Error>();
    let attach = e.downcast_ref::<AttachError>().or(match top {
        Some(Error::Attach(a)) => Some(a),
        _ => None,
    });
    let rule = e.downcast_ref::<RuleError>().or(match top {
        Some(Error::Rule(r)) => Some(r),
        _ => None,
    });
    let lb = e.downcast_ref::<LbError>().or(match top {
        Some(Error::Lb(l)) => Some(l),
        _ => None,
    });
    if let Some(AttachError::InterfaceNotFound { interface }) = attach {
        let netns = entered_netns()?;
        return Some(format!(
            "interface `{interface}` not found in network namespace `{netns}`, where it was looked up: `ip -n {netns} \
             link` lists the interfaces there; nothing changed"
        ));
    }
    if let Some(AttachError::AlreadyAttached { .. }) = attach {
        // The library's way to run another program behind the filter is an
        // API call; the CLI chains only a load balancer.
        let text = e.to_string();
        let api = [
            (", or run it behind the filter (`Filter::set_next`)", ""),
            (
                "(an XDP program of your own goes behind the filter with `Filter::set_next`)",
                "(a program of your own can run behind the filter, chained by the library's `Filter::set_next`; \
                 the CLI chains a load balancer: `xdpguard next LB_PIN`)",
            ),
        ];
        return api.iter().find(|(from, _)| text.contains(from)).map(|(from, to)| text.replace(from, to));
    }
    match (rule, lb) {
        (Some(RuleError::UnknownSet { name }), _) => Some(format!(
            "no set named `{name}`; nothing changed: `xdpguard set list` shows the filter's sets, `xdpguard set \
             create {name}` makes an empty one (both with `--pin DIR` for a filter pinned elsewhere)"
        )),
        (Some(RuleError::NotFound { id }), _) => Some(format!(
            "no rule with id {id}; nothing changed: `xdpguard rule list` shows the rules and their ids (with `--pin \
             DIR` for a filter pinned elsewhere)"
        )),
        (_, Some(LbError::VipAtLocalAddress { vip, interface })) => Some(format!(
            "VIP {vip} is at an address of the load balancer host itself (on {interface}): its packets would go to \
             backends (and be dropped until it has one) instead of the host's own services there, an SSH session to \
             that address among them; nothing changed. Give the service an address of its own, or, to take that \
             address's traffic over on purpose, add it with `xdpguard-lb vip add {vip} ... --force`"
        )),
        _ => None,
    }
}

/// Where an `attach` command puts its program (every tool's `attach`).
#[derive(Args)]
pub struct Target {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// XDP mode: native, generic, offload or auto (native where the driver
    /// has it, else generic).
    #[arg(long, default_value_t = AttachMode::Auto)]
    pub mode: AttachMode,
    /// Attach inside this named network namespace (/run/netns/NAME).
    /// Use this rather than `ip netns exec`, which hides /sys/fs/bpf.
    #[arg(long)]
    pub netns: Option<String>,
}

impl Target {
    /// Moves this (single-threaded) process into the named network
    /// namespace, if one was given, keeping the mount namespace so bpffs
    /// stays visible. Before anything is loaded: interfaces are looked up
    /// in the namespace the program is attached from.
    pub fn enter_netns(&self) -> Result<()> {
        match &self.netns {
            Some(name) => enter_netns(name),
            None => Ok(()),
        }
    }
}

/// Moves this (single-threaded) process into the network namespace
/// /run/netns/NAME, keeping the mount namespace so bpffs stays visible.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|e| {
        format!(
            "network namespace `{name}`: cannot open {}: {e} (`ip netns list` names the ones there are; \
             `ip netns add {name}` makes one)",
            path.display()
        )
    })?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering network namespace {name}: {e}"))?;
    if let Ok(mut entered) = ENTERED_NETNS.lock() {
        *entered = Some(name.to_owned());
    }
    Ok(())
}

/// `attach` on a pin directory `dir`: the program pinned there, opened with
/// `open`, which `attach` attaches again instead of loading a new one;
/// `None` when `dir` is missing or empty, or holds only the leftovers of an
/// interrupted creation ([`reopen`]). A directory holding pins that are
/// not a program of this kind is `open`'s error, which says what it holds.
pub fn pinned_there<T>(
    dir: &Path,
    open: impl FnOnce() -> std::result::Result<T, xdpguard::Error>,
) -> Result<Option<T>> {
    if !std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Ok(None);
    }
    reopen(dir, open())
}

/// `attach` and `detach` on a pin directory `dir`: the program pinned
/// there, as `opened` (its `open_pinned`); `None` when the directory holds
/// only the leftovers of a creation that was interrupted (its process
/// killed half-way), which `attach` replaces by a new program (creating one
/// removes them) and `detach` removes.
pub fn reopen<T>(dir: &Path, opened: std::result::Result<T, xdpguard::Error>) -> Result<Option<T>> {
    match opened {
        Err(xdpguard::Error::Pin(xdpguard::PinError::Interrupted { path, .. })) if path == dir => {
            eprintln!("note: {} holds the leftovers of an interrupted creation; they are removed", dir.display());
            Ok(None)
        }
        opened => Ok(Some(opened?)),
    }
}

/// `attach` on a pin directory whose program (kernel id `program_id`) was
/// reopened: the interfaces of `ifaces` still to attach. One it already
/// runs on in the mode asked for (any, for `auto`) is kept as it is, and
/// said: `attach` run again (by a unit on every start, by a script)
/// succeeds and changes nothing there. One it runs on in another mode is
/// refused before anything changes (naming the attachment, and how to
/// change its mode). "Runs on" is asked of the kernel in the namespace
/// entered (`--netns`), not read from the attachments' names: an interface
/// of the same name in another namespace is still to attach.
pub fn still_to_attach(
    dir: &Path,
    kind: &str,
    cli: &str,
    (have, program_id): (&[Attachment], u32),
    ifaces: &[String],
    mode: AttachMode,
) -> Result<Vec<String>> {
    let mut todo = Vec::new();
    for iface in ifaces {
        match have.iter().find(|a| &a.interface == iface && a.runs_here(program_id)) {
            None => todo.push(iface.clone()),
            Some(a) if mode == AttachMode::Auto || a.mode == mode => {
                println!("already attached to {} (kept as it is)", attachment_text(a));
            }
            Some(a) => {
                return Err(format!(
                    "{} holds a {kind} attached to {}, not in {mode} mode; nothing changed (to change its mode: \
                     `{cli} detach --iface {iface} --pin {}`, then attach again)",
                    dir.display(),
                    attachment_text(a),
                    dir.display()
                )
                .into())
            }
        }
    }
    Ok(todo)
}

/// Attaches a reopened program to each of `ifaces` with `attach`; when one
/// cannot be attached, those attached here are detached again with
/// `detach` (best effort: the error that stopped it is the one reported).
pub fn attach_all<E: Into<Box<dyn std::error::Error>>>(
    ifaces: &[String],
    attach: impl Fn(&str) -> std::result::Result<Attachment, E>,
    detach: impl Fn(&str),
) -> Result<Vec<Attachment>> {
    let mut now: Vec<Attachment> = Vec::new();
    for iface in ifaces {
        // Given twice: attached once (a second attach is a no-op that a
        // rollback must not count as this command's twice).
        if now.iter().any(|a| &a.interface == iface) {
            continue;
        }
        match attach(iface) {
            Ok(a) => now.push(a),
            Err(e) => {
                for a in &now {
                    detach(&a.interface);
                }
                return Err(e.into());
            }
        }
    }
    Ok(now)
}

/// After `attach`: where the program runs, and that it outlives the command.
pub fn print_attached(attachments: &[Attachment], pin: &Path) {
    for a in attachments {
        println!("attached to {}", attachment_text(a));
    }
    println!("pinned at {}; it keeps running after this command exits", pin.display());
}

/// After `upgrade`: the programs replaced, and what became of the maps.
pub fn print_upgraded(what: &str, report: &xdpguard::UpgradeReport, pin: &Path) {
    let on = if report.interfaces.is_empty() { "no interface".to_owned() } else { report.interfaces.join(", ") };
    println!(
        "upgraded the {what} pinned at {}: program {} replaced program {} on {on} ({})",
        pin.display(),
        report.new_program_id,
        report.old_program_id,
        upgrade_text(report)
    );
    for (id, why) in &report.not_rechained {
        eprintln!(
            "warning: filter program {id} still passes its packets to the old program ({why}): chain the new one \
             with `xdpguard next {} --pin FILTER_PIN` once that is fixed",
            pin.display()
        );
    }
    if !report.rechained.is_empty() {
        let ids: Vec<String> = report.rechained.iter().map(u32::to_string).collect();
        println!(
            "the filter program(s) {} chaining it now pass their packets on to program {}",
            ids.join(", "),
            report.new_program_id
        );
    }
    if let Some(guard) = &report.guard {
        println!(
            "upgraded its guard stage: program {} replaced program {} ({})",
            guard.new_program_id,
            guard.old_program_id,
            upgrade_text(guard)
        );
    }
}

/// `layout 7 -> 8, created xdpg_gate, every other map reused`.
fn upgrade_text(report: &xdpguard::UpgradeReport) -> String {
    let (migrated, created) = (report.migrated_maps.join(", "), report.created_maps.join(", "));
    let maps = match (migrated.is_empty(), created.is_empty()) {
        (true, true) => "every map reused".to_owned(),
        (true, false) => format!("created {created}, every other map reused"),
        (false, true) => format!("migrated {migrated}"),
        (false, false) => format!("migrated {migrated}, created {created}"),
    };
    format!("layout {} -> {}, {maps}", report.from_layout, report.to_layout)
}

/// After `detach`: the interfaces it left and the pin directory removed.
pub fn print_detached(attachments: &[Attachment], pin: &Path) {
    let names: Vec<&str> = attachments.iter().map(|a| a.interface.as_str()).collect();
    if names.is_empty() {
        println!("removed {} (it was attached to no interface)", pin.display());
    } else {
        println!("detached from {} and removed {}", names.join(", "), pin.display());
    }
}

/// `detach --iface IF...`: detaches a program from those interfaces only
/// (by the names it was attached with; an attachment lost there is
/// forgotten), leaving it pinned with its state. Stops at the first that
/// fails, saying which were detached before it.
pub fn detach_some(
    ifaces: &[String],
    detach: impl Fn(&str) -> std::result::Result<(), xdpguard::Error>,
    pin: &Path,
) -> Result<()> {
    for (n, iface) in ifaces.iter().enumerate() {
        if let Err(e) = detach(iface) {
            let done = &ifaces[..n];
            return Err(if done.is_empty() {
                e.into()
            } else {
                format!("{e} (detached from {} before it)", done.join(", ")).into()
            });
        }
        println!("detached from {iface}");
    }
    println!("{} stays pinned (`detach` without `--iface` removes it)", pin.display());
    Ok(())
}

/// One attachment in text: `eth0 (ifindex 3, native mode)`.
pub fn attachment_text(a: &Attachment) -> String {
    format!("{} (ifindex {}, {} mode)", a.interface, a.ifindex, a.mode)
}

/// Interfaces by index, named as the namespace they are in knows them
/// (`netns`, a name under /run/netns; `None`: this process's): `eth0
/// (ifindex 3)`, else `ifindex 3` (never a name another namespace gives
/// the same index).
pub fn ifindexes_text(ifindexes: &[u32], netns: Option<&str>) -> String {
    use nix::sched::{setns, CloneFlags};
    let home = std::fs::File::open("/proc/thread-self/ns/net").ok();
    let resolvable = match netns {
        None => true,
        Some(name) => std::fs::File::open(Path::new("/run/netns").join(name))
            .is_ok_and(|ns| home.is_some() && setns(ns, CloneFlags::CLONE_NEWNET).is_ok()),
    };
    let one = |i: u32| match nix::net::if_::if_indextoname(i).ok().filter(|_| resolvable) {
        Some(name) => format!("{} (ifindex {i})", name.to_string_lossy()),
        None => format!("ifindex {i}"),
    };
    let text = ifindexes.iter().map(|&i| one(i)).collect::<Vec<_>>().join(", ");
    if let (Some(_), Some(home)) = (netns, home) {
        // Back where this process was (a namespace it was in takes it back).
        let _ = setns(home, CloneFlags::CLONE_NEWNET);
    }
    text
}

/// A filter chaining an LB, as `xdpguard-lb status` and errors name it
/// (its interfaces named in `netns`, the LB's: a filter passes packets to
/// an LB of its own namespace).
pub fn chained_text(c: &xdpguard::ChainedFrom, netns: Option<&str>) -> String {
    let filter = match &c.pin {
        Some(_) => format!("{} (program {})", c.filter_name(), c.program_id),
        None => c.filter_name(),
    };
    if c.ifindexes.is_empty() {
        format!("{filter}, attached nowhere")
    } else {
        format!("{filter}, on {}", ifindexes_text(&c.ifindexes, netns))
    }
}

/// `status`'s lines for the attachments a program lost (their interface
/// was deleted, or their link detached by another tool): where it no
/// longer runs, and the commands (of `cli`, e.g. `xdpguard-lb decap`) that
/// attach it there again or forget it.
pub fn print_lost(lost: &[Attachment], label_width: usize, cli: &str, pin: &Path) {
    for a in lost {
        let (name, pin) = (&a.interface, pin.display());
        println!(
            "{:<label_width$}{name} ({} mode; its link is gone: interface #{} was deleted, or another tool detached \
             the link, e.g. `bpftool link detach`): `{cli} attach --iface {name} --pin {pin}` attaches it again \
             once the interface is there (with `--netns NAME` for one in a named network namespace), `{cli} detach \
             --iface {name} --pin {pin}` forgets it",
            "lost:", a.mode, a.ifindex
        );
    }
}

/// `xdpguard-lb status`'s lines for the interfaces a filter that passes
/// its packets on to the LB lost (deleted, or its link detached by
/// another tool): what they receive no longer reaches the LB (its NAT
/// replies there go untranslated), and the commands that attach the
/// filter there again or forget it.
pub fn print_chained_lost(c: &xdpguard::ChainedFrom, label_width: usize) {
    let Some(dir) = &c.pin else { return };
    for a in &c.lost {
        let (name, pin) = (&a.interface, dir.display());
        println!(
            "{:<label_width$}{name}, by the filter in front of it ({} mode; its link is gone: interface #{} was \
             deleted, or another tool detached the link): what {name} receives no longer reaches the load balancer \
             (NAT replies there go untranslated). `xdpguard attach --iface {name} --pin {pin}` attaches the filter \
             again once the interface is there (with `--netns NAME` for one in a named network namespace), \
             `xdpguard detach --iface {name} --pin {pin}` forgets it",
            "lost:", a.mode, a.ifindex
        );
    }
}

/// One attachment in `--json` output.
pub fn attachment_json(a: &Attachment) -> Value {
    json!({ "interface": a.interface, "ifindex": a.ifindex, "mode": a.mode.to_string() })
}

/// A counter in `--json` output.
pub fn counter_json(c: Counter) -> Value {
    json!({ "packets": c.packets, "bytes": c.bytes })
}

/// Map memory for people: `12.3 MiB of maps`.
pub fn memory_text(bytes: u64) -> String {
    format!("{:.1} MiB of maps", bytes as f64 / f64::from(1 << 20))
}
