//! Errors, one enum per area. Every message says what went wrong and how to
//! fix it; [`Error`] gathers them for callers that do not care which area.

use std::io;
use std::path::PathBuf;

use ipnetwork::IpNetwork;

use crate::AttachMode;

/// Any xdpguard error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading the eBPF programs or creating their maps failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Attaching to or detaching from an interface failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Pinning to, or reopening from, bpffs failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// An allowlist or blocklist edit failed.
    #[error(transparent)]
    List(#[from] ListError),
    /// A rule, a rule file or a named-set edit was refused or failed.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Drop events (`Filter::events`).
    #[error(transparent)]
    Events(#[from] crate::filter::EventError),
    /// A load-balancer operation failed.
    #[error(transparent)]
    Lb(#[from] LbError),
    /// Text did not name a value (a policy, mode, VIP, backend...).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A configuration file could not be read, checked or applied
    /// (feature `config`).
    #[cfg(feature = "config")]
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Loading programs and creating maps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The process lacks the capabilities the kernel asks for, to load,
    /// attach or reopen a program (the one error for all three).
    #[error(
        "missing privileges: this process lacks {missing}; xdpguard needs CAP_BPF and \
         CAP_NET_ADMIN to load, attach or reopen XDP programs and maps: run as root, or grant \
         them: `setcap cap_bpf,cap_net_admin,cap_perfmon+ep <binary>` (a user other than the pins' owner also \
         needs access to the pins themselves: see `PinError::AccessDenied`)"
    )]
    MissingPrivileges {
        /// The capabilities that are missing, e.g. `"CAP_BPF, CAP_NET_ADMIN"`.
        missing: String,
    },
    /// The running kernel lacks something the programs need.
    #[error("the kernel lacks {feature}: {hint}")]
    KernelFeature {
        /// What is missing.
        feature: &'static str,
        /// How to get it.
        hint: String,
    },
    /// The verifier rejected a program (a bug in xdpguard: please report it).
    #[error("the kernel rejected program {program}: {message}")]
    Rejected {
        /// The program's name.
        program: &'static str,
        /// The kernel's reason, with the end of the verifier log when there is one.
        message: String,
    },
    /// A capacity given to the builder is out of range.
    #[error("invalid capacity {value} for {what}: {hint}")]
    InvalidCapacity {
        /// Which capacity.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The accepted range.
        hint: &'static str,
    },
    /// The program given to [`Filter::set_next`](crate::Filter::set_next)
    /// is the filter's own (or its guard stage's): each packet would loop
    /// through the filter until the kernel's tail-call limit, counted and
    /// judged every time.
    #[error(
        "program {id} is this filter's own {stage}: passing packets on to it would run each one through the \
         filter again, up to the kernel's 33 tail calls, counting it each time; give the next program (e.g. a \
         load balancer's `program_fd()`), or `clear_next` to pass packets to the stack"
    )]
    NextIsSelf {
        /// The program's kernel id.
        id: u32,
        /// Which of the filter's programs: `program` or `guard stage`.
        stage: &'static str,
    },
    /// A BPF system call failed for a reason not covered above.
    #[error("{op} failed: {error}")]
    Bpf {
        /// What was being done.
        op: String,
        /// The kernel's error.
        error: io::Error,
    },
    /// The process or the system ran out of a resource while loading (file
    /// descriptors, memory, a size limit): not a bug, and nothing was
    /// loaded.
    #[error("{op} failed: out of {resource} ({error}); {fix}")]
    Resource {
        /// What was being done.
        op: String,
        /// The resource, named.
        resource: &'static str,
        /// How to get more of it.
        fix: &'static str,
        /// The kernel's error (its errno: `raw_os_error()`).
        error: io::Error,
    },
}

/// Attaching to interfaces.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// No such interface in this network namespace.
    #[error(
        "interface `{interface}` not found in this network namespace; check `ip link show` (an interface in a \
         named network namespace: give the CLIs `--netns NAME`, or enter it before attaching)"
    )]
    InterfaceNotFound {
        /// The name or index that was given.
        interface: String,
    },
    /// Detaching from an interface the program is not attached to (nor
    /// lost on: `lost_attachments`).
    #[error(
        "the program is not attached to `{interface}` (attached to: {}); nothing changed",
        if attached.is_empty() { "none" } else { attached }
    )]
    NotAttached {
        /// The name or index that was given.
        interface: String,
        /// Where it is attached, comma-separated (empty: nowhere).
        attached: String,
    },
    /// The program is attached to an interface of the same name and index
    /// in another network namespace: its pin directory records each
    /// attachment by index, mode and name, so it cannot record both.
    #[error(
        "the program pinned at {} is attached to an interface `{interface}` with index {ifindex} in another \
         network namespace, and a pin directory records an attachment by index and name only; nothing was \
         changed. Attach this namespace's `{interface}` from a pin directory of its own (`--pin DIR`)",
        pin.display()
    )]
    SameInterfaceElsewhere {
        /// The interface's name.
        interface: String,
        /// Its index (the same in both namespaces).
        ifindex: u32,
        /// The pin directory.
        pin: std::path::PathBuf,
    },
    /// The program is attached to the interface already, in another mode
    /// than the one asked for (in the same mode, or in auto mode, attaching
    /// again does nothing and succeeds).
    #[error(
        "the program is already attached to `{interface}` in {mode} mode; to run it there in {asked} mode, \
         detach it from `{interface}` and attach it again"
    )]
    AttachedInAnotherMode {
        /// The interface.
        interface: String,
        /// The mode it runs in there.
        mode: AttachMode,
        /// The mode asked for.
        asked: AttachMode,
    },
    /// Another XDP program already runs on the interface (found before
    /// attaching: nothing was attached or changed).
    #[error("{}", already_attached(interface, *program_id, program.as_deref(), owner.as_deref(), libxdp.as_deref()))]
    AlreadyAttached {
        /// The interface.
        interface: String,
        /// The id of the program already there, when the kernel says.
        program_id: Option<u32>,
        /// Its name, when the kernel says.
        program: Option<String>,
        /// When it is an xdpguard program pinned under `/sys/fs/bpf`: its
        /// pin directory (the one to detach, or to chain behind).
        owner: Option<std::path::PathBuf>,
        /// When it was loaded through libxdp (xdp-tools' `xdp-filter`,
        /// `xdp-loader`, or a libxdp dispatcher): what that means here and
        /// why the two cannot share the interface.
        libxdp: Option<String>,
    },
    /// The interface or its driver cannot run XDP in the requested mode.
    #[error("interface `{interface}` does not support {mode} XDP: {hint}")]
    ModeUnsupported {
        /// The interface.
        interface: String,
        /// The mode that was asked for.
        mode: AttachMode,
        /// What to do instead.
        hint: &'static str,
    },
    /// No interface was given to the builder.
    #[error("no interface given: call `.interface(\"eth0\")` (or `.load()` to load without attaching)")]
    NoInterface,
    /// Any other attach failure.
    #[error("attaching to `{interface}` failed: {error}")]
    Bpf {
        /// The interface.
        interface: String,
        /// The kernel's error.
        error: io::Error,
    },
}

