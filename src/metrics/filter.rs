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
    let ev = f.event_stats()?;
    for (counted, v) in [("sent", ev.sent), ("limited", ev.limited), ("lost", ev.lost)] {
        s.push(Id::EVENTS, [pin.clone(), counted.into()], v);
    }
    let rules = match f.rules().list() {
        Ok(r) => r,
        // A filter without the guard stage has no rules, no SYN guard, no
        // limiter: their families are left out, not reported as 0.
        Err(crate::RuleError::NoGuard { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    guard(f, &pin, s)?;
    for e in rules {
        let mut rule = e.rule;
        let monitor = rule.monitor;
        rule.monitor = false;
        let id: Label = e.id.to_string().into();
        let labels = [pin.clone(), id.clone(), rule.action.to_string().into(), rule.to_string().into()];
        s.push_counter(Id::RULE_PACKETS, Id::RULE_BYTES, labels, e.hits);
        if rule.action == crate::RuleAction::RateLimit {
            s.push_counter(Id::RULE_LIMITED_PACKETS, Id::RULE_LIMITED_BYTES, [pin.clone(), id.clone()], e.limited);
            s.push(Id::RULE_AUTO_BLOCKS, [pin.clone(), id.clone()], e.auto_blocks);
        }
        s.push(Id::RULE_MONITOR, [pin.clone(), id], u64::from(monitor));
    }
    Ok(())
}

/// The guard stage's SYN guard (per protected port), rate limiter and
/// timed blocks. Series are bounded: at most [`crate::MAX_SYN_PORTS`] ports
/// times eight counters.
fn guard(f: &Filter, pin: &Label, s: &mut Samples) -> Result<(), Error> {
    for p in f.syn_guard().status()? {
        let port: Label = p.port.to_string().into();
        let st = p.stats;
        for (counted, v) in [
            ("syns", st.syns),
            ("dropped", st.dropped),
            ("would_drop", st.would_drop),
            ("cookies_sent", st.cookies_sent),
            ("cookies_ok", st.cookies_ok),
            ("acks_other", st.acks_other),
            ("known_passed", st.known_passed),
            ("unanswerable", st.unanswerable),
        ] {
            s.push(Id::SYN_PACKETS, [pin.clone(), port.clone(), counted.into()], v);
        }
        // The data plane measures the rate in drop mode only (a cookie
        // port answers every SYN, whatever the rate): a cookie port's
        // would be a constant 0 that reads as "no SYNs".
        if matches!(p.policy.mode, crate::SynMode::Drop { .. }) {
            s.push(Id::SYN_RATE, [pin.clone(), port], p.rate);
        }
    }
    let l = f.limiter_stats()?;
    for (counted, v) in [
        ("buckets_made", l.buckets_made),
        ("promote_capped", l.promote_capped),
        ("sketch_over", l.sketch_over),
        ("blocks_failed", l.blocks_failed),
        ("expired", l.expired),
    ] {
        s.push(Id::LIMITER, [pin.clone(), counted.into()], v);
    }
    s.push(Id::LIMITER_BUCKETS, [pin.clone()], l.buckets as u64);
    // Live blocks, counted from the map, read-only. `timed_blocks().list()`
    // is an edit (it reclaims expired blocks under the lock, the guard's
    // gate closed meanwhile): a scrape made one each time, and waited for
    // any edit under way. It is one now only when there are expired
    // blocks to reclaim (their slots are held until user space reclaims
    // them, and the README tells operators a scrape does), and only when
    // the lock is free: else the next scrape reclaims them.
    let maps = &f.guard_stage()?.core.maps;
    let now = maps.now_ns();
    let blocks = crate::filter::guard::limits::entries(maps);
    let live = blocks.iter().filter(|(_, tb)| tb.expires_ns > now).count();
    s.push(Id::TIMED_BLOCKS, [pin.clone()], live as u64);
    if live < blocks.len() {
        match f.timed_blocks().list() {
            Err(crate::RuleError::Pin(e)) if crate::core::pin::is_busy(&e) => {}
            r => drop(r?),
        }
    }
    // The tables' sizes, beside what is in them (the stats above read the
    // guard stage, so it is there).
    if let Some(c) = f.rule_capacities() {
        s.push(Id::LIMITER_BUCKETS_CAPACITY, [pin.clone()], c.max_limit_buckets as u64);
        s.push(Id::TIMED_BLOCKS_CAPACITY, [pin.clone()], c.max_timed_blocks as u64);
    }
    Ok(())
}
