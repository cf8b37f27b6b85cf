//! Applying a plan: each step one library call, then the running state read
//! back and compared with the file.

use std::path::{Path, PathBuf};

use super::model::{Config, DecapConfig, FilterConfig, LbConfig};
use super::netns::Entered;
use super::plan::{line, opened, Direction, Plan, Program, SectionPlan, Step};
use crate::error::{ConfigError, Error, PinError};
use crate::{AttachMode, Decap, Filter, LbDigest, ListKind, LoadBalancer};

/// What [`Plan::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// Each step done, as a line (as [`Plan::lines`] shows it).
    pub changes: Vec<String>,
    /// Each load balancer's digests after applying, by pin directory
    /// (checked equal to what the file promises,
    /// [`LbConfig::expected_digest`], with the backends `keep_drained`
    /// left at weight 0 counted at 0). Empty for `down`.
    pub digests: Vec<(PathBuf, LbDigest)>,
}

/// Whether something of ours is pinned there (leftovers of an interrupted
/// creation count: they are removed too).
pub(crate) fn present<T>(r: Result<T, Error>) -> Result<bool, Error> {
    match r {
        Ok(_) | Err(Error::Pin(PinError::Interrupted { .. })) => Ok(true),
        Err(Error::Pin(PinError::NotFound { .. })) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A section's program, opened or created on first use.
enum Handle {
    None,
    Filter(Box<Filter>),
    Lb(Box<LoadBalancer>),
    Decap(Box<Decap>),
}

struct Run<'a> {
    config: &'a Config,
    section: &'a SectionPlan,
    handle: Handle,
    /// Interfaces this run detached (with their mode): when an attach is
    /// refused (a mode a driver does not have), each of them that runs
    /// nothing now is attached again as it was, so no interface is left
    /// without its program.
    detached: Vec<(String, AttachMode)>,
    /// What that undo did, for the report.
    undone: Vec<String>,
}

impl Run<'_> {
    fn filter_config(&self) -> &FilterConfig {
        self.config.filters.iter().find(|f| f.pin == self.section.pin).expect("a plan's sections are the file's")
    }
    fn lb_config(&self) -> &LbConfig {
        self.config.lb(&self.section.pin).expect("a plan's sections are the file's")
    }
    fn decap_config(&self) -> &DecapConfig {
        self.config.decaps.iter().find(|d| d.pin == self.section.pin).expect("a plan's sections are the file's")
    }

    fn filter(&mut self) -> Result<&Filter, Error> {
        if !matches!(self.handle, Handle::Filter(_)) {
            self.handle = Handle::Filter(Box::new(Filter::open_pinned(&self.section.pin)?));
        }
        let Handle::Filter(f) = &self.handle else { unreachable!("just opened") };
        Ok(f)
    }
    fn lb(&mut self) -> Result<&LoadBalancer, Error> {
        if !matches!(self.handle, Handle::Lb(_)) {
            self.handle = Handle::Lb(Box::new(LoadBalancer::open_pinned(&self.section.pin)?));
        }
        let Handle::Lb(l) = &self.handle else { unreachable!("just opened") };
        Ok(l)
    }
    fn decap(&mut self) -> Result<&Decap, Error> {
        if !matches!(self.handle, Handle::Decap(_)) {
            self.handle = Handle::Decap(Box::new(Decap::open_pinned(&self.section.pin)?));
        }
        let Handle::Decap(d) = &self.handle else { unreachable!("just opened") };
        Ok(d)
    }

    fn create(&mut self) -> Result<(), Error> {
        let pin = &self.section.pin;
        self.handle = match self.section.program {
            Program::Filter => {
                let f = self.filter_config();
                let b = Filter::builder()
                    .pin(pin)
                    .mode(f.mode)
                    .v4_capacity(f.v4_capacity)
                    .v6_capacity(f.v6_capacity)
                    .malformed(f.malformed);
                let b = b.with_rule_capacities(&f.guard);
                Handle::Filter(Box::new(b.load()?))
            }
            Program::Lb => {
                let l = self.lb_config();
                let mut b = LoadBalancer::builder()
                    .pin(pin)
                    .mode(l.mode)
                    .max_vips(l.max_vips)
                    .max_backends(l.max_backends)
                    .connections(l.connections)
                    .nat_connections(l.nat_connections)
                    .max_interfaces(l.max_interfaces)
                    .hash_seed(l.hash_seed)
                    .udp_timeout(l.udp_timeout)
                    .next_hop_cache(l.next_hop_cache)
                    .new_flow_limit(l.new_flow_limit)
                    .echo_policy(l.echo)
                    .fragment_policy(l.fragments)
                    .options_policy(l.options);
                for n in &l.ipip_sources {
                    b = b.ipip_source(*n);
                }
                for i in l.egress() {
                    b = b.redirect_interface(i.as_str());
                }
                Handle::Lb(Box::new(b.load()?))
            }
            Program::Decap => {
                let d = self.decap_config();
                let mut b = Decap::builder().pin(pin).mode(d.mode);
                for a in &d.locals {
                    b = b.local(*a);
                }
                Handle::Decap(Box::new(b.load()?))
            }
        };
        Ok(())
    }

    /// Removes the program, or the leftovers of one whose creation died.
    fn remove(&mut self) -> Result<(), Error> {
        let pin = self.section.pin.clone();
        self.handle = Handle::None;
        match self.section.program {
            Program::Filter => match opened(Filter::open_pinned(&pin))? {
                Some(f) => f.unpin(),
                None => Filter::remove_interrupted(&pin),
            },
            Program::Lb => match opened(LoadBalancer::open_pinned(&pin))? {
                Some(l) => l.unpin(),
                None => LoadBalancer::remove_interrupted(&pin),
            },
            Program::Decap => match opened(Decap::open_pinned(&pin))? {
                Some(d) => d.unpin(),
                None => Decap::remove_interrupted(&pin),
            },
        }
    }

    /// Whether the file permits this VIP at an address of the host itself.
    fn permit_local(&self, vip: &crate::Vip) -> bool {
        self.lb_config().vips.iter().any(|v| v.vip == *vip && v.permit_local)
    }

    fn detach(&mut self, interface: &str) -> Result<(), Error> {
        match self.section.program {
            Program::Filter => self.filter()?.detach(interface),
            Program::Lb => self.lb()?.detach(interface),
            Program::Decap => self.decap()?.detach(interface),
        }
    }

    fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), Error> {
        match self.section.program {
            Program::Filter => drop(self.filter()?.attach(interface, mode)?),
            Program::Lb => drop(self.lb()?.attach(interface, mode)?),
            Program::Decap => drop(self.decap()?.attach(interface, mode)?),
        }
        Ok(())
    }

    fn step(&mut self, step: &Step, lbs: &[(PathBuf, Box<LoadBalancer>)]) -> Result<(), Error> {
        match step {
            Step::Create => self.create()?,
            Step::Remove { .. } => self.remove()?,
            Step::Attach { interface, mode } => {
                if let Err(e) = self.attach(interface, *mode) {
                    // Those attached since in their new mode refuse an
                    // attach in their old one (AttachedInAnotherMode): only
                    // the bare ones take their program back.
                    for (i, was) in self.detached.clone() {
                        if self.attach(&i, was).is_ok() {
                            self.undone.push(format!("attached to {i} again, in {was} mode as before"));
                        }
                    }
                    return Err(e);
                }
            }
            // Detaching by name also forgets a lost attachment there.
            Step::ForgetLost { interface } => self.detach(interface)?,
            Step::Detach { interface, mode } => {
                self.detach(interface)?;
                self.detached.push((interface.clone(), *mode));
            }
            Step::ReplaceList { list, entries, .. } => {
                let whole = self.filter_config().block_whole_family;
                let f = self.filter()?;
                let pl = match list {
                    ListKind::Allow => f.allowlist(),
                    _ if whole => f.blocklist().permit_whole_family(),
                    _ => f.blocklist(),
                };
                pl.replace(entries.iter().copied())?;
            }
            Step::SetMalformed(p) => self.filter()?.set_malformed_policy(*p),
            Step::SetMonitor(on) => self.filter()?.set_monitor(*on),
            Step::CreateSet(name) => drop(self.filter()?.sets().create(name)?),
            Step::ReplaceSet { name, entries, .. } => {
                let whole = self.filter_config().block_whole_family;
                let set = self.filter()?.sets().get(name);
                let set = if whole { set.permit_whole_family() } else { set };
                drop(set.replace(entries.iter().copied())?)
            }
            Step::EditSet { name, added, removed } => {
                let whole = self.filter_config().block_whole_family;
                let set = self.filter()?.sets().get(name);
                let set = if whole { set.permit_whole_family() } else { set };
                drop(set.remove_all(removed.iter().copied())?);
                drop(set.extend(added.iter().copied())?);
            }
            Step::ReplaceRules { rules, .. } => drop(self.filter()?.rules().replace(rules.iter().cloned())?),
            Step::DeleteSet(name) => drop(self.filter()?.sets().delete(name)?),
            Step::Protect { port, policy, .. } => self.filter()?.syn_guard().protect(*port, *policy)?,
            Step::Unprotect(port) => drop(self.filter()?.syn_guard().unprotect(*port)?),
            Step::SetNext(pin) => {
                let lb = lbs.iter().find(|(p, _)| p == pin).map(|(_, l)| &**l);
                let opened;
                let lb = match lb {
                    Some(l) => l,
                    None => {
                        opened = LoadBalancer::open_pinned(pin)?;
                        &opened
                    }
                };
                self.filter()?.set_next(lb.program_fd())?;
            }
            Step::ClearNext => self.filter()?.clear_next()?,
            Step::SetIpipSource(n) => self.lb()?.set_ipip_source(*n)?,
            Step::ClearIpipSource(n) => self.lb()?.clear_ipip_source(n.is_ipv6())?,
            Step::SetPolicies { .. } => {
                let l = self.lb_config().clone();
                let lb = self.lb()?;
                lb.set_echo_policy(l.echo);
                lb.set_fragment_policy(l.fragments);
                lb.set_options_policy(l.options);
                lb.set_new_flow_limit(l.new_flow_limit);
                lb.set_udp_timeout(l.udp_timeout);
                lb.set_next_hop_cache(l.next_hop_cache);
            }
            Step::AddRedirect(i) => drop(self.lb()?.add_redirect_interface(i.as_str())?),
            Step::RemoveRedirect { ifindex, .. } => self.lb()?.remove_redirect_interface(*ifindex)?,
            Step::AddVip { vip, config } => {
                let permit = self.permit_local(vip);
                add_vip(self.lb()?, *vip, *config, permit)?
            }
            Step::RemoveVip(vip) => self.lb()?.remove_vip(vip)?,
            Step::UpdateVip { vip, to, .. } => self.lb()?.reconfigure_vip(vip, *to)?,
            Step::ReconfigureVip { vip, to, .. } => {
                let permit = self.permit_local(vip);
                let lb = self.lb()?;
                lb.remove_vip(vip)?;
                add_vip(lb, *vip, *to, permit)?;
            }
            Step::Backends { vip, added, reweighted, removed } => {
                let mut batch = self.lb()?.batch(vip);
                for b in removed {
                    batch = batch.remove(*b);
                }
                for (b, _, w) in reweighted {
                    batch = batch.set_weight(*b, *w);
                }
                for b in added {
                    batch = batch.add(b.addr, b.weight);
                }
                batch.apply()?;
            }
            Step::AddLocal(a) => self.decap()?.add_local(*a)?,
            Step::RemoveLocal(a) => self.decap()?.remove_local(*a)?,
        }
        Ok(())
    }
}

