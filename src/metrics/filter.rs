//! A pinned [`Filter`]'s samples: its counters by verdict reason and its
//! list sizes.

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
    Ok(())
}
