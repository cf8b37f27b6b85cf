//! The rules the benches load (issue 10's shape): two rules without a
//! destination port, which every packet of their protocol is checked
//! against, and one rule per (protocol, destination port) from
//! 198.51.100.0/24, a range no bench traffic comes from.

use xdpguard::{Filter, Rule};

/// The destination port of port rule `k` (of `n`): spread over 1024..65535,
/// UDP and TCP in turn.
pub fn rule_port(k: usize, n: usize) -> u16 {
    let per_proto = n.div_ceil(2).max(1);
    (1024 + (k / 2) * (64_000 / per_proto)) as u16
}

/// Port rule `k` (of `n`): `drop udp|tcp dport P from 198.51.100.0/24`.
pub fn port_rule(k: usize, n: usize) -> Rule {
    let proto = if k % 2 == 0 { "udp" } else { "tcp" };
    format!("drop {proto} dport {} from 198.51.100.0/24", rule_port(k, n)).parse().expect("rule")
}

/// The two rules without a destination port; the second names the set
/// [`create_resolvers`] makes.
pub fn protocol_wide() -> [Rule; 2] {
    ["drop tcp flags syn,fin", "drop udp sport 53 not from set resolvers"].map(|r| r.parse().expect("rule"))
}

/// Rules on the port of the benches' clean UDP frames (40000 → 9) that none
/// of them matches (their sources are outside the documentation ranges):
/// each such frame walks them with the UDP rule of [`protocol_wide`].
pub fn on_clean_port() -> [Rule; 2] {
    ["drop udp dport 9 from 198.51.100.0/24", "drop udp dport 9 from 2001:db8::/32"].map(|r| r.parse().expect("rule"))
}

/// Creates the set `resolvers` (192.0.2.53) the UDP rule of
/// [`protocol_wide`] names.
pub fn create_resolvers(filter: &Filter) {
    let resolvers = filter.sets().create("resolvers").expect("set");
    resolvers.insert("192.0.2.53/32".parse().expect("literal")).expect("set entry");
}

/// Adds `n` port rules ([`port_rule`]), none on port 9: rules in no group a
/// clean frame of the benches (UDP 40000 → 9) has, so the filter's gate
/// passes those frames without the guard stage.
pub fn add_elsewhere(filter: &Filter, n: usize) {
    add_all(filter, (0..n).map(|k| port_rule(k, n)));
}

/// Adds the two [`protocol_wide`] rules (creating the set the second
/// names) and the two [`on_clean_port`]: every clean UDP frame of the
/// benches walks three rules, none of which matches it.
pub fn add_on_clean_port(filter: &Filter) {
    create_resolvers(filter);
    add_all(filter, protocol_wide().into_iter().chain(on_clean_port()));
}

/// Adds `rules` to `filter`, one by one.
pub fn add_all(filter: &Filter, rules: impl IntoIterator<Item = Rule>) {
    for r in rules {
        filter.rules().add(r).expect("adding a rule");
    }
}
