//! Whether a load balancer is serving: the health check behind `xdpguard-lb
//! status --exit-code`, which a routing daemon's agent polls to announce a
//! node's VIPs by BGP while it serves and withdraw them when it does not
//! (dist/bird/, docs/deployment.md).
//!
//! Serving means: attached to at least one interface, or chained behind a
//! filter that runs on one (`Filter::set_next`, a configuration's `next`:
//! what the filter passes reaches the LB), no attachment lost (an
//! interface it was attached to was deleted: the traffic that interface
//! received is no longer balanced, exit code 6; as for an interface a
//! filter chaining it lost, whose NAT replies go untranslated), and at least one VIP
//! with an active backend (weight above 0), so a new flow to it gets a
//! backend rather than a drop. A deliberate `detach --iface IF` of one of
//! several interfaces is not a loss. Deliberately not part of it:
//!
//! - the backends' neighbour states. A node that is not announced gets no
//!   traffic, and the kernel keeps managed entries resolved by itself, but
//!   an unresolved next hop on a fresh node would keep it withdrawn, which
//!   is worse than a few packets through the stack. Backend liveness
//!   belongs to the backends' own health checks, which drain a dead one
//!   (weight 0) on every node through the shared configuration.
//! - per-VIP announcements. BGP announces addresses, and every VIP port of
//!   an address shares it; a node that serves some VIPs of an address but
//!   not others is a configuration error that the fleet digest shows, not
//!   something to route around.
//!
//! Optionally it also checks the fleet's configuration
//! ([`LoadBalancer::health_expecting`], `status --exit-code --config FILE`
//! or `--expect-digest HEX`): a node whose state digest differs from the
//! one the fleet's file promises (half-configured after a restart, a stale
//! or hand-edited node) would send flows that move to it to other backends
//! than the other nodes do, so it is not serving either (exit code 5).
//!
//! Cost: one read of the model the handle already keeps, the pinned
//! links' info (what [`LoadBalancer::open_pinned`] reads anyway; one
//! `bpf()` call per lost attachment) and one
//! pass over the kernel's programs and links for the filters chaining it
//! ([`LoadBalancer::chained_from`]): the whole `status --exit-code`
//! process takes a few milliseconds, cheap enough to poll ten times a
//! second. The digest check adds one SHA-256 pass over the
//! Maglev tables (about 0.3 ms per 65537-slot table).

use std::fmt;

use super::digest::Digest;
use super::LoadBalancer;
use crate::error::LbError;

/// A load balancer's health ([`LoadBalancer::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Interfaces the LB is attached to.
    pub attachments: usize,
    /// Attachments lost: interfaces it was attached to that were deleted
    /// (or the kernel otherwise took the program off), not detached
    /// ([`LoadBalancer::lost_attachments`]), and those of the filters
    /// that pass their packets on to it ([`ChainedFrom::lost`](crate::ChainedFrom::lost)).
    pub lost: usize,
    /// Interfaces running a filter that passes its packets on to the LB
    /// ([`LoadBalancer::chained_from`]).
    pub chained: usize,
    /// Its VIPs.
    pub vips: usize,
    /// VIPs with at least one active backend (weight above 0).
    pub serving_vips: usize,
    /// Whether the LB's overall state digest equals the expected one
    /// ([`LoadBalancer::health_expecting`]); `None` when none was given.
    pub digest_matches: Option<bool>,
}

impl Health {
    /// Serving: attached somewhere (or chained behind a filter that is), no attachment lost, at least one
    /// VIP has an active backend, and, when a digest was expected, the state matches it.
    pub fn is_serving(&self) -> bool {
        self.exit_code() == 0
    }

    /// The exit code of `xdpguard-lb status --exit-code`, the first thing
    /// missing: 0 serving, 3 not attached to any interface (nor chained
    /// behind a filter attached to one), 6 attached (or chained) but an
    /// interface it was attached to is lost (deleted, not detached:
    /// [`LoadBalancer::lost_attachments`]), 4 attached but
    /// no VIP has an active backend, 5 serving but its state digest differs
    /// from the expected one (only with an expected digest). (1 is any
    /// error, e.g. nothing pinned: the LB was detached or never attached; 2
    /// a usage error.) An LB attached nowhere is 3, lost attachments or
    /// not.
    pub fn exit_code(&self) -> u8 {
        if self.attachments + self.chained == 0 {
            3
        } else if self.lost > 0 {
            6
        } else if self.serving_vips == 0 {
            4
        } else if self.digest_matches == Some(false) {
            5
        } else {
            0
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_serving() { "serving" } else { "not serving" };
        write!(f, "{verdict}: attached to {} interface(s)", self.attachments)?;
        if self.lost > 0 {
            write!(f, ", lost {}", self.lost)?;
        }
        if self.chained > 0 {
            write!(f, ", behind a filter on {}", self.chained)?;
        }
        write!(f, ", {} of {} VIP(s) with an active backend", self.serving_vips, self.vips)?;
        match self.digest_matches {
            None => Ok(()),
            Some(true) => write!(f, ", state digest as expected"),
            Some(false) => write!(f, ", state digest differs from the expected one"),
        }
    }
}

impl LoadBalancer {
    /// Whether this LB is serving (see [`Health`]): what a BGP speaker's
    /// health agent should announce the node's VIPs on. Linux 5.15 or later
    /// (as the LB).
    ///
    /// # Errors
    ///
    /// [`LbError::Pin`] when the pin directory cannot be locked;
    /// [`LbError::Map`] when another process's edit cannot be read back.
    pub fn health(&self) -> Result<Health, LbError> {
        let attachments = self.attachments().len();
        let chains = self.chained_from();
        // A filter's lost interface is as much a loss: what it received no
        // longer reaches the LB (NAT replies there go untranslated).
        let lost = self.lost_attachments().len() + chains.iter().map(|c| c.lost.len()).sum::<usize>();
        let chained = chains.iter().map(|c| c.ifindexes.len()).sum();
        let (vips, serving_vips) = self.read(|st| {
            let serving = st
                .vips
                .values()
                // Weight 0 is draining (`Backend::state`): no new flows.
                .filter(|vs| vs.backends.values().any(|slot| slot.weight > 0))
                .count();
            (st.vips.len(), serving)
        })?;
        Ok(Health { attachments, lost, chained, vips, serving_vips, digest_matches: None })
    }