impl Plan {
    /// Runs the plan's steps in order, through the public API, then reads
    /// the running state back and checks it matches the file: planning
    /// again finds nothing to do, and every LB's digests are the ones the
    /// file promises. An empty plan writes nothing.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Step`] when a step fails (those before it stay
    /// applied; applying again goes on from there);
    /// [`ConfigError::Mismatch`] when the state read back differs (another
    /// process changed it meanwhile); the errors of [`Config::plan`] while
    /// reading back.
    pub fn apply(&self) -> Result<Applied, ConfigError> {
        self.apply_reporting(|_| {})
    }

    /// [`Plan::apply`], calling `report` with each step's line once it is
    /// done (for progress output).
    ///
    /// # Errors
    ///
    /// As [`Plan::apply`].
    pub fn apply_reporting(&self, mut report: impl FnMut(&str)) -> Result<Applied, ConfigError> {
        let mut changes = Vec::new();
        // LBs handled so far, for the filters that pass packets to them.
        let mut lbs: Vec<(PathBuf, Box<LoadBalancer>)> = Vec::new();
        // Interfaces handed over from one program to another so far: a
        // refused attach gives them back.
        let mut handed: Vec<&SectionPlan> = Vec::new();
        for section in &self.sections {
            let ns = Entered::enter(section.netns.as_deref())
                .map_err(|problem| ConfigError::Host { problems: vec![problem] })?;
            let mut run =
                Run { config: &self.config, section, handle: Handle::None, detached: Vec::new(), undone: Vec::new() };
            for step in &section.steps {
                let text = line(section, step);
                if let Err(e) = run.step(step, &lbs) {
                    for undo in &run.undone {
                        report(&format!("{} {}: {undo}", section.program, section.pin.display()));
                    }
                    if matches!(step, Step::Attach { .. }) {
                        drop(run);
                        drop(ns);
                        for back in handed.iter().filter_map(|h| give_back(&self.config, h)) {
                            report(&back);
                        }
                    }
                    return Err(step_error(text, e));
                }
                report(&text);
                changes.push(text);
            }
            if let Handle::Lb(lb) = run.handle {
                lbs.push((section.pin.clone(), lb));
            }
            if section.hand_over {
                handed.push(section);
            }
        }
        drop(lbs);
        match self.direction {
            Direction::Up => self.check_up(changes),
            Direction::Down => self.check_down(changes),
        }
    }

