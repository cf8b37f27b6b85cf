//! Backend health checks (feature `health`): a [`HealthChecker`] probes
//! every backend of a [`LoadBalancer`](crate::LoadBalancer) with a TCP
//! connect or an HTTP GET, drains the ones that fail `fall` checks in a
//! row (weight 0: no new flows, and their tracked flows move to other
//! backends, unlike an operator's graceful drain) and restores the
//! ones that pass `rise` checks in a row to the weight they had. The
//! `xdpguard-lb health` command runs one as an agent. (Not
//! [`LoadBalancer::health`](crate::LoadBalancer::health), which says whether
//! the LB node serves, for a BGP speaker; the two meet there: a VIP whose
//! backends the checker all drained no longer counts as served.)
//!
//! - `machine.rs`: the rise/fall state machine and the weight rule;
//! - `probe.rs`: one check (TCP connect, HTTP GET through ureq);
//! - `checker.rs`: [`HealthChecker`], its rounds, [`BackendHealth`] (the
//!   state and counters a metrics exporter reads) and [`HealthEvent`].
//!
//! # The weight rule
//!
//! Health decides whether a backend gets new flows, the weight how many
//! (as a weight and a health state are separate in HAProxy): the checker
//! changes a weight only in these cases, and never overwrites an
//! operator's weight with its own:
//! - a backend going **down** has its tracked flows moved: they choose
//!   again from their next packet (its connection entries miss; see
//!   `machine::repicks`), so a flow to a dead server moves within the
//!   drain bound, a UDP flow that keeps sending too.
//! - a backend going **down** with weight `w > 0` is set to 0, and the
//!   checker remembers `w`, its *configured weight* (the weight it had at
//!   that moment, so an operator's earlier reweighting counts). One already
//!   at 0 (drained by an operator) is left alone and never restored.
//! - a backend that is down and is given a weight by an operator (a
//!   reweighting during an outage, or the backend removed and added again)
//!   is held at 0 again, and that weight becomes the one it gets back (a
//!   [`HealthEventKind::Overridden`] event): a backend failing its checks
//!   never takes new flows.
//! - a backend coming **up** that the checker drained is set back to the
//!   remembered weight, only if its weight is still 0. If an operator gave
//!   it a weight as it came up, that weight stays.
//!
//! Weight changes of one round to one VIP are one [`BackendBatch`](crate::BackendBatch)
//! (one Maglev table swap). A backend removed from the LB is forgotten (one
//! that was down, after five minutes: added again before, it is still
//! down, and held at 0 while it fails); one added is checked from the next
//! round, starting up.
//!
//! What the checker drained is its own memory: a restarted checker learns
//! it again through [`HealthChecker::adopt`], from a journal the old one
//! kept ([`HealthChecker::round_journaled`]: written before a drain is
//! made, so a checker killed between the two leaves nothing the next one
//! needs unsaid; `xdpguard-lb health --state FILE` keeps one).
//!
//! # Where checks come from
//!
//! Checks start in the LB's network namespace, so the backends are reached
//! as the LB reaches them, whichever namespace the calling thread is in:
//! when it is another, each check's thread enters the LB's (which needs
//! CAP_SYS_ADMIN; [`HealthError::Namespace`] otherwise, and an LB whose
//! namespace cannot be reached, not the caller's and not named under
//! `/run/netns`, is [`LbError::ForeignNamespace`](crate::LbError::ForeignNamespace):
//! either way nothing is checked or changed). They go to the backend's own address (for L2 DSR and
//! IPIP the VIP is on the backend too, but the backend's address is the one
//! that tells this backend from the others) and port: the configured
//! [`HealthConfig::port`], else the backend's port (NAT), else the VIP's.
//! UDP VIPs and all-ports VIPs are checked only with a configured port
//! (TCP or HTTP on a UDP service's port says nothing); their backends are
//! reported once as [`HealthEventKind::Unchecked`].
//!
//! # Timing
//!
//! A round starts every `interval` and checks every backend in parallel
//! (a thread each, joined before the round's results are applied), so a
//! round lasts at most `timeout`, which must not exceed `interval`. A
//! backend that stops answering is drained at most `interval × fall +
//! timeout` later; one that answers again is restored at most
//! `rise × interval` (plus the check's own time) later.
//!
//! Kernel: what the [`LoadBalancer`](crate::LoadBalancer) needs; the checks
//! themselves are plain sockets.

mod checker;
mod machine;
mod probe;

use std::fmt;
use std::time::Duration;

pub use checker::{BackendHealth, HealthChecker, HealthEvent, HealthEventKind};
pub use machine::HealthState;
pub use probe::ProbeError;

