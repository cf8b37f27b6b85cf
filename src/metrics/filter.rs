//! A pinned [`Filter`]'s samples: its counters by verdict reason, its list
//! sizes, monitor mode, and each rule's counters.
//!
//! A rule's samples carry its id (`rule`, stable while the rule is in the
//! set: the series to graph and alert on), its action and its text. The
//! text is the canonical rule text ([`Rule`](crate::Rule)'s `Display`)
//! without a leading `monitor`: a rule switched in or out of monitor mode
//! keeps its id and counter, and so its series (its mode is
//! `xdpguard_filter_rule_monitor`). Rule text is ASCII words, prefixes,
//! numbers and commas, at most about 200 characters: a sane label value. A
//! rule whose text changes is another rule with a new id, so the text never
//! changes under one series. Series are bounded by the rule count.

use super::family::{Id, Label, Samples};
use crate::{Error, Filter};

/// Reads `f`'s counters and list sizes into `s`.
pub(crate) fn read(f: &Filter, pin: Label, s: &mut Samples) -> Result<(), Error> {
    // Every row of FilterStats is a reason: a counter the filter gains (a
    // rule's verdict, a rate limit) is scraped once it is in `rows()`.
    for (reason, c) in f.stats()?.rows() {
        s.push_counter(Id::FILTER_PACKETS, Id::FILTER_BYTES, [pin.clone(), reason.into()], c);
    }
    s.push(Id::FILTER_ENTRIES, [pin.clone(), "block".into()], f.blocklist().len()? as u64);
    s.push(Id::FILTER_ENTRIES, [pin.clone(), "allow".into()], f.allowlist().len()? as u64);
    s.push(Id::FILTER_MONITOR, [pin.clone()], u64::from(f.monitor()));
    let rules = match f.rules().list() {
        Ok(r) => r,
        // A filter without the guard stage has no rules.
        Err(crate::RuleError::NoGuard { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for e in rules {
        let mut rule = e.rule;
        let monitor = rule.monitor;
        rule.monitor = false;
        let id: Label = e.id.to_string().into();
        let labels = [pin.clone(), id.clone(), rule.action.to_string().into(), rule.to_string().into()];
        s.push_counter(Id::RULE_PACKETS, Id::RULE_BYTES, labels, e.hits);
        s.push(Id::RULE_MONITOR, [pin.clone(), id], u64::from(monitor));
    }
    Ok(())
}