    fn check_up(&self, changes: Vec<String>) -> Result<Applied, ConfigError> {
        let again = self.config.plan()?;
        if let Some(s) = again.sections.iter().find(|s| !s.steps.is_empty()) {
            let what: Vec<String> = s.steps.iter().map(ToString::to_string).collect();
            return Err(ConfigError::Mismatch {
                section: format!("{} {}", s.program, s.pin.display()),
                what: format!("it still needs: {}", what.join("; ")),
            });
        }
        let mut digests = Vec::new();
        for l in &self.config.lbs {
            let lb = LoadBalancer::open_pinned(&l.pin).map_err(|e| ConfigError::Step {
                step: format!("reading lb {}", l.pin.display()),
                error: Box::new(e),
            })?;
            let digest = lb.digest().map_err(|e| ConfigError::Step {
                step: format!("reading lb {}'s digest", l.pin.display()),
                error: Box::new(e.into()),
            })?;
            let expected = if l.keep_drained { kept_drained(l, &lb)?.expected_digest() } else { l.expected_digest() };
            if digest != expected {
                return Err(ConfigError::Mismatch {
                    section: format!("lb {}", l.pin.display()),
                    what: format!("its digest is {}, the file's {}", digest.overall, expected.overall),
                });
            }
            digests.push((l.pin.clone(), digest));
        }
        Ok(Applied { changes, digests })
    }

