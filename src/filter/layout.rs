//! The filter's kernel/user shared layouts: the skeleton-generated types of
//! `src/bpf/structs.h`, checked here at compile time against the sizes and
//! offsets the C side pins with `_Static_assert`.

#![allow(missing_docs, non_camel_case_types, clippy::all)]

use std::mem::{offset_of, size_of};

use crate::core::layout::{consts, pod};
use crate::core::maps::{config, counter};

/// The filter program's skeleton (`src/bpf/filter.bpf.c`).
pub(crate) mod filter_skel {
    #![allow(unused_imports, unused_qualifications, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/filter.skel.rs"));
}

pub(crate) use filter_skel::types::{
    xdpg_counter, xdpg_filter_config, xdpg_header, xdpg_v4_bucket, xdpg_v4_rule, xdpg_v6_bucket, xdpg_v6_entry,
    xdpg_v6_rule, xdpg_v6_view,
};

/// Verdicts as the tables store them (allow wins over block whatever the
/// prefix lengths), and the list bits of a stored entry.
pub(crate) const PASS: u8 = consts::XDPG_VERDICT_PASS as u8;
pub(crate) const BLOCK: u8 = consts::XDPG_VERDICT_BLOCK as u8;
pub(crate) const ALLOW: u8 = consts::XDPG_VERDICT_ALLOW as u8;
pub(crate) const LIST_BLOCK: u8 = consts::XDPG_LIST_BLOCK as u8;
pub(crate) const LIST_ALLOW: u8 = consts::XDPG_LIST_ALLOW as u8;

pod!(
    xdpg_counter,
    xdpg_filter_config,
    xdpg_header,
    xdpg_v4_bucket,
    xdpg_v4_rule,
    xdpg_v6_bucket,
    xdpg_v6_entry,
    xdpg_v6_rule,
    xdpg_v6_view,
);

config!(xdpg_filter_config, xdpg_header);
counter!(xdpg_counter);

// The same numbers as the _Static_asserts in src/bpf/structs.h and common.h.
const _: () = {
    assert!(size_of::<xdpg_counter>() == 16);
    assert!(size_of::<xdpg_filter_config>() == 56);
    assert!(offset_of!(xdpg_filter_config, tables) == 24);
    assert!(offset_of!(xdpg_filter_config, v6_bucket_mask) == 52);
    assert!(size_of::<xdpg_v4_bucket>() == 64);
    assert!(offset_of!(xdpg_v4_bucket, meta) == 60);
    assert!(size_of::<xdpg_v6_entry>() == 20);
    assert!(offset_of!(xdpg_v6_entry, len_code) == 16);
    assert!(size_of::<xdpg_v6_bucket>() == 64);
    assert!(offset_of!(xdpg_v6_bucket, meta) == 60);
    assert!(size_of::<xdpg_v6_view>() == 144);
    assert!(offset_of!(xdpg_v6_view, lens) == 8);
    assert!(size_of::<xdpg_v4_rule>() == 8);
    assert!(size_of::<xdpg_v6_rule>() == 24);
    assert!(offset_of!(xdpg_v6_rule, prefixlen) == 16);
    assert!(consts::XDPG_V4_BUCKET_SLOTS as usize * 2 <= 30);
    assert!(consts::XDPG_V4_L1_WORDS * consts::XDPG_V4_CELLS_PER_WORD == 1 << 24);
};

#[cfg(test)]
mod tests {
    use crate::core::layout::consts::*;

    #[test]
    fn reasons_are_dense() {
        assert_eq!(XDPG_REASON_PASSED, 0);
        assert_eq!(XDPG_REASON_NON_IP + 1, XDPG_REASON_COUNT);
    }

    #[test]
    fn verdict_codes_fit_two_bits() {
        for code in [XDPG_VERDICT_PASS, XDPG_VERDICT_BLOCK, XDPG_VERDICT_ALLOW, XDPG_HOST_PASS] {
            assert!(code < 4);
        }
        assert_eq!(XDPG_V4_CELL_MIXED & 3, 0, "the mixed bit sits above the verdict bits");
    }
}