/// Pinning in, and reopening from, bpffs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The pin directory is not on a bpffs mount.
    #[error(
        "{} is not on a bpffs mount. Under `ip netns exec`, which mounts a fresh /sys for the command, the \
         host's bpffs and its pins are hidden, not lost: run the tool outside it (the CLIs' `attach` takes \
         `--netns NAME`), and do not mount a bpffs there (it vanishes with the command, and so does what is \
         pinned in it). Otherwise mount one with `mount -t bpf bpf /sys/fs/bpf` (or wherever the pins \
         belong); a bpffs unmounted under running programs took their pins with it: each program stays \
         attached only while a process holds it, so attach them again and restore their lists and VIPs",
        path.display()
    )]
    BpffsNotMounted {
        /// The directory.
        path: PathBuf,
    },
    /// A pin this process may not open: bpffs checks a pin's owner and mode
    /// as for any file, whatever capabilities the process holds.
    #[error(
        "{} cannot be opened by this process (uid {uid}): it belongs to uid {owner} with mode {mode:04o}, and \
         bpffs checks a pin's owner and mode as for any file, whatever capabilities the process holds. Run as \
         uid {owner} (or root), or give this user the pins (`chown -R {uid} {}`, or a group and \
         `chmod -R g+rw`)",
        path.display(), dir.display()
    )]
    AccessDenied {
        /// The pin refused.
        path: PathBuf,
        /// Its pin directory.
        dir: PathBuf,
        /// This process's effective uid.
        uid: u32,
        /// The pin's owner.
        owner: u32,
        /// The pin's permission bits.
        mode: u32,
    },
    /// The directory already holds a pinned xdpguard program.
    #[error(
        "{} already holds a pinned xdpguard {kind}; reopen it (`open_pinned`) or remove it \
         first (`{cli} detach --pin {}`)",
        path.display(), path.display()
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// `"filter"`, `"load balancer"` or `"decapsulator"`.
        kind: &'static str,
        /// The command that manages it: `"xdpguard"`, `"xdpguard-lb"` or
        /// `"xdpguard-lb decap"`.
        cli: &'static str,
    },
    /// The directory holds something that is not ours.
    #[error("{} holds pins that are not an xdpguard {kind} ({found}); {hint}", path.display())]
    NotOurs {
        /// The directory.
        path: PathBuf,
        /// What was expected.
        kind: &'static str,
        /// The first unexpected entry.
        found: String,
        /// The way out: the command of the xdpguard program of another
        /// kind pinned there, else another directory.
        hint: String,
    },
    /// Nothing is pinned there.
    #[error(
        "no pinned xdpguard {kind} at {} (pinned elsewhere? `ls /sys/fs/bpf` shows the pin directories; \
         give the one meant with --pin); to make one there: `{cli} attach {args} --pin {}`",
        path.display(), path.display(), args = attach_args(cli)
    )]
    NotFound {
        /// The directory.
        path: PathBuf,
        /// What was expected.
        kind: &'static str,
        /// The command that manages one.
        cli: &'static str,
    },
    /// The directory holds what a process pinned while creating a program
    /// there before it died: not a usable program.
    #[error(
        "{} holds the leftovers of an xdpguard {kind} whose creation was interrupted (its process died before \
         it finished); create it again (`{cli} attach {args} --pin {}`, or `xdpguard apply`), which removes them first",
        path.display(), path.display(), args = attach_args(cli)
    )]
    Interrupted {
        /// The directory.
        path: PathBuf,
        /// What was being created.
        kind: &'static str,
        /// The command that creates one.
        cli: &'static str,
    },
    /// Pinned by an xdpguard with a different map layout.
    #[error(
        "{} was pinned by an incompatible xdpguard {kind} (layout {found}, this build uses {expected}); \
         if this build is the newer one, take it over with `{cli} upgrade --pin {}`, else detach it (or take \
         its configuration down) with the version that created it",
        path.display(), path.display()
    )]
    Incompatible {
        /// The directory.
        path: PathBuf,
        /// What is pinned there (`filter`, `load balancer`, `decapsulator`).
        kind: &'static str,
        /// The command that manages it.
        cli: &'static str,
        /// The layout version found.
        found: u32,
        /// The layout version of this build.
        expected: u32,
    },
    /// An upgrade found pins of a layout this build has no migration for;
    /// nothing was changed.
    #[error(
        "cannot take over the xdpguard {kind} pinned at {}: it has layout {found}, this build uses {expected} \
         and knows no migration from {found}; nothing was changed (it keeps running). Upgrade through a \
         version that knows both layouts, or detach it with the version that created it and attach anew \
         (its lists, VIPs and connections are then lost)",
        path.display()
    )]
    NoMigration {
        /// The directory.
        path: PathBuf,
        /// What is pinned there.
        kind: &'static str,
        /// The layout version found.
        found: u32,
        /// The layout version of this build.
        expected: u32,
    },
    /// An upgrade cannot reuse a pinned map as it is; nothing was changed.
    #[error(
        "cannot take over the xdpguard {kind} pinned at {}: {reason}; nothing was changed (it keeps running)",
        path.display()
    )]
    UpgradeRefused {
        /// The directory.
        path: PathBuf,
        /// What is pinned there.
        kind: &'static str,
        /// What does not fit, named.
        reason: String,
    },
    /// Pins of the directory are missing (removed by hand): the program
    /// cannot be reopened from it.
    #[error(
        "the pin directory {} is incomplete: `{missing}` is missing (removed by hand?), so the xdpguard {kind} \
         pinned there cannot be reopened. Remove the rest (`rm -r {}`, which detaches it unless a process still \
         holds it) and attach again (`{cli} attach {args} --pin {}`)",
        path.display(), path.display(), path.display(), args = attach_args(cli)
    )]
    Incomplete {
        /// The directory.
        path: PathBuf,
        /// The pin that is missing.
        missing: String,
        /// `"filter"`, `"load balancer"` or `"decapsulator"`.
        kind: &'static str,
        /// The command that manages one.
        cli: &'static str,
    },
    /// The pin directory of an open program was removed (by hand, or its
    /// bpffs was unmounted): other processes can no longer reach the
    /// program, and edits through this handle are refused.
    #[error(
        "the pin directory {} of this xdpguard {kind} was removed (by `{cli} detach`, by hand, or its bpffs \
         was unmounted): no other process can reach it, and what it still runs stops when this process lets go \
         of it. To go on, attach a new one (`{cli} attach {args} --pin {}`) and restore its configuration",
        path.display(), path.display(), args = attach_args(cli)
    )]
    Removed {
        /// The directory.
        path: PathBuf,
        /// `"filter"`, `"load balancer"` or `"decapsulator"`.
        kind: &'static str,
        /// The command that manages one.
        cli: &'static str,
    },
    /// A file-system or BPF operation on the pin directory failed.
    #[error("{op} {} failed: {error}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
}

