//! The filter's counter snapshot.

use crate::Counter;

/// The filter's counters, one per verdict reason; every packet the filter
/// sees is counted in exactly one of them (its guard stage's decisions
/// included: a packet the rules decide is counted by the rule reason, one
/// they leave is `passed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FilterStats {
    /// IP packets in neither list: passed.
    pub passed: Counter,
    /// Sources on the allowlist: passed.
    pub allowlisted: Counter,
    /// IPv4 sources on the blocklist: dropped.
    pub blocked_v4: Counter,
    /// IPv6 sources on the blocklist: dropped.
    pub blocked_v6: Counter,
    /// Bad or truncated Ethernet, VLAN, IPv4 or IPv6 headers: passed or
    /// dropped by the [`MalformedPolicy`](crate::MalformedPolicy).
    pub malformed: Counter,
    /// Not IP (ARP, LLDP, ...): passed.
    pub non_ip: Counter,
    /// Dropped by a drop rule.
    pub rule_dropped: Counter,
    /// Passed by a pass rule.
    pub rule_passed: Counter,
    /// Monitor mode: blocklisted sources, passed.
    pub would_drop_blocked: Counter,
    /// Monitor mode: matched by a drop rule, passed.
    pub would_drop_rule: Counter,
    /// SYN guard: SYNs over a port's threshold from unknown sources (or
    /// that cookie mode cannot answer): dropped.
    pub syn_dropped: Counter,
    /// Monitor mode (the filter's or a port's): SYNs the SYN guard would
    /// have dropped or answered, passed.
    pub would_drop_syn: Counter,
    /// SYN guard, cookie mode: SYNs answered with a SYN-ACK (XDP_TX).
    pub syn_cookies_sent: Counter,
    /// SYN guard, cookie mode: ACKs with a valid cookie, passed.
    pub syn_cookies_passed: Counter,
    /// Over a rate-limit rule's limit: dropped.
    pub rate_limited: Counter,
    /// Monitor mode: over a rate-limit rule's limit, passed.
    pub would_drop_limit: Counter,
    /// Sources in a timed block (`xdpguard block --ttl`, or a rate
    /// limit's auto-block): dropped.
    pub timed_blocked: Counter,
    /// Monitor mode: sources in a timed block, passed.
    pub would_drop_timed: Counter,
}

impl FilterStats {
    /// Blocked packets of both families.
    pub fn blocked(&self) -> Counter {
        self.blocked_v4 + self.blocked_v6
    }

    /// Dropped by the lists or the rules (malformed packets not included).
    pub fn dropped(&self) -> Counter {
        self.blocked() + self.rule_dropped + self.syn_dropped + self.rate_limited + self.timed_blocked
    }

    /// Monitor mode: what the lists and rules would have dropped.
    pub fn would_drop(&self) -> Counter {
        self.would_drop_blocked
            + self.would_drop_rule
            + self.would_drop_syn
            + self.would_drop_limit
            + self.would_drop_timed
    }

    /// Every packet the filter saw.
    pub fn total(&self) -> Counter {
        self.passed
            + self.allowlisted
            + self.blocked()
            + self.malformed
            + self.non_ip
            + self.rule_dropped
            + self.rule_passed
            + self.rate_limited
            + self.timed_blocked
            + self.would_drop()
            + self.syn_dropped
            + self.syn_cookies_sent
            + self.syn_cookies_passed
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &FilterStats) -> FilterStats {
        FilterStats {
            passed: self.passed - earlier.passed,
            allowlisted: self.allowlisted - earlier.allowlisted,
            blocked_v4: self.blocked_v4 - earlier.blocked_v4,
            blocked_v6: self.blocked_v6 - earlier.blocked_v6,
            malformed: self.malformed - earlier.malformed,
            non_ip: self.non_ip - earlier.non_ip,
            rule_dropped: self.rule_dropped - earlier.rule_dropped,
            rule_passed: self.rule_passed - earlier.rule_passed,
            would_drop_blocked: self.would_drop_blocked - earlier.would_drop_blocked,
            would_drop_rule: self.would_drop_rule - earlier.would_drop_rule,
            syn_dropped: self.syn_dropped - earlier.syn_dropped,
            would_drop_syn: self.would_drop_syn - earlier.would_drop_syn,
            syn_cookies_sent: self.syn_cookies_sent - earlier.syn_cookies_sent,
            syn_cookies_passed: self.syn_cookies_passed - earlier.syn_cookies_passed,
            rate_limited: self.rate_limited - earlier.rate_limited,
            would_drop_limit: self.would_drop_limit - earlier.would_drop_limit,
            timed_blocked: self.timed_blocked - earlier.timed_blocked,
            would_drop_timed: self.would_drop_timed - earlier.would_drop_timed,
        }
    }

    /// (name, counter) pairs, in a stable order, for tables and JSON.
    pub fn rows(&self) -> [(&'static str, Counter); 18] {
        [
            ("passed", self.passed),
            ("allowlisted", self.allowlisted),
            ("blocked_v4", self.blocked_v4),
            ("blocked_v6", self.blocked_v6),
            ("malformed", self.malformed),
            ("non_ip", self.non_ip),
            ("rule_dropped", self.rule_dropped),
            ("rule_passed", self.rule_passed),
            ("would_drop_blocked", self.would_drop_blocked),
            ("would_drop_rule", self.would_drop_rule),
            ("syn_dropped", self.syn_dropped),
            ("would_drop_syn", self.would_drop_syn),
            ("syn_cookies_sent", self.syn_cookies_sent),
            ("syn_cookies_passed", self.syn_cookies_passed),
            ("rate_limited", self.rate_limited),
            ("would_drop_limit", self.would_drop_limit),
            ("timed_blocked", self.timed_blocked),
            ("would_drop_timed", self.would_drop_timed),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_totals() {
        let c = |p| Counter { packets: p, bytes: p * 100 };
        let a = FilterStats { passed: c(5), blocked_v4: c(2), ..Default::default() };
        let b = FilterStats { passed: c(7), blocked_v4: c(2), blocked_v6: c(1), ..Default::default() };
        let d = b.since(&a);
        assert_eq!(d.passed, c(2));
        assert_eq!(d.blocked(), c(1));
        assert_eq!(b.total(), c(10));
        assert_eq!(a.since(&b).passed, c(0), "saturates after a reset");
    }
}