    fn check_down(&self, changes: Vec<String>) -> Result<Applied, ConfigError> {
        for s in &self.sections {
            let gone = |p: &Path| !p.exists() || std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !gone(&s.pin) && !matches!(present_at(s.program, &s.pin), Ok(false)) {
                return Err(ConfigError::Mismatch {
                    section: format!("{} {}", s.program, s.pin.display()),
                    what: "it is still pinned".into(),
                });
            }
        }
        Ok(Applied { changes, digests: Vec::new() })
    }
}

/// Adds a VIP, at an address of the host itself only when `permit_local`.
fn add_vip(lb: &LoadBalancer, vip: crate::Vip, config: crate::VipConfig, permit_local: bool) -> Result<(), Error> {
    let added = if permit_local { lb.add_vip_permit_local(vip, config) } else { lb.add_vip(vip, config) };
    Ok(added?)
}

/// A failed step's error: a full table named by the file's key that
/// raises it (and `apply --recreate`, which loads the program with it),
/// not the CLI option the library's error names.
fn step_error(step: String, e: Error) -> ConfigError {
    let full = match &e {
        Error::Rule(crate::RuleError::Full { what, capacity, setter }) if *setter != "(fixed)" => {
            Some(((*what).to_owned(), *capacity, *setter))
        }
        Error::List(crate::ListError::Full { what, capacity, setter }) => {
            Some(((*what).to_owned(), *capacity, *setter))
        }
        Error::Lb(crate::LbError::BackendTableFull { capacity }) => {
            Some(("the backend table (over all VIPs)".to_owned(), *capacity, "max_backends"))
        }
        Error::Lb(crate::LbError::VipTableFull { capacity }) => {
            Some(("the VIP table".to_owned(), *capacity, "max_vips"))
        }
        _ => None,
    };
    match full {
        Some((what, capacity, key)) => ConfigError::Full { step, what, capacity, key, error: Box::new(e) },
        None => ConfigError::Step { step, error: Box::new(e) },
    }
}

