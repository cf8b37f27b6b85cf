//! Whether a load balancer is serving: the health check behind `xdpguard-lb
//! status --exit-code`, which a routing daemon's agent polls to announce a
//! node's VIPs by BGP while it serves and withdraw them when it does not
//! (dist/bird/, docs/deployment.md).
//!
//! Serving means: attached to at least one interface, and at least one VIP
//! with an active backend (weight above 0), so a new flow to it gets a
//! backend rather than a drop. Deliberately not part of it:
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
//! Cost: one read of the model the handle already keeps, and the pinned
//! links' info (what [`LoadBalancer::open_pinned`] reads anyway): the whole
//! `status --exit-code` process takes a few milliseconds, cheap enough to
//! poll ten times a second.

use std::fmt;

use super::LoadBalancer;
use crate::error::LbError;

/// A load balancer's health ([`LoadBalancer::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Interfaces the LB is attached to.
    pub attachments: usize,
    /// Its VIPs.
    pub vips: usize,
    /// VIPs with at least one active backend (weight above 0).
    pub serving_vips: usize,
}

impl Health {
    /// Serving: attached somewhere, and at least one VIP has an active
    /// backend.
    pub fn is_serving(&self) -> bool {
        self.attachments > 0 && self.serving_vips > 0
    }

    /// The exit code of `xdpguard-lb status --exit-code`: 0 serving, 3 not
    /// attached to any interface, 4 attached but no VIP has an active
    /// backend. (1 is any error, e.g. nothing pinned: the LB was detached
    /// or never attached; 2 a usage error.)
    pub fn exit_code(&self) -> u8 {
        if self.attachments == 0 {
            3
        } else if self.serving_vips == 0 {
            4
        } else {
            0
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_serving() { "serving" } else { "not serving" };
        write!(
            f,
            "{verdict}: attached to {} interface(s), {} of {} VIP(s) with an active backend",
            self.attachments, self.serving_vips, self.vips
        )
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
        let (vips, serving_vips) = self.read(|st| {
            let serving = st
                .vips
                .values()
                // Weight 0 is draining (`Backend::state`): no new flows.
                .filter(|vs| vs.backends.values().any(|slot| slot.weight > 0))
                .count();
            (st.vips.len(), serving)
        })?;
        Ok(Health { attachments, vips, serving_vips })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_name_the_first_thing_missing() {
        let h = |attachments, vips, serving_vips| Health { attachments, vips, serving_vips };
        assert_eq!(h(1, 2, 1).exit_code(), 0);
        assert!(h(1, 2, 1).is_serving());
        assert_eq!(h(0, 2, 2).exit_code(), 3);
        assert_eq!(h(0, 0, 0).exit_code(), 3);
        assert_eq!(h(2, 2, 0).exit_code(), 4);
        assert_eq!(h(2, 0, 0).exit_code(), 4);
        assert!(!h(2, 0, 0).is_serving());
        assert_eq!(h(1, 3, 2).to_string(), "serving: attached to 1 interface(s), 2 of 3 VIP(s) with an active backend");
    }
}