use crate::{LbError, Vip};

/// Default time between rounds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a check may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default passed checks in a row that bring a down backend back.
pub const DEFAULT_RISE: u32 = 2;
/// Default failed checks in a row that take an up backend down.
pub const DEFAULT_FALL: u32 = 3;

/// What a check does. Kinds of checks are added: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Check {
    /// A TCP connection is accepted (then closed).
    Tcp,
    /// `GET path` over HTTP/1.1 answers 2xx or 3xx (redirects are not
    /// followed; the body is not read).
    Http {
        /// The path, starting with `/`, e.g. `/healthz`.
        path: String,
    },
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp => f.write_str("TCP connect"),
            Check::Http { path } => write!(f, "HTTP GET {path}"),
        }
    }
}

/// How backends are checked. Defaults: every 1 s, 500 ms timeout, rise 2,
/// fall 3, every TCP VIP.
///
/// ```
/// use std::time::Duration;
/// use xdpguard::health_check::{Check, HealthConfig};
///
/// let config = HealthConfig::new(Check::Http { path: "/healthz".into() })
///     .interval(Duration::from_millis(500))
///     .timeout(Duration::from_millis(200))
///     .fall(2);
/// assert_eq!(config.rise, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthConfig {
    /// The check.
    pub check: Check,
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// Time a check may take (at most `interval`).
    pub timeout: Duration,
    /// Passed checks in a row that bring a down backend back (at least 1).
    pub rise: u32,
    /// Failed checks in a row that take an up backend down (at least 1).
    pub fall: u32,
    /// The port checked on every backend; `None`: the backend's (NAT), else the VIP's.
    pub port: Option<u16>,
    /// The VIPs whose backends are checked; empty: every VIP.
    pub vips: Vec<Vip>,
}

impl HealthConfig {
    /// A config with `check` and the defaults.
    pub fn new(check: Check) -> HealthConfig {
        HealthConfig {
            check,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            port: None,
            vips: Vec::new(),
        }
    }

    /// Sets the time between rounds.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the time a check may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the passed checks in a row that bring a backend back.
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }

    /// Sets the failed checks in a row that take a backend down.
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    /// Checks this port on every backend.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Checks this VIP's backends (repeatable; none given: every VIP's).
    pub fn vip(mut self, vip: Vip) -> Self {
        self.vips.push(vip);
        self
    }

    /// The longest time from a backend's failure to its drain:
    /// `interval × fall + timeout`.
    pub fn drain_bound(&self) -> Duration {
        self.interval * self.fall + self.timeout
    }

    /// The longest time from a backend's recovery to its restore (plus the
    /// passing check's own time): `interval × rise`.
    pub fn restore_bound(&self) -> Duration {
        self.interval * self.rise
    }

    fn validate(&self) -> Result<(), HealthError> {
        let invalid = |what: String, fix: &'static str| Err(HealthError::InvalidConfig { what, fix });
        if self.rise == 0 || self.fall == 0 {
            return invalid(
                format!("rise {} and fall {}", self.rise, self.fall),
                "both count checks in a row and must be at least 1",
            );
        }
        if self.timeout.is_zero() || self.interval.is_zero() {
            return invalid(
                format!("interval {:?} and timeout {:?}", self.interval, self.timeout),
                "both must be above zero",
            );
        }
        if self.timeout > self.interval {
            return invalid(
                format!("timeout {:?} over the interval {:?}", self.timeout, self.interval),
                "a round's checks must end before the next round starts: lower the timeout or raise the interval",
            );
        }
        if let Check::Http { path } = &self.check {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return invalid(format!("HTTP path {path:?}"), "give an absolute path without spaces, e.g. /healthz");
            }
        }
        if self.port == Some(0) {
            return invalid("port 0".into(), "give the port the backends serve checks on");
        }
        Ok(())
    }
}

/// Health checker errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// A [`HealthConfig`] value is out of range.
    #[error("invalid health check config: {what}: {fix}")]
    InvalidConfig {
        /// What was wrong.
        what: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// The checks could not be made from the load balancer's network
    /// namespace (not the caller's): entering it failed, so no backend was
    /// checked or changed.
    #[error(
        "entering the load balancer's network namespace failed: {error}; the checks start their connections \
         there (it needs CAP_SYS_ADMIN): run the checker as root, or inside that namespace"
    )]
    Namespace {
        /// The kernel's error.
        error: std::io::Error,
    },
    /// Reading the load balancer's VIPs and backends failed.
    #[error("reading the load balancer's backends: {0}")]
    Lb(LbError),
    /// [`HealthConfig::vips`] names VIPs the load balancer does not have
    /// (checked when [`HealthChecker::run`] starts): their backends would
    /// never be checked. Nothing was checked or changed.
    #[error("{}", vips_not_found(missing, other_protocol, pin.as_deref()))]
    VipsNotFound {
        /// The VIPs asked for that the LB does not have.
        missing: Vec<Vip>,
        /// VIPs the LB has at the address and port of one missing, with
        /// another protocol: probably the ones meant.
        other_protocol: Vec<Vip>,
        /// The LB's pin directory, for the command that lists its VIPs.
        pin: Option<std::path::PathBuf>,
    },
}

