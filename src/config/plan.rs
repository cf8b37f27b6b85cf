//! Planning: the running state, read through the library, compared with
//! the file; the result is the list of steps that make them match.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::model::{Config, DecapConfig, FilterConfig, LbConfig, VipSpec};
use super::netns::Entered;
use crate::core::layout::names;
use crate::error::{ConfigError, Error, PinError};
use crate::{
    AttachMode, Attachment, Backend, BackendAddr, ChainedFrom, Decap, Filter, ListKind, LoadBalancer, MalformedPolicy,
    Rule, RuleError, SynPolicy, Vip, VipConfig,
};

/// Which program a section describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Program {
    /// A `[[filter]]`.
    Filter,
    /// An `[[lb]]`.
    Lb,
    /// A `[[decap]]`.
    Decap,
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Program::Filter => "filter",
            Program::Lb => "lb",
            Program::Decap => "decap",
        })
    }
}

/// How to plan ([`Config::plan_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanOptions {
    /// Re-create a program whose fixed settings (capacities, hash seed)
    /// differ from the file's, instead of refusing with
    /// [`ConfigError::Fixed`]. Its connection table and counters are lost.
    pub recreate: bool,
}

impl PlanOptions {
    /// Sets [`PlanOptions::recreate`].
    pub fn recreate(mut self, on: bool) -> Self {
        self.recreate = on;
        self
    }
}

/// One change to a program, done by one library call (a backend batch, a
/// list replace...), each crash-safe on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Load the program with the file's fixed settings and pin it (not
    /// attached yet: it is filled first).
    Create,
    /// Detach it everywhere and remove its pins: `down`, or to create it
    /// again with other fixed settings (`changes` says which).
    Remove {
        /// Why, when it is re-created: each fixed setting that differs.
        changes: Vec<String>,
    },
    /// Attach to an interface.
    Attach {
        /// The interface.
        interface: String,
        /// The mode asked for.
        mode: AttachMode,
    },
    /// Detach from an interface (not in the file, or in another mode).
    Detach {
        /// The interface.
        interface: String,
        /// The mode it is attached in.
        mode: AttachMode,
    },
    /// Forget an attachment lost with its interface (deleted since), on an
    /// interface the file does not name: its record and pin go.
    ForgetLost {
        /// The interface, as recorded.
        interface: String,
    },
    /// Replace a filter list with the file's entries, atomically.
    ReplaceList {
        /// Which list.
        list: ListKind,
        /// The entries it will hold.
        entries: Vec<IpNetwork>,
        /// Entries added.
        added: usize,
        /// Entries removed.
        removed: usize,
    },
    /// Change the filter's malformed-packet policy.
    SetMalformed(MalformedPolicy),
    /// Switch the filter's monitor (dry-run) mode: on before the other
    /// filter steps, off after them, so no step drops what the file only
    /// means to watch.
    SetMonitor(bool),
    /// Create an empty named set (its entries follow in one
    /// [`Step::ReplaceSet`]).
    CreateSet(String),
    /// Replace a named set's prefixes, atomically (before the rules that
    /// name it change).
    ReplaceSet {
        /// The set.
        name: String,
        /// The prefixes it will hold.
        entries: Vec<IpNetwork>,
        /// Prefixes added.
        added: usize,
        /// Prefixes removed.
        removed: usize,
    },
    /// Change a named set by its differences, in place: the prefix table
    /// has no room for a second copy of it beside the live one (what
    /// [`Step::ReplaceSet`] builds). Removals first (they need no room),
    /// then additions; each prefix's update is atomic, the change as a
    /// whole is not: a packet may see the set without the removed prefixes
    /// and before the added ones.
    EditSet {
        /// The set.
        name: String,
        /// Prefixes added.
        added: Vec<IpNetwork>,
        /// Prefixes removed.
        removed: Vec<IpNetwork>,
    },
    /// Replace the whole rule set, atomically (one switch of the guard's
    /// halves); rules in both keep their ids and counters.
    ReplaceRules {
        /// The rules, in priority order.
        rules: Vec<Rule>,
        /// Rules added.
        added: usize,
        /// Rules removed.
        removed: usize,
        /// Rules kept.
        kept: usize,
    },
    /// Delete a named set the file no longer has (after the rules that
    /// named it are gone).
    DeleteSet(String),
    /// Protect a TCP port with the SYN guard, or change its policy (after
    /// the rules: the guard's order is rules, then SYN guard).
    Protect {
        /// The port.
        port: u16,
        /// The file's policy.
        policy: SynPolicy,
        /// The running policy, when the port is already protected.
        from: Option<SynPolicy>,
    },
    /// Stop protecting a port the file no longer has.
    Unprotect(u16),
    /// Pass what the filter passes on to the LB pinned there.
    SetNext(PathBuf),
    /// Stop passing packets on to an LB.
    ClearNext,
    /// Set the LB's IPIP outer source prefix of a family.
    SetIpipSource(IpNetwork),
    /// Forget the LB's IPIP outer source prefix of a family.
    ClearIpipSource(IpNetwork),
    /// Set the LB's policies and timeouts that differ (values from the file).
    SetPolicies {
        /// Each one that differs: `echo drop -> pass`.
        changes: Vec<String>,
    },
    /// Let the LB send out of an interface.
    AddRedirect(String),
    /// Stop the LB sending out of an interface.
    RemoveRedirect {
        /// Its index.
        ifindex: u32,
        /// Its name, when it still exists.
        interface: Option<String>,
    },
    /// Add a VIP (its backends follow in one [`Step::Backends`]).
    AddVip {
        /// The VIP.
        vip: Vip,
        /// Its settings.
        config: VipConfig,
    },
    /// Remove a VIP and its backends.
    RemoveVip(Vip),
    /// Change a VIP's table size, hash or connection tracking in place
    /// ([`LoadBalancer::reconfigure_vip`](crate::LoadBalancer::reconfigure_vip)):
    /// its backends keep their slots and its tracked connections their
    /// backends.
    UpdateVip {
        /// The VIP.
        vip: Vip,
        /// Its running settings.
        from: VipConfig,
        /// The file's.
        to: VipConfig,
    },
    /// Remove a VIP whose forwarding mode differs and add it again with the
    /// file's settings (its backends follow): its tracked connections
    /// choose afresh.
    ReconfigureVip {
        /// The VIP.
        vip: Vip,
        /// Its running settings.
        from: VipConfig,
        /// The file's.
        to: VipConfig,
    },
    /// Change a VIP's backends in one batch: one Maglev table swap.
    Backends {
        /// The VIP.
        vip: Vip,
        /// Backends added, with their weights.
        added: Vec<Backend>,
        /// Weights changed: (backend, running weight, file's weight).
        reweighted: Vec<(BackendAddr, u32, u32)>,
        /// Backends removed.
        removed: Vec<BackendAddr>,
    },
    /// Decapsulate for one more local address.
    AddLocal(IpAddr),
    /// Stop decapsulating for a local address.
    RemoveLocal(IpAddr),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Create => write!(f, "create and pin"),
            Step::Remove { changes } if changes.is_empty() => write!(f, "detach and remove"),
            Step::Remove { changes } => write!(f, "remove, to create again ({})", changes.join(", ")),
            Step::Attach { interface, mode } => write!(f, "attach to {interface} ({mode} mode)"),
            Step::Detach { interface, mode } => write!(f, "detach from {interface} ({mode} mode)"),
            Step::ForgetLost { interface } => {
                write!(f, "forget the attachment to {interface} (its interface is gone)")
            }
            Step::ReplaceList { list, entries, added, removed } => {
                write!(f, "{list}: replace with {} entries (+{added} -{removed})", entries.len())
            }
            Step::SetMalformed(p) => write!(f, "malformed packets: {p}"),
            Step::SetMonitor(true) => write!(f, "monitor mode on (count what would be dropped, drop nothing)"),
            Step::SetMonitor(false) => write!(f, "monitor mode off"),
            Step::CreateSet(name) => write!(f, "set {name}: create"),
            Step::ReplaceSet { name, entries, added, removed } => {
                write!(f, "set {name}: replace with {} entries (+{added} -{removed})", entries.len())
            }
            Step::EditSet { name, added, removed } => write!(
                f,
                "set {name}: remove {}, then add {} in place (no room for a second copy: not one switch)",
                removed.len(),
                added.len()
            ),
            Step::ReplaceRules { rules, added, removed, kept } => {
                write!(f, "rules: replace with {} rules (+{added} -{removed}, {kept} kept; one switch)", rules.len())
            }
            Step::DeleteSet(name) => write!(f, "set {name}: delete"),
            Step::Protect { port, policy, from: None } => write!(f, "SYN guard: protect port {port} ({policy})"),
            Step::Protect { port, policy, from: Some(from) } => {
                write!(f, "SYN guard: port {port} {from} -> {policy}")
            }
            Step::Unprotect(port) => write!(f, "SYN guard: unprotect port {port}"),
            Step::SetNext(p) => write!(f, "pass packets on to the lb {}", p.display()),
            Step::ClearNext => write!(f, "stop passing packets on to an lb"),
            Step::SetIpipSource(n) => write!(f, "IPIP source {n}"),
            Step::ClearIpipSource(n) => write!(f, "IPIP source {n} removed"),
            Step::SetPolicies { changes } => write!(f, "set {}", changes.join(", ")),
            Step::AddRedirect(i) => write!(f, "redirect out of {i}"),
            Step::RemoveRedirect { ifindex, interface: Some(i) } => write!(f, "no redirect out of {i} ({ifindex})"),
            Step::RemoveRedirect { ifindex, interface: None } => write!(f, "no redirect out of #{ifindex}"),
            Step::AddVip { vip, config } => write!(f, "add VIP {vip} ({config})"),
            Step::RemoveVip(vip) => write!(f, "remove VIP {vip}"),
            Step::UpdateVip { vip, from, to } => {
                write!(f, "reconfigure VIP {vip} in place: {from} -> {to} (connections kept)")
            }
            Step::ReconfigureVip { vip, from, to } => {
                write!(f, "re-add VIP {vip} (a new forwarding mode): {from} -> {to} (its connections choose afresh)")
            }
            Step::Backends { vip, added, reweighted, removed } => {
                let mut parts = Vec::new();
                if !added.is_empty() {
                    let list: Vec<String> = added.iter().map(|b| format!("{} weight {}", b.addr, b.weight)).collect();
                    parts.push(format!("add {}", list.join(", ")));
                }
                if !reweighted.is_empty() {
                    let list: Vec<String> = reweighted.iter().map(|(b, o, n)| format!("{b} {o} -> {n}")).collect();
                    parts.push(format!("weight {}", list.join(", ")));
                }
                if !removed.is_empty() {
                    let list: Vec<String> = removed.iter().map(ToString::to_string).collect();
                    parts.push(format!("remove {}", list.join(", ")));
                }
                write!(f, "VIP {vip} backends: {} (one table swap)", parts.join("; "))
            }
            Step::AddLocal(a) => write!(f, "decapsulate for {a}"),
            Step::RemoveLocal(a) => write!(f, "stop decapsulating for {a}"),
        }
    }
}