/// Allowlist and blocklist edits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// Not an IPv4/IPv6 address or CIDR prefix.
    #[error("invalid prefix `{input}`: {reason} (expected e.g. 192.0.2.0/24, 2001:db8::/32 or 198.51.100.7)")]
    InvalidPrefix {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A list file has bad lines; nothing from it was applied.
    #[error("{} bad line(s) in {source_name}, nothing applied:\n{}", errors.len(),
            errors.iter().map(|e| format!("  line {}: {}", e.line, e.message)).collect::<Vec<_>>().join("\n"))]
    BadLines {
        /// The file (or "input").
        source_name: String,
        /// Every bad line.
        errors: Vec<LineError>,
    },
    /// A blocklist entry that covers a whole address family (`0.0.0.0/0`,
    /// `::/0`, or `::ffff:0:0/96`, which is `0.0.0.0/0`), refused unless
    /// asked for with [`PrefixList::permit_whole_family`](crate::PrefixList::permit_whole_family).
    /// Nothing of the edit was applied.
    #[error(
        "blocklisting {entry} would drop every IPv{} packet from any source that is not allowlisted, \
         including the session this host is managed over (SSH, say) and the replies to connections it \
         opens; nothing was applied. Allowlist what must stay reachable first; then, if a default-deny \
         filter is what you want, blocklist it through `PrefixList::permit_whole_family()` (CLI: `--force`)",
        if .entry.is_ipv4() { 4 } else { 6 }
    )]
    WholeFamily {
        /// The entry, as it would be stored.
        entry: IpNetwork,
    },
    /// A map is full; nothing of the failed edit was applied.
    #[error("{}", list_full_text(what, *capacity, setter))]
    Full {
        /// Which table ([`V4_HOST_TABLE`] for the IPv4 host slots).
        what: &'static str,
        /// Its capacity (entries; for [`V4_HOST_TABLE`], host slots).
        capacity: usize,
        /// The builder method that raises it.
        setter: &'static str,
    },
    /// A map operation failed.
    #[error("{op} failed: {error}")]
    Bpf {
        /// What was being done.
        op: String,
        /// The kernel's error.
        error: io::Error,
    },
    /// The pin directory could not be locked for the edit (or read).
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// Rules and named sets: bad rule text, edits refused, full tables. A
/// refused or failed edit leaves the rules and sets as they were.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// Not a valid rule.
    #[error("invalid rule `{rule}`: {reason}")]
    Invalid {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `fragment` rule that names ports, TCP flags or ICMP types: a later
    /// fragment has no transport header, so such a rule could only ever
    /// match first fragments, and a flood's later fragments would pass it.
    #[error("invalid rule `{rule}`: {}", fragment_with_transport(what, word))]
    FragmentWithTransport {
        /// The rule as given.
        rule: String,
        /// What it names that later fragments do not carry: ports, TCP
        /// flags or ICMP types.
        what: &'static str,
        /// The rule word that names it (`sport`, `dport`, `flags`, `type`).
        word: &'static str,
    },
    /// A rule file has bad lines; nothing from it was applied.
    #[error("{} bad line(s) in {source_name}, nothing applied:\n{}", errors.len(),
            errors.iter().map(|e| format!("  line {}: {}", e.line, e.message)).collect::<Vec<_>>().join("\n"))]
    BadLines {
        /// The file (or "input").
        source_name: String,
        /// Every bad line.
        errors: Vec<LineError>,
    },
    /// Something the rule syntax reserves that this release does not do.
    #[error("{what} is not supported yet: {hint}")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A SYN guard policy that cannot be applied.
    #[error("SYN guard, port {port}: {reason}")]
    InvalidSynPolicy {
        /// The port (0: not about one port).
        port: u16,
        /// What is wrong and what to give instead.
        reason: String,
    },
    /// Not a valid set name.
    #[error(
        "invalid set name `{name}`: use 1 to 31 letters, digits, `-`, `_` or `.`, starting with a letter \
         (e.g. resolvers)"
    )]
    InvalidSetName {
        /// The name given.
        name: String,
    },
    /// A rule or an edit names a set that does not exist.
    #[error("no set named `{name}`: create it first (`Filter::sets().create`, CLI: `xdpguard set create {name}`)")]
    UnknownSet {
        /// The name.
        name: String,
    },
    /// A set of this name exists already.
    #[error("a set named `{name}` exists already; edit it, or delete it first")]
    SetExists {
        /// The name.
        name: String,
    },
    /// A set that rules name cannot be deleted.
    #[error("set `{name}` is named by {} rule(s) ({}); remove or change them first", rules.len(), rules.join("; "))]
    SetInUse {
        /// The set.
        name: String,
        /// The rules naming it.
        rules: Vec<String>,
    },
    /// No rule with this id.
    #[error("no rule with id {id}; list them with `Rules::list` (CLI: `xdpguard rule list`)")]
    NotFound {
        /// The id asked for.
        id: u32,
    },
    /// A position past the end of the rule set.
    #[error("position {position} is past the end of the rule set ({len} rules): use 0 to {len}")]
    InvalidPosition {
        /// The position given (0-based).
        position: usize,
        /// Rules in the set.
        len: usize,
    },
    /// A table is full; nothing of the failed edit was applied.
    #[error("{what} is full ({capacity}); nothing of this edit was applied: {}", rule_full_fix(setter))]
    Full {
        /// Which table.
        what: &'static str,
        /// Its capacity.
        capacity: usize,
        /// The builder method that raises it, or `"(fixed)"` for a limit
        /// no option changes.
        setter: &'static str,
    },
    /// A timed block of a whole address family, not permitted
    /// ([`TimedBlocks::permit_whole_family`](crate::TimedBlocks::permit_whole_family)).
    /// Nothing of the edit was applied.
    #[error(
        "a timed block of {entry} would drop every IPv{} packet from any source that is not allowlisted, \
         including the session this host is managed over (SSH, say) and the replies to connections it \
         opens; nothing was applied. Allowlist what must stay reachable first; then, if that is what you \
         want, block it through `TimedBlocks::permit_whole_family()` (CLI: `--force`)",
        if .entry.is_ipv4() { 4 } else { 6 }
    )]
    WholeFamily {
        /// The entry, as it would be stored.
        entry: IpNetwork,
    },
    /// A timed block's time to live is out of range.
    #[error("a timed block of {ttl:?}: {reason}")]
    BadTtl {
        /// The TTL given.
        ttl: std::time::Duration,
        /// The range.
        reason: &'static str,
    },
    /// The filter has no guard stage, so it cannot hold rules.
    #[error("this filter has no guard stage, so it holds no rules or sets: {reason}")]
    NoGuard {
        /// Why, and what to do.
        reason: &'static str,
    },
    /// What the maps hold cannot be read back (written by another build?).
    #[error("the pinned rules cannot be read back: {what}; detach the filter and attach it again")]
    Corrupt {
        /// What could not be read.
        what: String,
    },
    /// A map operation failed.
    #[error("{op} failed: {error}")]
    Bpf {
        /// What was being done.
        op: String,
        /// The kernel's error.
        error: io::Error,
    },
    /// The pin directory could not be locked for the edit (or read).
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A named-set entry that covers a whole address family (`0.0.0.0/0`,
    /// `::/0`, or `::ffff:0:0/96`, which is `0.0.0.0/0`), refused unless
    /// asked for with [`NamedSet::permit_whole_family`](crate::NamedSet::permit_whole_family):
    /// a drop rule naming the set would cut the host off as blocklisting
    /// it would. Nothing of the edit was applied.
    #[error(
        "adding {given}{} to set {set}: a drop rule naming the set would drop every IPv{} packet from any \
         source that is not allowlisted, including the session this host is managed over (SSH, say) and the \
         replies to connections it opens; nothing was applied. Allowlist what must stay reachable first; then, \
         if that is what you want, add it through `NamedSet::permit_whole_family()` (CLI: `--force`)",
        if .given == .entry { String::new() } else { format!(" (which is {})", .entry) },
        if .entry.is_ipv4() { 4 } else { 6 }
    )]
    SetWholeFamily {
        /// The set.
        set: String,
        /// The entry as given.
        given: IpNetwork,
        /// The entry, as it would be stored.
        entry: IpNetwork,
    },
}