// By hand, not `#[from]`: that would also make the LB's error this one's
// `source()`, which the message already shows (an error-chain printer
// would show it twice).
impl From<LbError> for HealthError {
    fn from(e: LbError) -> Self {
        HealthError::Lb(e)
    }
}

/// A VIP as `--vip` takes it with its protocol: `203.0.113.10:80/udp`.
fn vip_arg(v: &Vip) -> String {
    format!("{}/{}", v.endpoint(), v.protocol)
}

fn vips_not_found(missing: &[Vip], other: &[Vip], pin: Option<&std::path::Path>) -> String {
    let names: Vec<String> = missing.iter().map(Vip::to_string).collect();
    let mut text = format!(
        "the load balancer has no VIP {}: its backends would never be checked; nothing was checked",
        names.join(", no VIP ")
    );
    if !other.is_empty() {
        let args: Vec<String> = other.iter().map(|v| format!("--vip {}", vip_arg(v))).collect();
        text += &format!(
            ". At that address and port it has {} (`--vip` without a protocol is TCP): give it with its protocol, {}",
            other.iter().map(Vip::to_string).collect::<Vec<_>>().join(", "),
            args.join(" ")
        );
    }
    let pin = pin.map(|p| format!(" --pin {}", p.display())).unwrap_or_default();
    text + &format!(". List its VIPs with `xdpguard-lb vip list{pin}` (API: `LoadBalancer::vips`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_are_refused_with_the_fix() {
        let http = |p: &str| HealthConfig::new(Check::Http { path: p.into() });
        for (config, says) in [
            (HealthConfig::new(Check::Tcp).rise(0), "at least 1"),
            (HealthConfig::new(Check::Tcp).fall(0), "at least 1"),
            (HealthConfig::new(Check::Tcp).timeout(Duration::from_secs(2)), "lower the timeout"),
            (HealthConfig::new(Check::Tcp).timeout(Duration::ZERO), "above zero"),
            (http("healthz"), "absolute path"),
            (http("/a b"), "absolute path"),
            (HealthConfig::new(Check::Tcp).port(0), "port the backends serve"),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{config:?}: {err}");
        }
        assert!(http("/healthz?full=1").validate().is_ok());
    }

    #[test]
    fn unknown_vips_are_named_with_the_way_to_list_them() {
        let tcp: Vip = "tcp 203.0.113.10:80".parse().unwrap();
        let udp: Vip = "udp 203.0.113.10:80".parse().unwrap();
        let other: Vip = "tcp [2001:db8::1]:443".parse().unwrap();
        let e = HealthError::VipsNotFound {
            missing: vec![tcp, other],
            other_protocol: vec![udp],
            pin: Some("/sys/fs/bpf/xdpguard-lb".into()),
        };
        assert_eq!(
            e.to_string(),
            "the load balancer has no VIP tcp 203.0.113.10:80, no VIP tcp [2001:db8::1]:443: its backends would never \
             be checked; nothing was checked. At that address and port it has udp 203.0.113.10:80 (`--vip` without a \
             protocol is TCP): give it with its protocol, --vip 203.0.113.10:80/udp. List its VIPs with \
             `xdpguard-lb vip list --pin /sys/fs/bpf/xdpguard-lb` (API: `LoadBalancer::vips`)"
        );
        // The suffix given back parses as the VIP meant.
        assert_eq!(vip_arg(&udp).parse::<Vip>().unwrap(), udp);
        assert_eq!(vip_arg(&other).parse::<Vip>().unwrap(), other);
        let e = HealthError::VipsNotFound { missing: vec![tcp], other_protocol: vec![], pin: None };
        assert!(e
            .to_string()
            .ends_with("nothing was checked. List its VIPs with `xdpguard-lb vip list` (API: `LoadBalancer::vips`)"));
    }

    #[test]
    fn bounds_follow_the_settings() {
        let c = HealthConfig::new(Check::Tcp).interval(Duration::from_millis(300)).timeout(Duration::from_millis(200));
        assert_eq!(c.drain_bound(), Duration::from_millis(1100));
        assert_eq!(c.restore_bound(), Duration::from_millis(600));
    }
}