/// The steps of one section of the file: one program.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SectionPlan {
    /// Which program.
    pub program: Program,
    /// Its pin directory.
    pub pin: PathBuf,
    /// The network namespace its interfaces are in.
    pub netns: Option<String>,
    /// What changes, in order.
    pub steps: Vec<Step>,
    /// A hand-over ([`hand_over`]): its one detach (or removal) frees an
    /// interface for the next section's attach.
    pub(crate) hand_over: bool,
    /// With a [`Step::Remove`]: the interfaces its program runs on until
    /// then.
    pub(crate) holds: Vec<String>,
}

/// Whether a plan brings programs up or takes them down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Up,
    Down,
}

/// What makes the running state match a file ([`Config::plan`]), or takes
/// its programs down ([`Config::plan_down`]); [`Plan::apply`] runs it.
/// Shown (`Display`) one step a line, `no changes` when empty.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) config: Config,
    pub(crate) direction: Direction,
    pub(crate) sections: Vec<SectionPlan>,
    pub(crate) held: Vec<String>,
}

impl Plan {
    /// Each section's steps, in the order they run (decapsulators, load
    /// balancers, filters; the reverse for `down`). An interface the file
    /// moves from one program to another is a hand-over: the old program's
    /// detach, a section of its own, right before the new one's attach.
    pub fn sections(&self) -> &[SectionPlan] {
        &self.sections
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.sections.iter().map(|s| s.steps.len()).sum()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backends left drained although the file gives them a weight
    /// (an `[[lb]]` with `keep_drained`), a line each: no step changes
    /// them.
    pub fn held(&self) -> &[String] {
        &self.held
    }

    /// Each step as a line: `lb /sys/fs/bpf/xdpguard-lb: add VIP ...`.
    pub fn lines(&self) -> Vec<String> {
        self.sections.iter().flat_map(|s| s.steps.iter().map(move |st| line(s, st))).collect()
    }
}

pub(crate) fn line(s: &SectionPlan, step: &Step) -> String {
    format!("{} {}: {step}", s.program, s.pin.display())
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        self.lines().iter().try_for_each(|l| writeln!(f, "{l}"))
    }
}

