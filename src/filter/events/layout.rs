//! The drop events' shared layouts (`src/bpf/filter_events_structs.h`, the
//! filter skeleton's types), checked at compile time against the sizes and
//! offsets the C side pins with `_Static_assert`.

use std::mem::{offset_of, size_of};

use crate::core::layout::consts;
use crate::core::maps::summable;
pub(crate) use crate::filter::layout::{xdpg_drop_event, xdpg_event_cpu, xdpg_events_config};

summable!(xdpg_event_cpu { tokens, last_ns, sent, limited, lost });

// The same numbers as the _Static_asserts in src/bpf/filter_events_structs.h.
const _: () = {
    assert!(size_of::<xdpg_drop_event>() == 32 + consts::XDPG_EVENT_SNAP_LEN as usize);
    assert!(offset_of!(xdpg_drop_event, time_ns) == 0);
    assert!(offset_of!(xdpg_drop_event, reason) == 8);
    assert!(offset_of!(xdpg_drop_event, rule) == 12);
    assert!(offset_of!(xdpg_drop_event, ifindex) == 16);
    assert!(offset_of!(xdpg_drop_event, rx_queue) == 20);
    assert!(offset_of!(xdpg_drop_event, len) == 24);
    assert!(offset_of!(xdpg_drop_event, cap_len) == 28);
    assert!(offset_of!(xdpg_drop_event, bytes) == 32);
    assert!(size_of::<xdpg_events_config>() == 8);
    assert!(size_of::<xdpg_event_cpu>() == 40);
    assert!(offset_of!(xdpg_event_cpu, sent) == 16);
    // The ring holds whole events, and is what BPF_MAP_TYPE_RINGBUF accepts.
    assert!(consts::XDPG_EVENT_RING_BYTES.is_power_of_two() && consts::XDPG_EVENT_RING_BYTES % 4096 == 0);
    // A full bucket fits in 64 bits.
    assert!(consts::XDPG_EVENT_MAX_RATE as u64 * consts::XDPG_EVENT_TOKEN as u64 <= u64::MAX / 2);
};