/// Attaches the program a hand-over detached back to its interface, if
/// nothing runs there now (the attach that needed it was refused); the
/// report's line when it did.
fn give_back(config: &Config, section: &SectionPlan) -> Option<String> {
    let [Step::Detach { interface, mode }] = section.steps.as_slice() else { return None };
    let _ns = Entered::enter(section.netns.as_deref()).ok()?;
    let mut run = Run { config, section, handle: Handle::None, detached: Vec::new(), undone: Vec::new() };
    run.attach(interface, *mode).ok()?;
    Some(format!(
        "{} {}: attached to {interface} again, in {mode} mode as before",
        section.program,
        section.pin.display()
    ))
}

/// `l` with the weights of the backends its health checker drained at 0
/// (`keep_drained`, as the plan holds them): what its digest must then be.
/// A 0 nobody will restore (the file's own, or one set by hand) is not
/// one of them: the plan gave it the file's weight.
fn kept_drained(l: &LbConfig, lb: &LoadBalancer) -> Result<LbConfig, ConfigError> {
    let mut kept = l.clone();
    for v in &mut kept.vips {
        let drained = lb.checker_drained(&v.vip).map_err(|e| ConfigError::Step {
            step: format!("reading lb {}'s drained backends of VIP {}", l.pin.display(), v.vip),
            error: Box::new(e.into()),
        })?;
        for b in &mut v.backends {
            if drained.contains(&b.addr) {
                b.weight = 0;
            }
        }
    }
    Ok(kept)
}

fn present_at(program: Program, pin: &Path) -> Result<bool, Error> {
    match program {
        Program::Filter => present(Filter::open_pinned(pin)),
        Program::Lb => present(LoadBalancer::open_pinned(pin)),
        Program::Decap => present(Decap::open_pinned(pin)),
    }
}
