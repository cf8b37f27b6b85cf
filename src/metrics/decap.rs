//! A pinned [`Decap`]'s samples.

use super::family::{Id, Label, Samples};
use crate::{Decap, Error};

/// Reads `d`'s counters and local endpoints into `s`.
pub(crate) fn read(d: &Decap, pin: Label, s: &mut Samples) -> Result<(), Error> {
    let stats = d.stats()?;
    for (reason, c) in [("decapsulated", stats.decapsulated), ("passed", stats.passed)] {
        s.push_counter(Id::DECAP_PACKETS, Id::DECAP_BYTES, [pin.clone(), reason.into()], c);
    }
    s.push(Id::DECAP_LOCALS, [pin.clone()], d.locals().len() as u64);
    Ok(())
}