/// How to get past a full rule-stage table: the option that raises its
/// capacity, or, for a fixed limit, making room.
/// [`ListError::Full`]'s `what` for the IPv4 host table: the host slots
/// of /24s that hold more than one verdict (see
/// [`FilterBuilder::v4_capacity`](crate::FilterBuilder::v4_capacity)).
pub const V4_HOST_TABLE: &str = "the IPv4 host table";

fn list_full_text(what: &str, capacity: usize, setter: &str) -> String {
    let fix = format!(
        "load the filter with a larger capacity (FilterBuilder::{setter}; CLI: `xdpguard attach --{}`)",
        setter.replace('_', "-")
    );
    if what == V4_HOST_TABLE {
        // The entries the user added are few here: what fills the table is
        // the addresses /25-/31 prefixes cover (src/filter/v4.rs, cells).
        format!(
            "{what} is full ({capacity} host slots); nothing of this edit was applied. A /24 holding more than \
             one verdict takes one host slot per address that differs from its most common one: a /32 takes \
             one, a /25-/31 prefix one per address it covers (a /25 alone in its /24: 128, a /31: 2), so a \
             few thousand /25s fill a table sized for a million entries. Remove entries, merge /25-/31s into \
             whole /24s, or {fix}: the table holds about 1.25 slots per unit of capacity, so give at least \
             0.8 x the host slots needed (about 103 per /25 alone in its /24)"
        )
    } else {
        format!("{what} is full ({capacity} entries); nothing of this edit was applied: remove entries, or {fix}")
    }
}

/// Why a `fragment` rule cannot name `word` and what to write instead
/// ([`RuleError::FragmentWithTransport`]; a rule file's line report says
/// it without the rule).
pub(crate) fn fragment_with_transport(what: &str, word: &str) -> String {
    format!(
        "a `fragment` rule cannot name {what} (`{word}`): later fragments carry none (no transport header), so they \
         would all pass it. Leave out `{word}` to match every fragment, or write two rules: one with `fragment` and \
         no `{word}`, one with `{word}` and no `fragment` (it matches whole packets and first fragments)"
    )
}

fn rule_full_fix(setter: &str) -> String {
    if setter == "(fixed)" {
        "the limit is fixed: remove one first".to_owned()
    } else {
        format!(
            "remove entries, or load the filter with a larger capacity (FilterBuilder::{setter}; CLI: `xdpguard \
             attach --{}`)",
            setter.replace('_', "-")
        )
    }
}

/// One bad line of a list or rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Text that does not name a value of one of the crate's types: what their
/// [`FromStr`](std::str::FromStr) implementations return. The message names
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not one of the names of a policy, mode or other named value.
    #[error("unknown {what} `{input}` (expected {})", one_of(expected))]
    Unknown {
        /// What was being parsed, e.g. `"echo policy"`.
        what: &'static str,
        /// The text given.
        input: String,
        /// The names accepted (each value's main name; some values have
        /// aliases too).
        expected: &'static [&'static str],
    },
    /// Not in the form of a VIP, an address or a backend.
    #[error("invalid {what} `{input}`: expected e.g. {example}")]
    Invalid {
        /// What was being parsed, e.g. `"VIP"`.
        what: &'static str,
        /// The text given.
        input: String,
        /// Examples of the accepted forms.
        example: &'static str,
    },
    /// A VIP given as a bare address: it would take every port of the
    /// address (SSH's too), so every port must be asked for (`ADDR:*`).
    /// An IPv6 address with a port but no brackets (`2001:db8::2:80`) is
    /// read as another address, so it lands here too.
    #[error(
        "VIP `{input}` has no port: give ADDR:PORT or [V6-ADDR]:PORT (an IPv6 address with a port goes in \
         brackets), or ADDR:* / [V6-ADDR]:* for every port of the address"
    )]
    VipWithoutPort {
        /// The text given.
        input: String,
    },
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Names missing capabilities, or `None` when the process has them all.
pub(crate) fn missing_privileges() -> Option<String> {
    let missing = crate::core::sys::missing_capabilities();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// One problem of a configuration file, and where it is (feature `config`).
#[cfg(feature = "config")]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The file: the configuration file, or a list file it names.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters), when it points into the line.
    pub column: Option<usize>,
    /// What is wrong, and how to fix it.
    pub message: String,
}

