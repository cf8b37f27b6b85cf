//! `xdpguard block --ttl DURATION ADDR...` and the timed blocks that
//! `xdpguard list` shows (with the time left and the rule that made them).

use std::time::Duration;

use serde_json::{json, Value};
use xdpguard::{BlockedBy, Filter, IpNetwork, RuleError, TimedBlock};

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
    let ttl = days_hours(ttl);
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
    days_hours(Duration::from_secs(b.remaining.as_secs().max(1)))
}

/// A duration in days, hours, minutes and seconds (`365d`, `1d 2h`,
/// `10m 5s`): never humantime's months and years, whose lengths are
/// averages (365 days would read "11months 30days 3h 50m 24s").
pub(crate) fn days_hours(d: Duration) -> String {
    let mut left = d.as_secs();
    let mut parts = Vec::new();
    for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if left >= secs {
            parts.push(format!("{}{unit}", left / secs));
            left %= secs;
        }
    }
    if parts.is_empty() {
        return format!("{}ms", d.as_millis());
    }
    parts.join(" ")
}

/// `--ttl`: a duration as humantime reads it (`90s`, `10m`, `2h 30m`,
/// `7d`), but never `M`, which humantime reads as months: `10M` was meant
/// as minutes more often than not.
pub(crate) fn ttl_value(text: &str) -> std::result::Result<Duration, String> {
    if text.contains('M') {
        return Err(format!("`{text}`: `M` would mean months; write `m` for minutes, or `months` if meant"));
    }
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (write 30s, 10m, 2h, 7d)"))
}

/// A timed block as `list --json` shows it.
pub(crate) fn to_json(b: &TimedBlock) -> Value {
    json!({
        "entry": b.prefix.to_string(),
        "expires_in_secs": b.remaining.as_secs_f64(),
        "rule": b.by.rule().map(|r| r.get()),
        "by": match b.by {
            BlockedBy::Hand => "hand",
            BlockedBy::Rule(_) => "rule",
            _ => "removed rule",
        },
    })
}

/// A timed block as `list` shows it.
pub(crate) fn to_line(b: &TimedBlock) -> String {
    match b.by {
        BlockedBy::Hand => format!("{} (expires in {})", b.prefix, left(b)),
        by => format!("{} (expires in {}, blocked by {by})", b.prefix, left(b)),
    }
}