/// `Ok(None)` when nothing usable is pinned there: nothing at all, or the
/// leftovers of a creation that died (creating it again clears them).
pub(crate) fn opened<T>(r: Result<T, Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(Error::Pin(PinError::NotFound { .. } | PinError::Interrupted { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An IPIP source as the LB shows it back ([`LoadBalancer::ipip_sources`]).
fn as_shown(n: IpNetwork) -> IpNetwork {
    match n {
        IpNetwork::V4(p) => IpNetwork::V4(Ipv4Network::new(p.network(), p.prefix()).expect("valid prefix")),
        IpNetwork::V6(p) => IpNetwork::V6(Ipv6Network::new(p.network(), p.prefix().max(64)).expect("valid prefix")),
    }
}

/// What planning collects: the host's problems (all reported at once).
struct Planner {
    options: PlanOptions,
    host: Vec<String>,
    /// Each section whose fixed settings differ, with the differences.
    fixed: Vec<(String, Vec<String>)>,
    /// The program id of each LB that exists and stays, by pin.
    lb_ids: BTreeMap<PathBuf, u32>,
    /// The programs pinned in the file's pin directories: an interface one
    /// of them holds is this plan's to move, not another program's.
    own: Vec<u32>,
    /// The file's filters' pin directories (a filter chaining an LB the
    /// plan re-creates is chained again only when it is one of them).
    filters: Vec<PathBuf>,
    /// Backends kept drained (`keep_drained`), as lines.
    held: Vec<String>,
    /// The interfaces of each program the plan removes to re-create, by pin.
    removing: BTreeMap<PathBuf, Vec<String>>,
}

/// The id of the program pinned as `name` under `pin`, if any.
fn pinned_program_id(pin: &Path, name: &str) -> Option<u32> {
    let fd = crate::core::sys::obj_get(&pin.join(name)).ok()?;
    crate::core::sys::prog_id(fd.as_fd()).ok()
}

fn read_err(program: Program, pin: &Path) -> impl Fn(Error) -> ConfigError + '_ {
    move |e| ConfigError::Step { step: format!("reading {program} {}", pin.display()), error: Box::new(e) }
}

impl Planner {
    /// Enters the section's namespace and checks its interfaces exist there.
    fn enter(&mut self, program: Program, pin: &Path, netns: Option<&str>, ifaces: &[String]) -> Option<Entered> {
        let entered = match Entered::enter(netns) {
            Ok(e) => e,
            Err(e) => {
                self.host.push(format!("{program} {}: {e}", pin.display()));
                return None;
            }
        };
        for i in ifaces {
            if nix::net::if_::if_nametoindex(i.as_str()).is_err() {
                let place = netns.map_or("this network namespace".to_owned(), |n| format!("network namespace `{n}`"));
                self.host.push(format!(
                    "{program} {}: no interface `{i}` in {place}: create it, or remove it from the file \
                     (the systemd unit tries again every 10 s)",
                    pin.display()
                ));
            }
        }
        Some(entered)
    }

    /// Interfaces of `ifaces` that an XDP program holds which is none of the
    /// file's own (those the plan moves): the attach would refuse them after
    /// every earlier change was made, so the host check refuses them first.
    fn occupied(&mut self, program: Program, pin: &Path, ifaces: &[String]) {
        for i in ifaces {
            if let Some(e) = crate::core::attach::occupied_by_another(i, &self.own) {
                self.host.push(format!("{program} {}: {e}", pin.display()));
            }
        }
    }

    /// The fixed settings that differ: an error, or a removal first (of a
    /// program running on the attachments `holds` reads, read only then).
    fn fixed(
        &mut self,
        program: Program,
        pin: &Path,
        changes: Vec<String>,
        holds: impl FnOnce() -> Vec<Attachment>,
        steps: &mut Vec<Step>,
    ) -> bool {
        if changes.is_empty() {
            return false;
        }
        if self.options.recreate {
            // A filter this file does not describe would go on passing
            // packets to the removed LB, unpinned and out of reach.
            if program == Program::Lb {
                let why = "is not in this file, so it would not be chained to the re-created LB: describe that \
                           filter in the file, or";
                let near: Vec<&Path> = self.filters.iter().map(PathBuf::as_path).collect();
                let chains = LoadBalancer::open_pinned(pin).map(|lb| lb.chained_from_near(&near)).unwrap_or_default();
                self.host.extend(chained_outside(&chains, pin, &self.filters, why));
            }
            steps.push(Step::Remove { changes });
            self.removing.insert(pin.to_owned(), holds().into_iter().map(|a| a.interface).collect());
            return true;
        }
        self.fixed.push((format!("{program} {}", pin.display()), changes));
        false
    }

    /// A VIP the plan adds (or re-adds) at an address of the host itself
    /// (in the section's namespace, entered), which the file does not
    /// permit: refused here, before any change, as `add_vip` would refuse
    /// it half-way through the apply (naming the CLI's `--force`).
    fn local_vip(&mut self, l: &LbConfig, v: &VipSpec) {
        if v.permit_local {
            return;
        }
        if let Some(interface) = crate::lb::local_address_holder(v.vip.addr) {
            self.host.push(format!(
                "lb {}: VIP {} is at an address of this host (on {interface}): its packets would go to its backends \
                 (and be dropped until it has one) instead of the host's own services there, an SSH session to that \
                 address among them; give the service an address of its own, or, to take that address's traffic \
                 over on purpose, set `permit_local = true` in its [[lb.vip]]",
                l.pin.display(),
                v.vip
            ));
        }
    }

    /// Backends the plan adds to a VIP at an address of the host itself
    /// (in the section's namespace, entered), which the LB does not forward
    /// to: refused here, before any change, as the backend batch would
    /// refuse them half-way through the apply
    /// ([`LbError::BackendAtLocalAddress`](crate::LbError)).
    fn local_backends<'a>(&mut self, l: &LbConfig, vip: &Vip, added: impl IntoIterator<Item = &'a Backend>) {
        for b in added {
            if let Some(interface) = crate::lb::local_address_holder(b.addr.ip) {
                self.host.push(format!(
                    "lb {}: {}",
                    l.pin.display(),
                    crate::LbError::BackendAtLocalAddress { vip: *vip, backend: b.addr, interface }
                ));
            }
        }
    }

    fn filter(&mut self, f: &FilterConfig) -> Result<Vec<Step>, ConfigError> {
        let Some(_ns) = self.enter(Program::Filter, &f.pin, f.netns.as_deref(), &f.interfaces) else {
            return Ok(Vec::new());
        };
        let err = read_err(Program::Filter, &f.pin);
        let mut steps = Vec::new();
        let running = match opened(Filter::open_pinned(&f.pin)) {
            Ok(r) => r,
            Err(e) => {
                self.host.push(format!("filter {}: {e}", f.pin.display()));
                return Ok(steps);
            }
        };
        self.occupied(Program::Filter, &f.pin, &f.interfaces);
        let running = match running {
            Some(filter) => {
                let (v4, v6) = filter.capacity();
                let mut changes = Vec::new();
                if v4 != f.v4_capacity {
                    changes.push(format!("v4_capacity {v4} -> {}", f.v4_capacity));
                }
                if v6 != f.v6_capacity {
                    changes.push(format!("v6_capacity {v6} -> {}", f.v6_capacity));
                }
                if let Some(running) = filter.rule_capacities() {
                    // What the builder would load from the file's values (the
                    // rule index rounded as it stores it).
                    let wanted = Filter::builder().with_rule_capacities(&f.guard).rule_capacities();
                    for ((key, running), (_, wanted)) in running.named().into_iter().zip(wanted.named()) {
                        if running != wanted {
                            changes.push(format!("{key} {running} -> {wanted}"));
                        }
                    }
                }
                if self.fixed(Program::Filter, &f.pin, changes, || filter.attachments(), &mut steps) {
                    None
                } else {
                    Some(filter)
                }
            }
            None => None,
        };
        let Some(filter) = running else {
            steps.push(Step::Create);
            if f.monitor {
                steps.push(Step::SetMonitor(true));
            }
            guard_steps(f, &BTreeMap::new(), &[], &BTreeMap::new(), &mut steps);
            for (list, entries) in [(ListKind::Allow, &f.allowlist), (ListKind::Block, &f.blocklist)] {
                if !entries.is_empty() {
                    steps.push(Step::ReplaceList { list, entries: entries.clone(), added: entries.len(), removed: 0 });
                }
            }
            if let Some(next) = &f.next {
                steps.push(Step::SetNext(next.clone()));
            }
            steps.extend(f.interfaces.iter().map(|i| Step::Attach { interface: i.clone(), mode: f.mode }));
            return Ok(steps);
        };
        if filter.malformed_policy() != f.malformed {
            steps.push(Step::SetMalformed(f.malformed));
        }
        let monitor = filter.monitor();
        if f.monitor && !monitor {
            steps.push(Step::SetMonitor(true));
        }
        match running_guard(&filter) {
            Ok(Some((sets, rules, syn))) => guard_steps(f, &sets, &rules, &syn, &mut steps),
            Ok(None) if f.rules.is_empty() && f.sets.is_empty() && f.syn.is_empty() => {}
            Ok(None) => self.host.push(format!(
                "filter {}: it runs without the guard stage (loaded with FilterBuilder::guard(false), or on a \
                 kernel older than Linux 6.0), so it cannot take rules, sets or SYN-guarded ports: take it down and apply again",
                f.pin.display()
            )),
            Err(e) => return Err(err(e.into())),
        }
        for (list, want) in [(ListKind::Allow, &f.allowlist), (ListKind::Block, &f.blocklist)] {
            let pl = if list == ListKind::Allow { filter.allowlist() } else { filter.blocklist() };
            let have: BTreeSet<IpNetwork> = pl.iter().map_err(|e| err(e.into()))?.collect();
            let want: BTreeSet<IpNetwork> = want.iter().copied().collect();
            if have != want {
                let added = want.difference(&have).count();
                let removed = have.difference(&want).count();
                steps.push(Step::ReplaceList { list, entries: want.into_iter().collect(), added, removed });
            }
        }
        let next = filter.next_program().map_err(&err)?;
        match &f.next {
            Some(lb) if next.is_none() || next != self.lb_ids.get(lb).copied() => steps.push(Step::SetNext(lb.clone())),
            None if next.is_some() => steps.push(Step::ClearNext),
            _ => {}
        }
        // Off after every other change of the filter: no step drops what the
        // file only meant to watch.
        if !f.monitor && monitor {
            steps.push(Step::SetMonitor(false));
        }
        attachments(&filter.attachments(), &filter.lost_attachments(), &f.interfaces, f.mode, &mut steps);
        Ok(steps)
    }

    fn lb(&mut self, l: &LbConfig) -> Result<Vec<Step>, ConfigError> {
        let egress = l.egress();
        let Some(_ns) = self.enter(Program::Lb, &l.pin, l.netns.as_deref(), &egress) else {
            return Ok(Vec::new());
        };
        let err = read_err(Program::Lb, &l.pin);
        let mut steps = Vec::new();
        let running = match opened(LoadBalancer::open_pinned(&l.pin)) {
            Ok(r) => r,
            Err(e) => {
                self.host.push(format!("lb {}: {e}", l.pin.display()));
                return Ok(steps);
            }
        };
        self.occupied(Program::Lb, &l.pin, &l.interfaces);
        let running = match running {
            Some(lb) => {
                let cap = lb.maps().capacity();
                let mut changes = Vec::new();
                for (what, have, want) in [
                    ("max_vips", cap.max_vips, l.max_vips),
                    ("max_backends", cap.max_backends, l.max_backends),
                    ("connections", cap.connections, l.connections),
                    ("nat_connections", cap.nat_connections, l.nat_connections),
                    ("max_interfaces", cap.devices, l.max_interfaces),
                    ("hash_seed", lb.hash_seed(), l.hash_seed),
                ] {
                    if have != want {
                        changes.push(format!("{what} {have} -> {want}"));
                    }
                }
                if self.fixed(Program::Lb, &l.pin, changes, || lb.attachments(), &mut steps) {
                    None
                } else {
                    Some(lb)
                }
            }
            None => None,
        };
        let Some(lb) = running else {
            steps.push(Step::Create);
            for v in &l.vips {
                self.local_vip(l, v);
                self.local_backends(l, &v.vip, &v.backends);
                steps.push(Step::AddVip { vip: v.vip, config: v.config });
                if !v.backends.is_empty() {
                    let added = v.backends.clone();
                    steps.push(Step::Backends { vip: v.vip, added, reweighted: Vec::new(), removed: Vec::new() });
                }
            }
            steps.extend(l.interfaces.iter().map(|i| Step::Attach { interface: i.clone(), mode: l.mode }));
            return Ok(steps);
        };
        self.lb_ids.insert(l.pin.clone(), lb.program_id().map_err(&err)?);

        // IPIP sources: set before backends need them, cleared after.
        let have = lb.ipip_sources();
        let mut clears = Vec::new();
        for v6 in [false, true] {
            let h = have.iter().find(|n| n.is_ipv6() == v6).copied();
            let w = l.ipip_sources.iter().find(|n| n.is_ipv6() == v6).copied();
            match (h, w) {
                (h, Some(w)) if h != Some(as_shown(w)) => steps.push(Step::SetIpipSource(w)),
                (Some(h), None) => clears.push(Step::ClearIpipSource(h)),
                _ => {}
            }
        }
        let mut changes = Vec::new();
        let mut differs = |what: &str, have: String, want: String| {
            if have != want {
                changes.push(format!("{what} {have} -> {want}"));
            }
        };
        differs("echo", lb.echo_policy().to_string(), l.echo.to_string());
        differs("fragments", lb.fragment_policy().to_string(), l.fragments.to_string());
        differs("options", lb.options_policy().to_string(), l.options.to_string());
        differs("new_flow_limit", limit_text(lb.new_flow_limit()), limit_text(l.new_flow_limit));
        differs("udp_timeout", format!("{:?}", lb.udp_timeout()), format!("{:?}", lb.as_stored(l.udp_timeout)));
        differs(
            "next_hop_cache",
            format!("{:?}", lb.next_hop_cache()),
            format!("{:?}", lb.as_stored(l.next_hop_cache)),
        );
        if lb.new_flow_limit().gcra() == l.new_flow_limit.gcra() {
            changes.retain(|c| !c.starts_with("new_flow_limit"));
        }
        if !changes.is_empty() {
            steps.push(Step::SetPolicies { changes });
        }

        // VIPs: removed first (their backends may be needed by others).
        let running: BTreeMap<Vip, VipConfig> = lb.vips().map_err(|e| err(e.into()))?.into_iter().collect();
        let wanted: BTreeMap<Vip, _> = l.vips.iter().map(|v| (v.vip, v)).collect();
        for vip in running.keys().filter(|v| !wanted.contains_key(v)) {
            steps.push(Step::RemoveVip(*vip));
        }
        // Each VIP in the file: its add or re-add, its backend batch, and
        // the backend slots it holds before (`slots`) and what its re-add
        // frees of them.
        let mut per_vip: Vec<VipChange> = Vec::new();
        for (vip, spec) in &wanted {
            // Re-added with its backends: those drained here stay so.
            let mut drained_here = BTreeSet::new();
            let mut change =
                VipChange { vip: *vip, spec: spec.config, first: None, batch: None, slots: 0, running: Vec::new() };
            // A VIP changed in place stays where it is: only an add or a
            // re-add is checked for the host's own addresses.
            if running.get(vip).is_none_or(|cfg| cfg.mode != spec.config.mode) {
                self.local_vip(l, spec);
            }
            let have_backends = match running.get(vip) {
                None => {
                    change.first = Some(Step::AddVip { vip: *vip, config: spec.config });
                    Vec::new()
                }
                Some(cfg) if *cfg != spec.config && cfg.mode == spec.config.mode => {
                    change.first = Some(Step::UpdateVip { vip: *vip, from: *cfg, to: spec.config });
                    lb.backends(vip).map_err(|e| err(e.into()))?
                }
                Some(cfg) if *cfg != spec.config => {
                    change.first = Some(Step::ReconfigureVip { vip: *vip, from: *cfg, to: spec.config });
                    let running = lb.backends(vip).map_err(|e| err(e.into()))?;
                    change.slots = running.len();
                    change.running = running.iter().map(|b| b.addr).collect();
                    // Not held through a re-add: its new slot would not carry
                    // the checker's mark, and the apply's check afterwards
                    // would find it differing; the checker drains it again
                    // in its next round.
                    Vec::new()
                }
                Some(_) => lb.backends(vip).map_err(|e| err(e.into()))?,
            };
            change.slots = change.slots.max(have_backends.len());
            let have: BTreeMap<BackendAddr, u32> = have_backends.iter().map(|b| (b.addr, b.weight)).collect();
            let want: BTreeMap<BackendAddr, u32> = spec.backends.iter().map(|b| (b.addr, b.weight)).collect();
            // Only the health checker's drains are held (it restores them);
            // a 0 the file or an operator set is not, or nothing would
            // ever restore it.
            if l.keep_drained && running.contains_key(vip) && !have_backends.is_empty() {
                drained_here.extend(lb.checker_drained(vip).map_err(|e| err(e.into()))?);
            }
            let drained = |a: &BackendAddr, w: u32| l.keep_drained && w > 0 && drained_here.contains(a);
            let added: Vec<Backend> = spec
                .backends
                .iter()
                .filter(|b| !have.contains_key(&b.addr))
                .map(|b| if drained(&b.addr, b.weight) { Backend { weight: 0, ..*b } } else { *b })
                .collect();
            self.local_backends(l, vip, &added);
            for (a, w) in want.iter().filter(|(a, w)| drained(a, **w)) {
                self.held.push(format!(
                    "lb {}: VIP {vip} backend {a} kept drained at weight 0 (the file's {w}; keep_drained)",
                    l.pin.display()
                ));
            }
            let reweighted: Vec<(BackendAddr, u32, u32)> = want
                .iter()
                .filter(|(a, w)| !drained(a, **w))
                .filter_map(|(a, w)| have.get(a).filter(|h| *h != w).map(|h| (*a, *h, *w)))
                .collect();
            let removed: Vec<BackendAddr> = have.keys().filter(|a| !want.contains_key(a)).copied().collect();
            if !(added.is_empty() && reweighted.is_empty() && removed.is_empty()) {
                change.batch = Some(Step::Backends { vip: *vip, added, reweighted, removed });
            }
            per_vip.push(change);
        }
        backend_steps(per_vip, l.max_backends, &mut steps);
        steps.extend(clears);

        // Interfaces: redirect targets, then attachments.
        let have: BTreeSet<u32> = lb.redirect_interfaces().into_iter().collect();
        let mut want = BTreeSet::new();
        for name in &egress {
            // A missing one is reported by enter().
            if let Ok(i) = nix::net::if_::if_nametoindex(name.as_str()) {
                want.insert(i);
                if !have.contains(&i) {
                    steps.push(Step::AddRedirect(name.clone()));
                }
            }
        }
        for &ifindex in have.difference(&want) {
            let interface = sys_ifname(ifindex);
            steps.push(Step::RemoveRedirect { ifindex, interface });
        }
        attachments(&lb.attachments(), &lb.lost_attachments(), &l.interfaces, l.mode, &mut steps);
        Ok(steps)
    }

    fn decap(&mut self, d: &DecapConfig) -> Result<Vec<Step>, ConfigError> {
        let Some(_ns) = self.enter(Program::Decap, &d.pin, d.netns.as_deref(), &d.interfaces) else {
            return Ok(Vec::new());
        };
        let mut steps = Vec::new();
        self.occupied(Program::Decap, &d.pin, &d.interfaces);
        let decap = match opened(Decap::open_pinned(&d.pin)) {
            Ok(Some(decap)) => decap,
            Ok(None) => {
                steps.push(Step::Create);
                steps.extend(d.interfaces.iter().map(|i| Step::Attach { interface: i.clone(), mode: d.mode }));
                return Ok(steps);
            }
            Err(e) => {
                self.host.push(format!("decap {}: {e}", d.pin.display()));
                return Ok(steps);
            }
        };
        let have: BTreeSet<IpAddr> = decap.locals().into_iter().collect();
        let want: BTreeSet<IpAddr> = d.locals.iter().copied().collect();
        steps.extend(want.difference(&have).map(|a| Step::AddLocal(*a)));
        steps.extend(have.difference(&want).map(|a| Step::RemoveLocal(*a)));
        attachments(&decap.attachments(), &decap.lost_attachments(), &d.interfaces, d.mode, &mut steps);
        Ok(steps)
    }
}

/// One VIP's changes, as [`Planner::lb`] finds them.
struct VipChange {
    vip: Vip,
    /// The file's settings.
    spec: VipConfig,
    /// Its [`Step::AddVip`], [`Step::UpdateVip`] or [`Step::ReconfigureVip`].
    first: Option<Step>,
    /// Its [`Step::Backends`].
    batch: Option<Step>,
    /// The backend slots it holds now (a re-add frees them all).
    slots: usize,
    /// With a [`Step::ReconfigureVip`]: the backends it runs now, which
    /// its re-add removes.
    running: Vec<BackendAddr>,
}

/// Each VIP's steps, in VIP order, each backend batch one table swap; but
/// a batch whose removals another VIP's additions need runs its removals
/// first, in a pass of their own over every such VIP: the library checks
/// each batch against the state before it, so a NAT backend moved from one
/// VIP to another clashes with itself while the first still has it
/// ([`LbError::NatBackendConflict`](crate::LbError)), and a batch adding
/// backends finds the LB's backend table full when the slots it needs are
/// freed only by a later VIP's batch (new slots are taken before the swap,
/// old ones freed after it). Traded: such a VIP changes in two swaps, not
/// one; between them it runs without the removed backends and before the
/// added ones (without any, when all of them are replaced). A VIP no other
/// needs the removals of still changes in one swap. A re-added VIP
/// ([`Step::ReconfigureVip`]) frees its backends (NAT ones, slots) at its
/// re-add: when another VIP's additions need them, the re-add runs in that
/// first pass too (else an earlier VIP's batch would meet them still held),
/// and the VIP runs without backends until its batch in the second pass.
fn backend_steps(mut per_vip: Vec<VipChange>, max_backends: u32, steps: &mut Vec<Step>) {
    let parts = |c: &VipChange| match &c.batch {
        Some(Step::Backends { added, removed, .. }) => (added.len(), removed.len()),
        _ => (0, 0),
    };
    // Whether `gone` (backends of `c` in `mode`) clash with a NAT addition
    // of another VIP: the library's own check, against just those backends.
    let adds_clashing = |c: &VipChange, mode: crate::ForwardingMode, gone: &[BackendAddr]| {
        mode == crate::ForwardingMode::Nat
            && per_vip.iter().any(|o| match &o.batch {
                Some(Step::Backends { added, .. }) if o.vip != c.vip && o.spec.mode == crate::ForwardingMode::Nat => {
                    added.iter().any(|b| {
                        let theirs = gone.iter().map(|r| (&c.vip, crate::ForwardingMode::Nat, r));
                        crate::lb::check_nat_backend(&o.vip, &b.addr, theirs).is_err()
                    })
                }
                _ => false,
            })
    };
    // Which VIPs' removals go first: those a NAT addition elsewhere clashes
    // with.
    let mut early: Vec<bool> = per_vip
        .iter()
        .map(|c| match &c.batch {
            Some(Step::Backends { removed, .. }) => adds_clashing(c, c.spec.mode, removed),
            _ => false,
        })
        .collect();
    // Which re-adds go first: those whose running backends (in the running
    // mode) a NAT addition elsewhere clashes with.
    let mut readd_early: Vec<bool> = per_vip
        .iter()
        .map(|c| match &c.first {
            Some(Step::ReconfigureVip { from, .. }) => adds_clashing(c, from.mode, &c.running),
            _ => false,
        })
        .collect();
    // The table's use, batch by batch in VIP order: when an addition would
    // not fit, every VIP's removals go first (re-adds holding slots too).
    let mut used: usize = per_vip.iter().map(|c| c.slots).sum();
    let mut full = false;
    for c in &per_vip {
        if matches!(c.first, Some(Step::ReconfigureVip { .. })) {
            used -= c.slots;
        }
        let (added, removed) = parts(c);
        full |= used + added > max_backends as usize;
        used = (used + added).saturating_sub(removed);
    }
    if full {
        // Only removals: the whole batch moves, still one swap.
        for (i, c) in per_vip.iter().enumerate() {
            early[i] |= parts(c).1 > 0;
            readd_early[i] |= matches!(c.first, Some(Step::ReconfigureVip { .. })) && c.slots > 0;
        }
    }
    for ((c, early), readd) in per_vip.iter_mut().zip(early).zip(readd_early) {
        if readd {
            steps.extend(c.first.take());
        }
        let Some(Step::Backends { vip, removed, .. }) = c.batch.as_mut().filter(|_| early) else { continue };
        let removed = std::mem::take(removed);
        steps.push(Step::Backends { vip: *vip, added: Vec::new(), reweighted: Vec::new(), removed });
        if let Some(Step::Backends { added, reweighted, .. }) = &c.batch {
            if added.is_empty() && reweighted.is_empty() {
                c.batch = None;
            }
        }
    }
    for c in per_vip {
        // A table changed in place that shrinks goes after the batch, which
        // may remove the backends it has no room for; one that grows goes
        // before, giving the batch's additions their room.
        let shrinks = matches!(c.first, Some(Step::UpdateVip { from, to, .. }) if to.table_size < from.table_size);
        if shrinks {
            steps.extend(c.batch);
            steps.extend(c.first);
        } else {
            steps.extend(c.first);
            steps.extend(c.batch);
        }
    }
}

/// Named sets by name, as the file and the running filter have them.
type NamedSets = BTreeMap<String, Vec<IpNetwork>>;

/// Protected ports and their policies, as the file and the running filter
/// have them.
type SynPorts = BTreeMap<u16, SynPolicy>;

/// The running filter's named sets, rules and SYN-guarded ports, or `None`
/// when it has no guard stage.
fn running_guard(filter: &Filter) -> Result<Option<(NamedSets, Vec<Rule>, SynPorts)>, RuleError> {
    let names = match filter.sets().names() {
        Ok(n) => n,
        Err(RuleError::NoGuard { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut sets = BTreeMap::new();
    for name in names {
        let entries: BTreeSet<IpNetwork> = filter.sets().get(&name).iter()?.collect();
        sets.insert(name, entries.into_iter().collect());
    }
    let rules = filter.rules().list()?.into_iter().map(|e| e.rule).collect();
    let syn = filter.syn_guard().status()?.into_iter().map(|p| (p.port, p.policy)).collect();
    Ok(Some((sets, rules, syn)))
}

/// The steps from the running sets and rules to the file's: sets created
/// and filled first (rules may name them), then one whole-set rule
/// replace, then the sets the file dropped deleted (no rule names them any
/// more), then the SYN guard's ports: protected or changed, then
/// unprotected.
///
/// The prefix table's room is counted in the order the steps run: a set
/// whose change fits only once the sets the file drops are deleted (the
/// file's sets fit the table, checked when it is read, but not beside
/// those, which the running rules may still name) changes after the rule
/// replace and those deletions, by its differences: the new rules meet
/// its old prefixes until then (an empty set, when it is new). Refusing
/// such a file instead would leave it applicable only in two edits.
fn guard_steps(f: &FilterConfig, have_sets: &NamedSets, have: &[Rule], have_syn: &SynPorts, steps: &mut Vec<Step>) {
    let max = f.guard.max_set_entries;
    // The prefix table's use as the steps go (every set, both the live
    // copies and, during a replace, the new one beside it); sets that
    // shrink go first, so those that grow find the room they free.
    let mut used: usize = have_sets.values().map(Vec::len).sum();
    let mut order: Vec<(&String, &Vec<IpNetwork>)> = f.sets.iter().collect();
    order.sort_by_key(|(name, want)| want.len() >= have_sets.get(*name).map_or(0, Vec::len));
    // The set's change, the table's use after it, and whether it fits now.
    let change = |name: &String, current: &[IpNetwork], want: &Vec<IpNetwork>, used: usize| {
        let (c, w): (BTreeSet<_>, BTreeSet<_>) = (current.iter().collect(), want.iter().collect());
        let added: Vec<IpNetwork> = w.difference(&c).map(|n| **n).collect();
        let removed: Vec<IpNetwork> = c.difference(&w).map(|n| **n).collect();
        let after = used + want.len() - current.len();
        // A whole replace builds the new set beside the live one (a new
        // set has none): with no room for both (a set over half the
        // table), by differences, removals first (the table's peak is then
        // its use after).
        if used + want.len() <= max || current.is_empty() {
            let (added, removed) = (added.len(), removed.len());
            (Step::ReplaceSet { name: name.clone(), entries: want.clone(), added, removed }, after, after <= max)
        } else {
            (Step::EditSet { name: name.clone(), added, removed }, after, after <= max)
        }
    };
    let mut deferred = Vec::new();
    for (name, want) in order {
        let current = match have_sets.get(name) {
            Some(c) => c.as_slice(),
            None => {
                steps.push(Step::CreateSet(name.clone()));
                &[]
            }
        };
        if current != want.as_slice() {
            match change(name, current, want, used) {
                (step, after, true) => {
                    steps.push(step);
                    used = after;
                }
                _ => deferred.push((name, current, want)),
            }
        }
    }
    if have != f.rules.as_slice() {
        // Kept: rules of both, paired as Rules::replace pairs them.
        let kept = crate::filter::rules::pair_rules(have, &f.rules).iter().flatten().count();
        steps.push(Step::ReplaceRules {
            rules: f.rules.clone(),
            added: f.rules.len() - kept,
            removed: have.len() - kept,
            kept,
        });
    }
    for name in have_sets.keys().filter(|n| !f.sets.contains_key(*n)) {
        steps.push(Step::DeleteSet(name.clone()));
        used -= have_sets[name].len();
    }
    // Shrinking ones first still, then growing ones up to the file's total,
    // which fits (checked when the file is read).
    for (name, current, want) in deferred {
        let (step, after, _) = change(name, current, want, used);
        steps.push(step);
        used = after;
    }
    for (port, policy) in &f.syn {
        let from = have_syn.get(port).copied();
        if from != Some(*policy) {
            steps.push(Step::Protect { port: *port, policy: *policy, from });
        }
    }
    for port in have_syn.keys().filter(|p| !f.syn.contains_key(*p)) {
        steps.push(Step::Unprotect(*port));
    }
}

fn sys_ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; 16];
    // SAFETY: buf has IF_NAMESIZE (16) bytes, as if_indextoname requires.
    let p = unsafe { nix::libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn limit_text(l: crate::NewFlowLimit) -> String {
    match l {
        crate::NewFlowLimit::Unlimited => "unlimited".into(),
        crate::NewFlowLimit::PerCpu { per_second, burst } => format!("{per_second}/s burst {burst}"),
    }
}

/// Detaches what is attached but not wanted (or in another mode than the
/// one asked for), then attaches what is missing.
fn attachments(have: &[Attachment], lost: &[Attachment], want: &[String], mode: AttachMode, steps: &mut Vec<Step>) {
    // A lost one the file names goes with its attach.
    for a in lost.iter().filter(|a| !want.contains(&a.interface)) {
        steps.push(Step::ForgetLost { interface: a.interface.clone() });
    }
    // Interfaces the file drops first; then, interface by interface, a
    // mode change (its detach right before its attach, so one interface at
    // a time runs nothing, not all of them while the first attach is
    // tried) or a new attachment.
    for a in have.iter().filter(|a| !want.contains(&a.interface)) {
        steps.push(Step::Detach { interface: a.interface.clone(), mode: a.mode });
    }
    for i in want {
        match have.iter().find(|a| a.interface == *i) {
            Some(a) if mode == AttachMode::Auto || a.mode == mode => {}
            Some(a) => {
                steps.push(Step::Detach { interface: i.clone(), mode: a.mode });
                steps.push(Step::Attach { interface: i.clone(), mode });
            }
            None => steps.push(Step::Attach { interface: i.clone(), mode }),
        }
    }
}

/// Sections run in a fixed order (decapsulators, load balancers, filters),
/// so an interface the file moves from one program to another would be
/// attached to the new one before the old one leaves it, and the attach
/// refused, every time; or, moving the other way (an LB's or a decap's
/// interface to a filter), left running nothing while the filter is
/// created and filled. Each such detach, in a later section or an earlier
/// one, is taken out of its section and run, as a section of its own (a
/// hand-over: [`SectionPlan`]'s `hand_over`), right before the attach that
/// needs the interface: the interface runs neither program only between
/// the two, and a refused attach gives it back ([`Plan::apply`]).
fn hand_over(mut sections: Vec<SectionPlan>) -> Vec<SectionPlan> {
    let mut i = 0;
    while i < sections.len() {
        let found = sections[i].steps.iter().enumerate().find_map(|(k, step)| {
            let Step::Attach { interface, .. } = step else { return None };
            // Every other section, earlier ones too: sections run decap ->
            // lb -> filter, so an interface moving from an LB or a decap to
            // a filter has its detach in an earlier section, and left
            // there it would run nothing while the filter is created and
            // filled (3 s measured for a 200k-entry list). A hand-over
            // already moved belongs to its own attach.
            (0..sections.len()).filter(|&j| j != i && !sections[j].hand_over).find_map(|j| {
                let other = &sections[j];
                let d = other.steps.iter().position(|st| match st {
                    Step::Detach { interface: x, .. } => x == interface,
                    // A removal in an earlier section cannot move: the
                    // creation after it in its section needs it done (a
                    // re-created program, --recreate, leaves its
                    // interfaces before it is created again). Not fixed:
                    // the interface then runs nothing until this attach;
                    // attaching here before that removal would need this
                    // section split around the earlier one, and a filter
                    // chained to the re-created LB finished before it
                    // exists (README, "Moving an interface").
                    Step::Remove { .. } => j > i && other.holds.contains(interface),
                    _ => false,
                })?;
                (other.netns == sections[i].netns).then_some((k, j, d))
            })
        });
        let Some((k, j, d)) = found else {
            i += 1;
            continue;
        };
        let detach = sections[j].steps.remove(d);
        let rest = sections[i].steps.split_off(k);
        let (head, after) = (sections[i].clone(), SectionPlan { steps: rest, ..sections[i].clone() });
        let moved = SectionPlan { steps: vec![detach], hand_over: true, ..sections[j].clone() };
        if j > i {
            sections[j].holds.clear();
        }
        sections.splice(i..=i, [head, moved, after]);
        // The hand-over and the attach after it are settled: look on from
        // the attach's section.
        i += 2;
    }
    sections.retain(|s| !s.steps.is_empty());
    sections
}

impl Config {
    /// What makes the running state match this file: reads every program
    /// it describes through the library (reopening its pin directory) and
    /// compares. Nothing is changed.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Host`] with every problem of the host: interfaces or
    /// network namespaces that do not exist, pin directories that hold
    /// something else; [`ConfigError::Fixed`] when a fixed setting differs
    /// (see [`PlanOptions::recreate`]); [`ConfigError::Step`] when a running
    /// program cannot be read.
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        self.plan_with(PlanOptions::default())
    }

    /// [`Config::plan`] with options.
    ///
    /// # Errors
    ///
    /// As [`Config::plan`].
    pub fn plan_with(&self, options: PlanOptions) -> Result<Plan, ConfigError> {
        let pins = self.filters.iter().map(|f| (&f.pin, names::XDPG_FILTER));
        let pins = pins.chain(self.lbs.iter().map(|l| (&l.pin, names::XDPG_LB)));
        let pins = pins.chain(self.decaps.iter().map(|d| (&d.pin, names::XDPG_DECAP)));
        let own = pins.filter_map(|(pin, name)| pinned_program_id(pin, name)).collect();
        let filters = self.filters.iter().map(|f| f.pin.clone()).collect();
        let mut p = Planner {
            options,
            host: Vec::new(),
            fixed: Vec::new(),
            lb_ids: BTreeMap::new(),
            own,
            filters,
            held: Vec::new(),
            removing: BTreeMap::new(),
        };
        let mut sections = Vec::new();
        let section = |program, pin: &Path, netns: &Option<String>, steps, p: &mut Planner| SectionPlan {
            program,
            pin: pin.to_owned(),
            netns: netns.clone(),
            steps,
            hand_over: false,
            holds: p.removing.remove(pin).unwrap_or_default(),
        };
        for d in &self.decaps {
            let steps = p.decap(d)?;
            sections.push(section(Program::Decap, &d.pin, &d.netns, steps, &mut p));
        }
        for l in &self.lbs {
            let steps = p.lb(l)?;
            sections.push(section(Program::Lb, &l.pin, &l.netns, steps, &mut p));
        }
        for f in &self.filters {
            let steps = p.filter(f)?;
            sections.push(section(Program::Filter, &f.pin, &f.netns, steps, &mut p));
        }
        if !p.host.is_empty() {
            return Err(ConfigError::Host { problems: p.host });
        }
        match p.fixed.len() {
            0 => {}
            1 => {
                let (section, changes) = p.fixed.remove(0);
                return Err(ConfigError::Fixed { section, changes });
            }
            // Every one at once: each difference named with its section.
            _ => {
                let section = p.fixed.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(" and ");
                let changes = p.fixed.iter().flat_map(|(s, c)| c.iter().map(move |c| format!("{s}: {c}"))).collect();
                return Err(ConfigError::Fixed { section, changes });
            }
        }
        Ok(Plan { config: self.clone(), direction: Direction::Up, sections: hand_over(sections), held: p.held })
    }

    /// What takes this file's programs down: each one pinned is detached
    /// from every interface and its pins removed (filters first, so none
    /// passes packets to an LB on its way out). Programs not pinned are
    /// left out; what the file does not describe is left alone. A section
    /// whose network namespace is gone (its interfaces, and so its
    /// attachments, went with it) has its pins removed from the caller's.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Host`] when a pin directory holds something that is
    /// not the section's program, or a load balancer it would remove is
    /// still chained behind a filter it leaves running
    /// ([`LoadBalancer::chained_from`]).
    pub fn plan_down(&self) -> Result<Plan, ConfigError> {
        let places = (self.filters.iter().map(|f| (Program::Filter, f.pin.clone(), f.netns.clone())))
            .chain(self.lbs.iter().map(|l| (Program::Lb, l.pin.clone(), l.netns.clone())))
            .chain(self.decaps.iter().map(|d| (Program::Decap, d.pin.clone(), d.netns.clone())))
            .collect();
        plan_down_of(self.clone(), places)
    }

    /// [`plan_down`](Config::plan_down) of the file at `path`, reading
    /// only each section's `pin` and `netns`: a file whose other settings
    /// no longer check (a list file deleted, a typo, a key of a newer
    /// build) still takes its programs down, as `xdpguard down` and a
    /// service's stop must. The plan's [`Config`] has no sections.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`]; [`ConfigError::Invalid`] for TOML syntax, a
    /// pin that is not an absolute path or a malformed namespace name;
    /// [`ConfigError::Host`] as [`plan_down`](Config::plan_down).
    pub fn plan_down_file(path: impl AsRef<Path>) -> Result<Plan, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), error: source })?;
        let places = super::parse::places(&text, path)?;
        let config = Config { path: path.to_owned(), filters: Vec::new(), lbs: Vec::new(), decaps: Vec::new() };
        plan_down_of(config, places)
    }
}

