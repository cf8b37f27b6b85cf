//! `xdpguard block --ttl DURATION ADDR...` and the timed blocks that
//! `xdpguard list` shows (with the time left and the rule that made them).

use std::time::Duration;

use serde_json::{json, Value};
use xdpguard::{Filter, IpNetwork, RuleError, TimedBlock};

use crate::common::Result;

/// Blocks `nets` for `ttl`, a whole family only with `force` (one edit:
/// one bad entry, nothing applied). A block with longer left is kept, and
/// said so.
pub(crate) fn block(
    filter: &Filter,
    nets: &[IpNetwork],
    ttl: Duration,
    force: bool,
) -> std::result::Result<(), RuleError> {
    let timed = filter.timed_blocks();
    let timed = if force { timed.permit_whole_family() } else { timed };
    let change = timed.extend(nets.iter().copied(), ttl)?;
    let ttl = humantime::format_duration(ttl);
    let n = change.added + change.renewed;
    println!(
        "timed blocks: {n} entr{} for {ttl} ({} new, {} renewed)",
        if n == 1 { "y" } else { "ies" },
        change.added,
        change.renewed
    );
    for b in &change.kept_longer {
        println!(
            "{} stays blocked for {}, longer than --ttl {ttl}: a block is never shortened by blocking again \
             (to shorten it: `xdpguard unblock {}`, then block it again)",
            b.prefix,
            left(b),
            b.prefix
        );
    }
    Ok(())
}

/// Removes the timed blocks of `nets`; returns how many there were.
pub(crate) fn unblock(filter: &Filter, nets: &[IpNetwork]) -> Result<usize> {
    let timed = filter.timed_blocks();
    let mut removed = 0;
    for net in nets {
        removed += usize::from(timed.remove(*net)?);
    }
    Ok(removed)
}

/// The live timed blocks (none for a filter without a guard stage).
pub(crate) fn list(filter: &Filter) -> Result<Vec<TimedBlock>> {
    match filter.timed_blocks().list() {
        Ok(l) => Ok(l),
        Err(xdpguard::RuleError::NoGuard { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Time left, rounded to whole seconds (`9m 59s`).
pub(crate) fn left(b: &TimedBlock) -> String {
    humantime::format_duration(Duration::from_secs(b.remaining.as_secs().max(1))).to_string()
}

/// A timed block as `list --json` shows it.
pub(crate) fn to_json(b: &TimedBlock) -> Value {
    json!({
        "entry": b.prefix.to_string(),
        "expires_in_secs": b.remaining.as_secs_f64(),
        "rule": b.rule.map(|r| r.get()),
    })
}

/// A timed block as `list` shows it.
pub(crate) fn to_line(b: &TimedBlock) -> String {
    match b.rule {
        Some(r) => format!("{} (expires in {}, blocked by rule {r})", b.prefix, left(b)),
        None => format!("{} (expires in {})", b.prefix, left(b)),
    }
}