#[cfg(feature = "config")]
impl std::fmt::Display for Problem {
    /// `FILE:LINE:COLUMN: MESSAGE` (or `FILE:LINE: MESSAGE`), as compilers
    /// write them, so editors jump to it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:", self.file.display(), self.line)?;
        if let Some(c) = self.column {
            write!(f, "{c}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// Reading, planning and applying configuration files (feature `config`).
#[cfg(feature = "config")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The file is rejected as a whole: every problem found, with where it
    /// is. Nothing was applied.
    #[error(
        "{} rejected, nothing applied ({} problem{}):\n{}",
        file.display(), problems.len(), if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    )]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// Every problem, in file order.
        problems: Vec<Problem>,
    },
    /// The running host does not have what the file needs (interfaces,
    /// network namespaces, pin directories another program holds). Found
    /// while planning: nothing was applied.
    #[error(
        "this host cannot run the configuration as it is, nothing applied:\n{}",
        problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    )]
    Host {
        /// Every problem found, each naming its section.
        problems: Vec<String>,
    },
    /// Settings a program was loaded with differ from the file's, and the
    /// program can only get them by being created again (its connections
    /// and counters lost). Nothing was applied.
    #[error(
        "{section}: loaded with other fixed settings ({}), which cannot change while it runs: \
         re-create it (`xdpguard apply --recreate`, which drops its connection table and counters), or \
         keep the running values in the file. Nothing was applied",
        changes.join(", ")
    )]
    Fixed {
        /// The section, e.g. `lb /sys/fs/bpf/xdpguard-lb`; several joined
        /// by "and" (each change then starts with its section).
        section: String,
        /// Each difference: `connections 131072 -> 262144`.
        changes: Vec<String>,
    },
    /// A step failed. The steps before it stay applied; applying again
    /// goes on from there.
    #[error("{step}: {error}")]
    Step {
        /// The step, described.
        step: String,
        /// The library's error.
        error: Box<Error>,
    },
    /// A step found a table of its program full: the file needs more room
    /// than the program was loaded with (a capacity the file check cannot
    /// count, or a program loaded before the file's capacity was raised).
    /// Nothing of the step was applied; the steps before it stay applied.
    #[error(
        "{step}: {what} is full ({capacity}); nothing of this step was applied: raise `{key}` in the file and \
         re-create the program with `xdpguard apply --recreate` (its tables and counters are lost), or make \
         the file need less"
    )]
    Full {
        /// The step, described.
        step: String,
        /// Which table.
        what: String,
        /// Its capacity.
        capacity: usize,
        /// The file's key that raises it.
        key: &'static str,
        /// The library's error.
        #[source]
        error: Box<Error>,
    },
    /// After applying, the running state read back differs from the file:
    /// another process changed it meanwhile.
    #[error(
        "after applying, {section} differs from the file: {what}; another process may have changed it \
         meanwhile: apply again"
    )]
    Mismatch {
        /// The section.
        section: String,
        /// What differs.
        what: String,
    },
}

/// What `attach` needs besides `--pin` for the program `cli` manages (a
/// decapsulator needs its endpoints).
fn attach_args(cli: &str) -> &'static str {
    if cli.ends_with("decap") {
        "--iface IF --local ADDR"
    } else {
        "--iface IF"
    }
}

/// [`AttachError::AlreadyAttached`]'s message: what holds the interface
/// and the way out that fits it.
fn already_attached(
    interface: &str,
    program_id: Option<u32>,
    program: Option<&str>,
    owner: Option<&std::path::Path>,
    libxdp: Option<&str>,
) -> String {
    let which = match (program, program_id) {
        (Some(name), Some(id)) => format!(" ({name}, program id {id})"),
        (None, Some(id)) => format!(" (program id {id})"),
        _ => String::new(),
    };
    let head = format!("interface `{interface}` already has an XDP program attached{which}");
    if let Some(note) = libxdp {
        return format!("{head}: {note}");
    }
    match (program.and_then(crate::core::pin::program_named), owner) {
        (Some((kind, cli)), Some(dir)) => {
            let dir = dir.display();
            let chain = if kind == "filter" {
                format!(", or run a load balancer behind it there (`xdpguard next LB_PIN --pin {dir}`)")
            } else {
                String::new()
            };
            format!("{head}: the xdpguard {kind} pinned at {dir}; detach it first (`{cli} detach --pin {dir}`){chain}")
        }
        (Some((kind, cli)), None) => format!(
            "{head}: an xdpguard {kind} whose pins were not found (searched /sys/fs/bpf, four levels deep: a process \
             may hold it unpinned); detach it with `{cli} detach --pin DIR` where it is pinned, or stop the process \
             holding it"
        ),
        (None, _) => format!(
            "{head}; detach it first: `ip link set dev {interface} xdp off` removes one attached without a BPF \
             link (one attached by a link stays while its owner holds it: `bpftool link` names that), or run it \
             behind the filter (`Filter::set_next`)"
        ),
    }
}

