//! The guard's gate (`xdpg_gate`, `src/bpf/filter_maps.h`): a bit per index
//! key, set when the guard has nothing to do for that key's packets, and
//! whether it is open (a bit of the filter config's `tables` word, which
//! the filter reads for every packet anyway). While it is open the filter
//! passes those packets itself instead of tail-calling the guard.
//!
//! The gate is a filter map (the filter reads it); only the guard's edits
//! write it, under the guard's lock: [`Guard::edit`](super::Guard::edit)
//! closes it first, and opens it with bits computed from the state the
//! edit left. Closed, every packet goes to the guard, as before the gate
//! existed, so a crash mid-edit, a failed edit or pins upgraded from a
//! layout without it (their `tables` bit clear) only cost speed. A bit
//! set while its key had work would skip a rule: the bits are computed
//! from the live half's index itself, and from the SYN guard's ports.
//!
//! Measured (AMD EPYC, BENCHMARKS.md, "Issue 13, seventh session"): per
//! cache-cold clean packet whose key has no rule, the guard's tail call,
//! second parse, config reads and index read cost 34–49 ns; with the gate
//! such a packet costs what it costs without rules. The closed gate costs
//! the filter nothing measurable (a bit of a word it reads anyway: as its
//! own word in the gate map, a cache line of its own, it cost 2–9 ns); the
//! open one, on packets that still go to the guard, 10–20 ns (the guard
//! computes the key again).

use std::sync::atomic::Ordering;

use crate::core::layout::consts::*;
use crate::filter::guard::maps::GuardMaps;
use crate::filter::guard::state::GuardState;
use crate::filter::maps::FilterMaps;

/// Closes the gate: from the next packet on, every packet the lists pass
/// goes to the guard. (An atomic read-modify-write: list edits switch
/// tables in the same word under another lock.)
pub(crate) fn close(filter: &FilterMaps) {
    filter.tables().fetch_and(!XDPG_TABLES_GATE_OPEN, Ordering::SeqCst);
}

/// Whether the gate is open.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) fn is_open(filter: &FilterMaps) -> bool {
    filter.tables().load(Ordering::Acquire) & XDPG_TABLES_GATE_OPEN != 0
}

/// Writes the bits of the guard's live state and opens the gate, unless a
/// timed block may exist (they apply to every key, and the data plane adds
/// them itself while a rule auto-blocks: the limit config's `timed_active`
/// is set then, and cleared only by an edit): then it stays closed.
pub(crate) fn open(filter: &FilterMaps, maps: &GuardMaps, st: &GuardState) {
    if maps.lcfg.get(0).timed_active != 0 {
        return;
    }
    let words = XDPG_GK_WORDS as usize;
    let base = maps.live_half() * words;
    let index: Vec<u64> = (base..base + words).map(|i| maps.idx.get(i)).collect();
    let bits = skip_bits(&index, st.syn.ports.keys().copied());
    filter.gate.fill_from(&bits);
    // The bits are visible no later than the open bit.
    filter.tables().fetch_or(XDPG_TABLES_GATE_OPEN, Ordering::SeqCst);
}

/// The gate's bits for a rule index (`index`: the live half's words, four
/// 16-bit groups a word) and the SYN guard's protected ports: key k's bit
/// set when its group is 0 and it is not the TCP key of a protected port
/// (the guard sends only TCP keys to the SYN guard, `syn_stage`).
fn skip_bits(index: &[u64], syn_ports: impl Iterator<Item = u16>) -> Vec<u64> {
    let mut bits = vec![0u64; XDPG_GATE_WORDS as usize];
    for key in 0..XDPG_GK_KEYS as usize {
        let per = XDPG_GK_PER_WORD as usize;
        let group = (index[key / per] >> ((key % per) * 16)) & 0xFFFF;
        if group == 0 {
            bits[key / 64] |= 1 << (key % 64);
        }
    }
    for port in syn_ports {
        let key = XDPG_GK_TCP as usize + usize::from(port);
        bits[key / 64] &= !(1 << (key % 64));
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(bits: &[u64], key: u32) -> bool {
        bits[key as usize / 64] >> (key % 64) & 1 == 1
    }

    /// An index with a group at `key`.
    fn with_group(index: &mut [u64], key: u32, group: u64) {
        let per = XDPG_GK_PER_WORD;
        index[(key / per) as usize] |= group << ((key % per) * 16);
    }

    #[test]
    fn keys_without_work_are_skipped_and_no_others() {
        let mut index = vec![0u64; XDPG_GK_WORDS as usize];
        let ruled = [XDPG_GK_UDP + 9, XDPG_GK_TCP + 443, XDPG_GK_ICMP + 8, XDPG_GK_OTHER + 47, XDPG_GK_NOKEY_UDP];
        for (i, &k) in ruled.iter().enumerate() {
            with_group(&mut index, k, i as u64 + 1);
        }
        // The highest group number a key can hold, in a word's top lane.
        with_group(&mut index, XDPG_GK_UDP + 11, 0xFFFF);
        let bits = skip_bits(&index, [80u16, 443].into_iter());
        for k in ruled.into_iter().chain([XDPG_GK_UDP + 11, XDPG_GK_TCP + 80]) {
            assert!(!bit(&bits, k), "key {k} has work");
        }
        for k in [XDPG_GK_UDP + 10, XDPG_GK_UDP + 80, XDPG_GK_TCP + 81, XDPG_GK_NOKEY_TCP, XDPG_GK_KEYS - 1] {
            assert!(bit(&bits, k), "key {k} has none");
        }
        let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
        assert_eq!(set, XDPG_GK_KEYS - 7, "every other key, and no bit past the last key");
    }
}