/// The problems of removing the LB pinned at `lb_pin` while filters of
/// `chains` (its [`LoadBalancer::chained_from`]) other than the file's
/// (`filters`, their pin directories) pass packets on to it: one per such
/// filter, saying `why` it matters and, after it, how to stop the chaining.
fn chained_outside(chains: &[ChainedFrom], lb_pin: &Path, filters: &[PathBuf], why: &str) -> Vec<String> {
    chains
        .iter()
        .filter(|c| !c.pin.as_ref().is_some_and(|p| filters.contains(p)))
        .map(|c| {
            format!(
                "lb {}: {} passes its packets on to it and {why} stop its chaining first ({})",
                lb_pin.display(),
                c.filter_name(),
                c.unchain_hint()
            )
        })
        .collect()
}

/// The plan removing the programs pinned at `places` (program, pin
/// directory, namespace). A namespace that is gone took its interfaces,
/// and with them the attachments: what is pinned (on the host's bpffs)
/// is removed from the caller's namespace.
fn plan_down_of(config: Config, places: Vec<(Program, PathBuf, Option<String>)>) -> Result<Plan, ConfigError> {
    let mut host = Vec::new();
    let mut sections = Vec::new();
    let filters: Vec<PathBuf> = places.iter().filter(|p| p.0 == Program::Filter).map(|p| p.1.clone()).collect();
    for (program, pin, netns) in places {
        let netns = netns.filter(|n| Path::new("/run/netns").join(n).exists());
        let _ns = match Entered::enter(netns.as_deref()) {
            Ok(e) => e,
            Err(e) => {
                host.push(format!("{program} {}: {e}", pin.display()));
                continue;
            }
        };
        // An LB's filters chaining it, from the handle that shows it is there.
        let mut chains = Vec::new();
        let present = match program {
            Program::Filter => super::apply::present(Filter::open_pinned(&pin)),
            Program::Lb => {
                let opened = LoadBalancer::open_pinned(&pin);
                // The file's filters are found wherever they are pinned.
                let near: Vec<&Path> = filters.iter().map(PathBuf::as_path).collect();
                chains = opened.as_ref().map(|lb| lb.chained_from_near(&near)).unwrap_or_default();
                super::apply::present(opened)
            }
            Program::Decap => super::apply::present(Decap::open_pinned(&pin)),
        };
        match present {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                host.push(format!("{program} {}: {e}", pin.display()));
                continue;
            }
        }
        // An LB a filter this file leaves running still passes packets to
        // would go on balancing them, unpinned and out of every tool's reach.
        let why = "is not taken down by this file: unpinned, the LB would go on balancing them out of every \
                   tool's reach. Take that filter down too, or";
        host.extend(chained_outside(&chains, &pin, &filters, why));
        let steps = vec![Step::Remove { changes: Vec::new() }];
        sections.push(SectionPlan { program, pin, netns, steps, hand_over: false, holds: Vec::new() });
    }
    if !host.is_empty() {
        return Err(ConfigError::Host { problems: host });
    }
    Ok(Plan { config, direction: Direction::Down, sections, held: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(interface: &str, ifindex: u32, mode: AttachMode) -> Attachment {
        Attachment { ifindex, interface: interface.into(), mode }
    }

    /// An attachment lost on an interface the file no longer names is
    /// forgotten; one on an interface it names goes with the attach there.
    #[test]
    fn lost_attachments_the_file_does_not_name_are_forgotten() {
        let mut steps = Vec::new();
        let have = [at("eth0", 2, AttachMode::Native)];
        let lost = [at("eth1", 3, AttachMode::Native), at("eth2", 4, AttachMode::Generic)];
        let want = ["eth0".to_owned(), "eth2".to_owned()];
        attachments(&have, &lost, &want, AttachMode::Auto, &mut steps);
        assert_eq!(
            steps,
            [
                Step::ForgetLost { interface: "eth1".into() },
                Step::Attach { interface: "eth2".into(), mode: AttachMode::Auto },
            ]
        );
        assert_eq!(steps[0].to_string(), "forget the attachment to eth1 (its interface is gone)");
    }

    /// Interfaces dropped first; a mode change detaches and attaches one
    /// interface at a time.
    #[test]
    fn a_mode_change_goes_one_interface_at_a_time() {
        let mut steps = Vec::new();
        let have =
            [at("eth0", 2, AttachMode::Native), at("eth1", 3, AttachMode::Native), at("eth3", 5, AttachMode::Native)];
        let want = ["eth0".to_owned(), "eth1".to_owned(), "eth2".to_owned()];
        attachments(&have, &[], &want, AttachMode::Generic, &mut steps);
        let det = |i: &str| Step::Detach { interface: i.into(), mode: AttachMode::Native };
        let att = |i: &str| Step::Attach { interface: i.into(), mode: AttachMode::Generic };
        assert_eq!(steps, [det("eth3"), det("eth0"), att("eth0"), det("eth1"), att("eth1"), att("eth2")]);
    }

    /// Removals another VIP's additions need (a NAT backend moving, a full
    /// table) run first, on their own; the rest stays one batch per VIP.
    #[test]
    fn removals_other_vips_need_run_first() {
        let nat = VipConfig { mode: crate::ForwardingMode::Nat, ..VipConfig::default() };
        let b = |s: &str| Backend { addr: s.parse().unwrap(), weight: 1 };
        let change = |vip: &str, added: &[&str], removed: &[&str], slots| VipChange {
            vip: vip.parse().unwrap(),
            spec: nat,
            first: None,
            batch: Some(Step::Backends {
                vip: vip.parse().unwrap(),
                added: added.iter().map(|a| b(a)).collect(),
                reweighted: Vec::new(),
                removed: removed.iter().map(|a| a.parse().unwrap()).collect(),
            }),
            slots,
            running: Vec::new(),
        };
        let swap = || {
            vec![
                change("tcp 203.0.113.20:80", &["198.51.100.51:8080"], &["198.51.100.50:8080"], 1),
                change("tcp 203.0.113.21:80", &["198.51.100.50:8080"], &["198.51.100.51:8080"], 1),
            ]
        };
        let mut steps = Vec::new();
        backend_steps(swap(), 64, &mut steps);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "VIP tcp 203.0.113.20:80 backends: remove 198.51.100.50:8080 (one table swap)",
                "VIP tcp 203.0.113.21:80 backends: remove 198.51.100.51:8080 (one table swap)",
                "VIP tcp 203.0.113.20:80 backends: add 198.51.100.51:8080 weight 1 (one table swap)",
                "VIP tcp 203.0.113.21:80 backends: add 198.51.100.50:8080 weight 1 (one table swap)",
            ]
        );
        // Other ports, no clash, room enough: one batch each, as before.
        let apart = vec![
            change("tcp 203.0.113.20:80", &["198.51.100.51:9090"], &["198.51.100.50:8080"], 1),
            change("tcp 203.0.113.21:80", &["198.51.100.52:8080"], &["198.51.100.51:8080"], 1),
        ];
        let mut steps = Vec::new();
        backend_steps(apart, 64, &mut steps);
        assert_eq!(steps.len(), 2, "{steps:?}");
        // A slot moved from the later VIP to the earlier on a full table.
        let moved = vec![
            change("tcp 203.0.113.20:80", &["198.51.100.60:8080"], &[], 1),
            change("tcp 203.0.113.21:80", &[], &["198.51.100.61:8080"], 1),
        ];
        let mut steps = Vec::new();
        backend_steps(moved, 2, &mut steps);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "VIP tcp 203.0.113.21:80 backends: remove 198.51.100.61:8080 (one table swap)",
                "VIP tcp 203.0.113.20:80 backends: add 198.51.100.60:8080 weight 1 (one table swap)",
            ]
        );

        // A later VIP re-added (other settings) frees the NAT backend an
        // earlier one takes: its re-add runs first, its batch in VIP order.
        let readd = |slots| {
            let mut later = change("tcp 203.0.113.21:80", &["198.51.100.50:8080"], &[], slots);
            later.first =
                Some(Step::ReconfigureVip { vip: later.vip, from: nat, to: VipConfig { table_size: 2053, ..nat } });
            later.running = vec!["198.51.100.51:8080".parse().unwrap()];
            vec![change("tcp 203.0.113.20:80", &["198.51.100.51:8080"], &["198.51.100.50:8080"], 1), later]
        };
        let mut steps = Vec::new();
        backend_steps(readd(1), 64, &mut steps);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "VIP tcp 203.0.113.20:80 backends: remove 198.51.100.50:8080 (one table swap)",
                "re-add VIP tcp 203.0.113.21:80 (a new forwarding mode): mode nat, table size 65537 -> mode nat, table size 2053 (its connections choose afresh)",
                "VIP tcp 203.0.113.20:80 backends: add 198.51.100.51:8080 weight 1 (one table swap)",
                "VIP tcp 203.0.113.21:80 backends: add 198.51.100.50:8080 weight 1 (one table swap)",
            ],
            "{text:#?}"
        );
        // Likewise when only the slots it frees make room, on a full table.
        let mut full = readd(1);
        full[1].running = vec!["198.51.100.99:9999".parse().unwrap()];
        full[1].batch = None;
        full[0].batch = Some(Step::Backends {
            vip: full[0].vip,
            added: vec![b("198.51.100.61:8080")],
            reweighted: Vec::new(),
            removed: Vec::new(),
        });
        let mut steps = Vec::new();
        backend_steps(full, 2, &mut steps);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(text[0].starts_with("re-add VIP tcp 203.0.113.21:80 (a new forwarding mode): "), "{text:#?}");
        assert_eq!(text[1], "VIP tcp 203.0.113.20:80 backends: add 198.51.100.61:8080 weight 1 (one table swap)");
    }

    /// The prefix table's room counted in the order the steps run: a set
    /// that fits only once the dropped sets are gone changes after the
    /// rule replace and their deletion.
    #[test]
    fn sets_grow_into_the_room_dropped_sets_free() {
        let file = "[[filter]]\ninterfaces = [\"eth0\"]\nmax_set_entries = 5\n\
                    rules = \"drop udp dport 9 from set b\"\n\n[filter.sets]\n\
                    b = [\"192.0.2.3\", \"192.0.2.4\", \"192.0.2.6\", \"192.0.2.7\", \"192.0.2.8\"]\n";
        let config: Config = file.parse().unwrap();
        let f = &config.filters[0];
        let nets = |l: &[&str]| l.iter().map(|n| n.parse::<IpNetwork>().unwrap()).collect::<Vec<_>>();
        let have_sets: NamedSets = [
            ("a".to_owned(), nets(&["192.0.2.1/32"])),
            ("b".to_owned(), nets(&["192.0.2.3/32", "192.0.2.4/32"])),
            ("old".to_owned(), nets(&["192.0.2.5/32"])),
        ]
        .into();
        let rule = |r: &str| r.parse::<Rule>().unwrap().normalized().unwrap();
        let have = [rule("drop udp dport 9 from set a"), rule("drop udp dport 10 from set b")];
        let mut steps = Vec::new();
        guard_steps(f, &have_sets, &have, &BTreeMap::new(), &mut steps);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "rules: replace with 1 rules (+1 -2, 0 kept; one switch)",
                "set a: delete",
                "set old: delete",
                "set b: remove 0, then add 3 in place (no room for a second copy: not one switch)",
            ]
        );
        // With room beside the dropped sets: one replace before the rules,
        // the dropped sets deleted after them, as before.
        let roomy = file.replace("max_set_entries = 5", "max_set_entries = 16");
        let config: Config = roomy.parse().unwrap();
        let mut steps = Vec::new();
        guard_steps(&config.filters[0], &have_sets, &have, &BTreeMap::new(), &mut steps);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "set b: replace with 5 entries (+3 -0)",
                "rules: replace with 1 rules (+1 -2, 0 kept; one switch)",
                "set a: delete",
                "set old: delete",
            ]
        );
    }

    fn section(program: Program, pin: &str, netns: Option<&str>, steps: Vec<Step>) -> SectionPlan {
        let (pin, netns) = (PathBuf::from(pin), netns.map(str::to_owned));
        SectionPlan { program, pin, netns, steps, hand_over: false, holds: Vec::new() }
    }

    fn lines(sections: &[SectionPlan]) -> Vec<String> {
        sections
            .iter()
            .flat_map(|s| {
                s.steps.iter().map(move |st| format!("{}{}", if s.hand_over { "*" } else { "" }, line(s, st)))
            })
            .collect()
    }

    /// Each detach an attach of an earlier section needs runs, as a
    /// hand-over, right before it; in another namespace, it does not.
    #[test]
    fn hand_overs_run_right_before_the_attach_that_needs_the_interface() {
        let det = |i: &str| Step::Detach { interface: i.into(), mode: AttachMode::Native };
        let att = |i: &str| Step::Attach { interface: i.into(), mode: AttachMode::Auto };
        let lb = section(
            Program::Lb,
            "/l",
            None,
            vec![Step::AddLocal("192.0.2.1".parse().unwrap()), att("eth0"), att("eth1")],
        );
        let filter = section(Program::Filter, "/f", None, vec![Step::ClearNext, det("eth0"), det("eth1")]);
        let out = hand_over(vec![lb.clone(), filter.clone()]);
        assert_eq!(
            lines(&out),
            [
                "lb /l: decapsulate for 192.0.2.1",
                "*filter /f: detach from eth0 (native mode)",
                "lb /l: attach to eth0 (auto mode)",
                "*filter /f: detach from eth1 (native mode)",
                "lb /l: attach to eth1 (auto mode)",
                "filter /f: stop passing packets on to an lb",
            ]
        );
        // A section left empty goes; the same interface name in another
        // namespace is another interface.
        let elsewhere = SectionPlan { netns: Some("other".into()), ..filter.clone() };
        assert_eq!(hand_over(vec![lb.clone(), elsewhere.clone()]), [lb.clone(), elsewhere]);
        let only = section(Program::Filter, "/f", None, vec![det("eth0")]);
        let out = hand_over(vec![section(Program::Lb, "/l", None, vec![att("eth0")]), only]);
        assert_eq!(lines(&out), ["*filter /f: detach from eth0 (native mode)", "lb /l: attach to eth0 (auto mode)"]);

        // From an earlier section (an LB's interface to a filter): its
        // detach waits for the filter's attach, not the filter's creation.
        let lb_gives =
            section(Program::Lb, "/l", None, vec![Step::AddLocal("192.0.2.1".parse().unwrap()), det("eth0")]);
        let filter_takes = section(Program::Filter, "/f", None, vec![Step::Create, Step::ClearNext, att("eth0")]);
        let out = hand_over(vec![lb_gives, filter_takes]);
        assert_eq!(
            lines(&out),
            [
                "lb /l: decapsulate for 192.0.2.1",
                "filter /f: create and pin",
                "filter /f: stop passing packets on to an lb",
                "*lb /l: detach from eth0 (native mode)",
                "filter /f: attach to eth0 (auto mode)",
            ]
        );

        // A program re-created (--recreate) leaves its interfaces with its removal.
        let remove = Step::Remove { changes: vec!["v4_capacity 1 -> 2".into()] };
        let mut recreated = section(Program::Filter, "/f", None, vec![remove, Step::Create, att("eth2")]);
        recreated.holds = vec!["eth0".into()];
        let out = hand_over(vec![section(Program::Lb, "/l", None, vec![att("eth0")]), recreated]);
        assert_eq!(
            lines(&out),
            [
                "*filter /f: remove, to create again (v4_capacity 1 -> 2)",
                "lb /l: attach to eth0 (auto mode)",
                "filter /f: create and pin",
                "filter /f: attach to eth2 (auto mode)",
            ]
        );
    }
}