/// Load-balancer configuration and operation. Every message names the
/// cause and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LbError {
    /// No such VIP.
    #[error("no VIP {vip}; add it first (`add_vip`; CLI: `xdpguard-lb vip add`), or list them (`vips()`; CLI: `xdpguard-lb vip list`)")]
    VipNotFound {
        /// The VIP asked for.
        vip: crate::Vip,
    },
    /// The VIP exists with another configuration.
    #[error(
        "VIP {vip} already exists with a different configuration ({existing}); change its table size, \
         hashing or tracking in place (`reconfigure_vip`: its connections stay on their backends), or \
         remove it first (`remove_vip`; CLI: `xdpguard-lb vip del`) to change its mode"
    )]
    ConflictingVip {
        /// The VIP.
        vip: crate::Vip,
        /// Its configuration now, described.
        existing: String,
    },
    /// A VIP reconfigured in place with another forwarding mode: its
    /// backends' slots and tracked connections belong to the mode they
    /// were made in.
    #[error(
        "VIP {vip} forwards by {from}, not {to}: a mode changes only by removing the VIP and adding it again \
         (`remove_vip`, `add_vip`; CLI: `xdpguard-lb vip del`, `vip add`), and its tracked connections then \
         choose their backends afresh"
    )]
    VipModeChange {
        /// The VIP.
        vip: crate::Vip,
        /// Its mode now.
        from: crate::ForwardingMode,
        /// The mode asked for.
        to: crate::ForwardingMode,
    },
    /// No such backend on this VIP.
    #[error(
        "VIP {vip} has no backend {backend}{}; list them (`backends(vip)`; CLI: `xdpguard-lb backend list`)",
        near.map(|n| format!(" (it has {n}: name a backend with its port, as it was added)")).unwrap_or_default()
    )]
    BackendNotFound {
        /// The VIP.
        vip: crate::Vip,
        /// The backend asked for.
        backend: crate::BackendAddr,
        /// A backend of the VIP at the same address with another port
        /// (or none), the one probably meant.
        near: Option<crate::BackendAddr>,
    },
    /// The backend is already on this VIP.
    #[error(
        "VIP {vip} already has backend {backend} (weight {weight}); change its weight instead (`set_weight`; CLI: \
         `xdpguard-lb backend weight`)"
    )]
    BackendExists {
        /// The VIP.
        vip: crate::Vip,
        /// The backend.
        backend: crate::BackendAddr,
        /// Its current weight.
        weight: u32,
    },
    /// A Maglev table size that is not a prime.
    #[error(
        "Maglev table size {size} is not a prime; use a prime such as {suggestion} (the \
         default is 65537)"
    )]
    TableSizeNotPrime {
        /// The size given.
        size: u32,
        /// The next prime above it.
        suggestion: u32,
    },
    /// A Maglev table size outside the accepted range.
    #[error("Maglev table size {size} is out of range: use a prime between {min} and {max}")]
    TableSizeOutOfRange {
        /// The size given.
        size: u32,
        /// The smallest accepted size.
        min: u32,
        /// The largest accepted size.
        max: u32,
    },
    /// A VIP's table is too small for its backends: fewer than 10 slots
    /// per backend (see [`VipConfig::table_size`](crate::VipConfig::table_size)).
    #[error(
        "VIP {vip} would have {backends} backends but its Maglev table has only {size} slots; \
         use a table size of at least 10 times the number of backends (100 times keeps every \
         backend's share within about 1% of its weight)"
    )]
    TableTooSmall {
        /// The VIP.
        vip: crate::Vip,
        /// Backends it would have.
        backends: usize,
        /// Its table size.
        size: u32,
    },
    /// No free VIP slot.
    #[error(
        "the VIP table is full ({capacity} VIPs); remove a VIP first, or load the LB with more room \
         (LoadBalancerBuilder::max_vips; CLI: `xdpguard-lb attach --max-vips`)"
    )]
    VipTableFull {
        /// The capacity.
        capacity: usize,
    },
    /// No free backend slot.
    #[error(
        "the backend table is full ({capacity} backends over all VIPs); remove a backend first, or load \
         the LB with more room (LoadBalancerBuilder::max_backends; CLI: `xdpguard-lb attach --max-backends`)"
    )]
    BackendTableFull {
        /// The capacity.
        capacity: usize,
    },
    /// A weight out of range.
    #[error("invalid weight {weight}: use 0 (drain) to {max}")]
    InvalidWeight {
        /// The weight given.
        weight: u32,
        /// The largest accepted weight.
        max: u32,
    },
    /// A backend at the broadcast address of a subnet of an interface in
    /// the LB's network namespace: the kernel forwards nothing to it as to
    /// a host, so its share of new flows would go to the stack
    /// (`passed_no_route`). Nothing was changed.
    #[error(
        "backend {backend} of VIP {vip} is the broadcast address of {interface}'s subnet {subnet}, which no packet \
         is forwarded to; give the backend host's own address"
    )]
    BackendAtBroadcast {
        /// The VIP.
        vip: crate::Vip,
        /// The backend.
        backend: crate::BackendAddr,
        /// The interface (its address label: the name).
        interface: String,
        /// The subnet.
        subnet: ipnetwork::Ipv4Network,
    },
    /// A VIP at an address of the LB host itself (configured on an
    /// interface of the LB's network namespace): its packets would no
    /// longer reach the host's own services there (an SSH session to that
    /// address among them). Nothing was changed.
    #[error(
        "VIP {vip} is at an address of the load balancer host itself (on {interface}): its packets would go to \
         backends (and be dropped until it has one) instead of the host's own services there, an SSH session to that \
         address among them; give the service an address of its own, or, to take that address's traffic over on \
         purpose, add it with --force (`LoadBalancer::add_vip_permit_local`)"
    )]
    VipAtLocalAddress {
        /// The VIP.
        vip: crate::Vip,
        /// The interface holding the address (its name, or address label).
        interface: String,
    },
    /// A backend at an address of the LB host itself: the LB forwards
    /// nothing to its own host (the FIB's route to it is a local one), so
    /// its share of new flows would go to the stack. Nothing was changed.
    #[error(
        "backend {backend} of VIP {vip} is an address of the load balancer host itself (on {interface}), which the \
         LB does not forward to; give the backend host's own address"
    )]
    BackendAtLocalAddress {
        /// The VIP.
        vip: crate::Vip,
        /// The backend.
        backend: crate::BackendAddr,
        /// The interface holding the address (its name, or address label).
        interface: String,
    },
    /// A VIP or backend at an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`):
    /// its packets are IPv4 packets, handled as the IPv4 address's.
    #[error("{what} is at an IPv4-mapped IPv6 address, whose packets are IPv4 packets: give it as IPv4 ({as_ipv4})")]
    Ipv4Mapped {
        /// The VIP or backend, as given.
        what: String,
        /// The same, as IPv4: what to give instead.
        as_ipv4: String,
    },
    /// The mode cannot forward this way.
    #[error("{what} is not supported: {fix}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// What to do instead.
        fix: &'static str,
    },
    /// A backend port on an all-ports NAT VIP: every port of the VIP would
    /// reach that one backend port.
    #[error(
        "backend {backend} of all-ports NAT VIP {vip} has a port, so every port of the VIP would reach that one \
         backend port: two connections from one client address and port to two ports of the VIP would be one \
         connection to the backend, and share one reply translation; give the backend without a port (each packet \
         keeps its destination port), or use a single-port VIP for each port"
    )]
    NatPortOnAllPortsVip {
        /// The all-ports NAT VIP.
        vip: crate::Vip,
        /// The backend given.
        backend: crate::BackendAddr,
    },
    /// A NAT backend address and port that another NAT VIP (another VIP
    /// address or port, same protocol) already reaches.
    #[error(
        "NAT backend {backend} of VIP {vip} would take connections on {at}, as backend {other_backend} of NAT VIP \
         {other} does: a client using one address and port for both VIPs would be one connection to the backend, \
         and the replies of one of them would leave from the other VIP; give one of the two another backend port \
         (a NAT backend may have its own) or address, or serve both through one VIP"
    )]
    NatBackendConflict {
        /// The VIP the backend was being added to.
        vip: crate::Vip,
        /// The backend given.
        backend: crate::BackendAddr,
        /// The NAT VIP that already reaches the same backend address and port.
        other: crate::Vip,
        /// Its backend.
        other_backend: crate::BackendAddr,
        /// The backend address and port(s) both reach, described.
        at: String,
    },
    /// IPIP needs an outer source prefix of the backend's family.
    #[error(
        "IPIP to IPv{family} backends needs an outer source prefix, e.g. a /24 (IPv4) or /64 (IPv6) the \
         backends route back to the LB: set one with `xdpguard-lb set --ipip-source PREFIX`, in a \
         configuration's [[lb]] with `ipip_sources = [\"PREFIX\"]`, or in the API with \
         `LoadBalancer::set_ipip_source` (or LoadBalancerBuilder::ipip_source)"
    )]
    IpipSourceUnset {
        /// 4 or 6.
        family: u8,
    },
    /// A flow that does not belong to the VIP it was asked about.
    #[error("flow {flow} does not belong to VIP {vip}: {reason}")]
    FlowMismatch {
        /// The flow, described.
        flow: String,
        /// The VIP.
        vip: crate::Vip,
        /// Why.
        reason: &'static str,
    },
    /// A flow to an all-ports VIP asked about without its destination port.
    #[error(
        "flow {flow} to all-ports VIP {vip} has destination port 0: the kernel hashes the port each \
         packet carries, so give the port the client connects to (ask about fragments, which are \
         hashed without ports, with `Flow::fragment()`)"
    )]
    DestinationPortRequired {
        /// The flow, described.
        flow: String,
        /// The all-ports VIP.
        vip: crate::Vip,
    },
    /// Too many redirect interfaces.
    #[error("the devmap is full ({capacity} interfaces); raise it with LoadBalancerBuilder::max_interfaces")]
    DevmapFull {
        /// The capacity.
        capacity: usize,
    },
    /// A decapsulator holds as many local addresses as it can; nothing was
    /// added.
    #[error(
        "the decapsulator's address table is full ({capacity} addresses, fixed); remove one first \
         (`Decap::remove_local`; CLI: `xdpguard-lb decap local --del ADDR`), or run a second decapsulator \
         for the others on another interface"
    )]
    DecapFull {
        /// The capacity.
        capacity: usize,
    },
    /// The decapsulator does not decapsulate for this address (a typo, or
    /// removed already); nothing was changed.
    #[error(
        "the decapsulator has no local endpoint {addr} (it has {}); nothing was changed: give one of those \
         (`Decap::locals`; CLI: `xdpguard-lb decap stats` lists them)",
        crate::error::list_or_none(locals)
    )]
    DecapLocalNotFound {
        /// The address asked for.
        addr: std::net::IpAddr,
        /// Its local endpoints.
        locals: Vec<std::net::IpAddr>,
    },
    /// The load balancer's network namespace cannot be reached from this
    /// thread, so its backends' next hops cannot be managed or read.
    #[error(
        "the load balancer was loaded in another network namespace (nsfs inode {ino}), which is neither this \
         thread's nor one named under /run/netns; run this inside that namespace (e.g. `nsenter --net=PATH`, \
         which keeps /sys/fs/bpf visible) to change its backends"
    )]
    ForeignNamespace {
        /// The namespace's inode (as `ls -iL /proc/PID/ns/net` shows it).
        ino: u64,
    },
    /// A netlink request about backends' next hops (routes, neighbour
    /// entries) failed. Backend changes made before it stay applied.
    #[error("{op} failed: {error}; {hint}")]
    Neighbour {
        /// What was being done.
        op: String,
        /// The kernel's error.
        error: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// No rtnetlink socket could be opened in the load balancer's network
    /// namespace, where its backends' next hops are managed and read: the
    /// host's limits, not a request the kernel refused
    /// ([`LbError::Neighbour`]). Backend changes and VIP removals check
    /// this before any change: nothing of theirs was applied.
    #[error(
        "cannot open an rtnetlink socket in the load balancer's network namespace (nsfs inode {ino}), where its \
         backends' next hops are managed: {error}; {}",
        netlink_socket_hint(error)
    )]
    NetlinkSocket {
        /// The namespace's inode (as `ls -iL /proc/PID/ns/net` shows it).
        ino: u64,
        /// The OS error of `socket(AF_NETLINK)`, `bind` or `connect`
        /// (EMFILE: out of file descriptors). In the message, so not also
        /// its `source()` (see `causes_are_shown_once_in_a_chain`).
        error: io::Error,
    },
    /// A BPF map operation failed.
    #[error("{op} failed: {error}; {hint}")]
    Map {
        /// What was being done.
        op: String,
        /// The kernel's error.
        error: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The pin directory could not be locked for the change (or read).
    #[error(transparent)]
    Pin(#[from] PinError),
    /// This process may not enter the load balancer's network namespace
    /// (`setns` needs CAP_SYS_ADMIN), where its backends' next hops are
    /// managed and read. Nothing was changed.
    #[error(
        "this process cannot enter the load balancer's network namespace (nsfs inode {ino}): {error}; entering \
         another network namespace needs CAP_SYS_ADMIN, besides CAP_BPF and CAP_NET_ADMIN: run as root, grant it \
         (`setcap cap_bpf,cap_net_admin,cap_sys_admin,cap_perfmon+ep <binary>`), or run inside that namespace \
         (`nsenter --net=/run/netns/NAME`, which keeps /sys/fs/bpf visible). Nothing was changed"
    )]
    NamespaceNotEntered {
        /// The namespace's inode (as `ls -iL /proc/PID/ns/net` shows it).
        ino: u64,
        /// The kernel's error (EPERM without CAP_SYS_ADMIN).
        error: io::Error,
    },
    /// The LB host's own addresses could not be read, so a VIP could not
    /// be checked against them (see [`LbError::VipAtLocalAddress`]).
    /// Nothing was changed.
    #[error(
        "cannot check that VIP {vip} is not an address of the load balancer host itself (a VIP there takes the \
         host's own services at that address, an SSH session to it among them, off the host): the addresses of \
         the LB's network namespace cannot be read: {reason}. Nothing was changed. Add the VIP where that \
         namespace can be entered (inside it, or with CAP_SYS_ADMIN), or, if the address is known not to be the \
         host's, add it with --force (`LoadBalancer::add_vip_permit_local`)"
    )]
    LocalAddressesUnknown {
        /// The VIP.
        vip: crate::Vip,
        /// Why they could not be read.
        reason: Box<LbError>,
    },
}