    /// As [`LoadBalancer::health`], and whether the LB's overall state
    /// digest ([`LoadBalancer::digest`]) is `expected`: what the fleet's
    /// configuration promises
    /// (`LbConfig::expected_digest` of the `config` feature, or
    /// `xdpguard-lb digest --config FILE`). A
    /// node that serves but differs is not serving ([`Health::exit_code`]
    /// 5). Linux 5.15 or later (as the LB).
    ///
    /// # Errors
    ///
    /// As [`LoadBalancer::health`] and [`LoadBalancer::digest`].
    pub fn health_expecting(&self, expected: &Digest) -> Result<Health, LbError> {
        let health = self.health()?;
        let matches = self.digest()?.overall == *expected;
        Ok(Health { digest_matches: Some(matches), ..health })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_name_the_first_thing_missing() {
        let h = |attachments, vips, serving_vips| Health {
            attachments,
            lost: 0,
            chained: 0,
            vips,
            serving_vips,
            digest_matches: None,
        };
        assert_eq!(h(1, 2, 1).exit_code(), 0);
        assert!(h(1, 2, 1).is_serving());
        assert_eq!(h(0, 2, 2).exit_code(), 3);
        assert_eq!(h(0, 0, 0).exit_code(), 3);
        assert_eq!(h(2, 2, 0).exit_code(), 4);
        assert_eq!(h(2, 0, 0).exit_code(), 4);
        assert!(!h(2, 0, 0).is_serving());
        assert_eq!(h(1, 3, 2).to_string(), "serving: attached to 1 interface(s), 2 of 3 VIP(s) with an active backend");
        // Chained behind a filter that runs somewhere, not attached itself.
        let behind = Health { chained: 2, ..h(0, 2, 1) };
        assert_eq!(behind.exit_code(), 0);
        assert_eq!(
            behind.to_string(),
            "serving: attached to 0 interface(s), behind a filter on 2, 1 of 2 VIP(s) with an active backend"
        );
        // The digest counts only once everything else is there.
        let d = |matches, serving_vips| Health { digest_matches: Some(matches), ..h(1, 2, serving_vips) };
        assert_eq!(d(true, 1).exit_code(), 0);
        assert_eq!(d(false, 1).exit_code(), 5);
        assert!(!d(false, 1).is_serving());
        assert_eq!(d(false, 0).exit_code(), 4);
        assert_eq!(Health { digest_matches: Some(false), ..h(0, 2, 2) }.exit_code(), 3);
        // An interface lost (deleted, not detached) while another serves:
        // 6, before the VIPs and the digest; attached nowhere stays 3.
        let lost = Health { lost: 1, ..h(1, 2, 1) };
        assert_eq!(lost.exit_code(), 6);
        assert!(!lost.is_serving());
        assert_eq!(Health { lost: 1, ..h(1, 2, 0) }.exit_code(), 6);
        assert_eq!(Health { lost: 1, digest_matches: Some(false), ..h(1, 2, 1) }.exit_code(), 6);
        assert_eq!(Health { lost: 2, ..h(0, 2, 1) }.exit_code(), 3);
        assert_eq!(Health { lost: 1, chained: 1, ..h(0, 2, 1) }.exit_code(), 6);
        assert_eq!(
            lost.to_string(),
            "not serving: attached to 1 interface(s), lost 1, 1 of 2 VIP(s) with an active backend"
        );
        assert_eq!(
            d(false, 1).to_string(),
            "not serving: attached to 1 interface(s), 1 of 2 VIP(s) with an active backend, \
             state digest differs from the expected one"
        );
        assert!(d(true, 2).to_string().ends_with("2 of 2 VIP(s) with an active backend, state digest as expected"));
    }
}