/// `a, b, c`, or `none`.
fn list_or_none<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// What to do about an rtnetlink socket that could not be opened
/// ([`LbError::NetlinkSocket`]), by its OS error.
fn netlink_socket_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(nix::libc::EMFILE) => {
            "this process is out of file descriptors: raise its limit (`ulimit -n`; systemd: `LimitNOFILE=`) or \
             close some, and try again"
        }
        Some(nix::libc::ENFILE) => {
            "the system is out of file descriptors (`fs.file-max`): close some or raise the limit, and try again"
        }
        Some(nix::libc::ENOBUFS | nix::libc::ENOMEM) => "the kernel is short of memory for sockets: try again later",
        Some(nix::libc::EPERM | nix::libc::EACCES) => {
            "this process may not open netlink sockets (a seccomp filter or LSM policy, e.g. systemd's \
             `RestrictAddressFamilies=` without AF_NETLINK): allow AF_NETLINK, and give it CAP_NET_ADMIN for the \
             requests that follow"
        }
        _ => {
            "check this process's file-descriptor limit (`ulimit -n`) and that it may open AF_NETLINK sockets \
             (CAP_NET_ADMIN for the requests that follow)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hints name the command of the program they are about.
    #[test]
    fn pin_hints_name_the_right_cli() {
        let kinds = [("filter", "xdpguard"), ("load balancer", "xdpguard-lb"), ("decapsulator", "xdpguard-lb decap")];
        for (kind, cli) in kinds {
            let path = PathBuf::from("/sys/fs/bpf/x");
            let in_use = PinError::InUse { path: path.clone(), kind, cli }.to_string();
            assert!(in_use.contains(&format!("`{cli} detach --pin /sys/fs/bpf/x`")), "{in_use}");
            let not_found = PinError::NotFound { path, kind, cli }.to_string();
            let args = if kind == "decapsulator" { "--iface IF --local ADDR" } else { "--iface IF" };
            assert!(not_found.contains(&format!("`{cli} attach {args} --pin /sys/fs/bpf/x`")), "{not_found}");
        }
    }

    /// A name that is not accepted gets the accepted ones listed.
    #[test]
    fn parse_errors_list_what_is_accepted() {
        let e =
            ParseError::Unknown { what: "echo policy", input: "reply".into(), expected: &["answer", "pass", "drop"] };
        assert_eq!(e.to_string(), "unknown echo policy `reply` (expected answer, pass or drop)");
        let e = ParseError::Unknown { what: "protocol", input: "sctp".into(), expected: &["tcp", "udp"] };
        assert_eq!(e.to_string(), "unknown protocol `sctp` (expected tcp or udp)");
        assert_eq!(one_of(&["auto"]), "auto");
    }

    /// The Maglev size check and its message agree: 10 slots a backend.
    #[test]
    fn table_too_small_says_what_is_checked() {
        let vip = crate::Vip::tcp("203.0.113.10:80".parse().unwrap());
        let text = LbError::TableTooSmall { vip, backends: 2, size: 7 }.to_string();
        assert!(text.contains("at least 10 times the number of backends"), "{text}");
    }

    /// An rtnetlink socket that cannot be opened is told apart from a
    /// request refused, keeps its OS error, and says what to do about it.
    #[test]
    fn a_netlink_socket_not_opened_names_the_os_error_and_the_fix() {
        let text = |errno| LbError::NetlinkSocket { ino: 4026531840, error: io::Error::from_raw_os_error(errno) };
        let e = text(nix::libc::EMFILE);
        let LbError::NetlinkSocket { error, .. } = &e else { unreachable!() };
        assert_eq!(error.raw_os_error(), Some(nix::libc::EMFILE), "the OS error is kept");
        let t = e.to_string();
        for w in ["rtnetlink socket", "nsfs inode 4026531840", "(os error 24)", "ulimit -n", "LimitNOFILE="] {
            assert!(t.contains(w), "{w}: {t}");
        }
        let t = text(nix::libc::EPERM).to_string();
        for w in ["(os error 1)", "AF_NETLINK", "RestrictAddressFamilies=", "CAP_NET_ADMIN"] {
            assert!(t.contains(w), "{w}: {t}");
        }
        assert!(text(nix::libc::ENFILE).to_string().contains("fs.file-max"));
        assert!(text(nix::libc::EINVAL).to_string().contains("ulimit -n"));
    }

    /// An error-chain printer (anyhow's `{:#}`, say) shows every cause
    /// once: an error that puts a cause in its message does not return it
    /// as its `source()` too.
    #[test]
    fn causes_are_shown_once_in_a_chain() {
        let io = || io::Error::from_raw_os_error(22);
        let chain = |e: &dyn std::error::Error| {
            let mut text = e.to_string();
            let mut at = e.source();
            while let Some(s) = at {
                text += &format!(": {s}");
                at = s.source();
            }
            text
        };
        let errors: Vec<Error> = vec![
            LoadError::Bpf { op: "installing the next program".into(), error: io() }.into(),
            AttachError::Bpf { interface: "eth0".into(), error: io() }.into(),
            PinError::Io { op: "reading", path: "/sys/fs/bpf/x".into(), error: io() }.into(),
            ListError::Bpf { op: "inserting".into(), error: io() }.into(),
            RuleError::Bpf { op: "zeroing".into(), error: io() }.into(),
            LbError::Map { op: "writing".into(), error: io(), hint: "check the pins" }.into(),
            LbError::NetlinkSocket { ino: 4026531840, error: io() }.into(),
        ];
        for e in &errors {
            let text = chain(e);
            assert_eq!(text.matches("Invalid argument").count(), 1, "{text}");
        }
    }
}
