//! The v6 entry table the data plane probes: three entries per cache-line
//! bucket, open addressing with overflow chains (so a probe costs one cache
//! miss, where a kernel hash map costs two: bucket head, then element).
//!
//! Like the v4 host buckets, a retired slot keeps its key (a tombstone) and
//! is reused only for that same key, so a reader racing a writer can never
//! pair one key with another key's code.

use std::sync::atomic::{fence, Ordering};

use crate::core::hash::mix32;
use crate::core::layout::consts::*;
use crate::filter::layout::{xdpg_v6_bucket, xdpg_v6_entry};
use crate::core::mmap::MappedArray;
use crate::filter::v4::TableFull;

const SLOTS: usize = XDPG_V6_BUCKET_SLOTS as usize;
const OVERFLOW: u32 = XDPG_V6_BUCKET_OVERFLOW;
const ENTRY_SIZE: usize = size_of::<xdpg_v6_entry>();
const LEN_CODE_OFFSET: usize = std::mem::offset_of!(xdpg_v6_entry, len_code);
const META_OFFSET: usize = std::mem::offset_of!(xdpg_v6_bucket, meta);

/// A masked key: address words as the kernel stores them, and the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub words: [u32; 4],
    pub len: u8,
}

fn len_code(len: u8, code: u8) -> u32 {
    (u32::from(len) + 1) | (u32::from(code) << 8)
}

fn slot_matches(e: &xdpg_v6_entry, key: &Key) -> bool {
    e.len_code & 0xFF == u32::from(key.len) + 1 && e.addr == key.words
}

fn slot_code(e: &xdpg_v6_entry) -> u8 {
    (e.len_code >> 8) as u8
}

fn never_used(e: &xdpg_v6_entry) -> bool {
    e.len_code & 0xFF == 0
}

/// Where bucket writes go: a `Vec` while building, a mapped table when live.
pub(crate) trait V6Store {
    fn bucket_count(&self) -> usize;
    fn read(&self, index: usize) -> xdpg_v6_bucket;
    /// Writes a never-used slot's key with code 0 (still invisible).
    fn write_key(&mut self, index: usize, slot: usize, key: &Key);
    /// Publishes, changes or retires a slot's code with one store.
    fn write_len_code(&mut self, index: usize, slot: usize, value: u32);
    fn write_meta(&mut self, index: usize, meta: u32);
}

impl V6Store for Vec<xdpg_v6_bucket> {
    fn bucket_count(&self) -> usize {
        self.len()
    }
    fn read(&self, index: usize) -> xdpg_v6_bucket {
        self[index]
    }
    fn write_key(&mut self, index: usize, slot: usize, key: &Key) {
        self[index].e[slot] = xdpg_v6_entry { addr: key.words, len_code: len_code(key.len, 0) };
    }
    fn write_len_code(&mut self, index: usize, slot: usize, value: u32) {
        self[index].e[slot].len_code = value;
    }
    fn write_meta(&mut self, index: usize, meta: u32) {
        self[index].meta = meta;
    }
}

/// A live table in a mapped array.
pub(crate) struct LiveV6<'a>(pub &'a MappedArray<xdpg_v6_bucket>);

impl V6Store for LiveV6<'_> {
    fn bucket_count(&self) -> usize {
        self.0.len()
    }
    fn read(&self, index: usize) -> xdpg_v6_bucket {
        self.0.get(index)
    }
    fn write_key(&mut self, index: usize, slot: usize, key: &Key) {
        for (i, w) in key.words.iter().enumerate() {
            self.0.atomic_u32(index, slot * ENTRY_SIZE + 4 * i).store(*w, Ordering::Relaxed);
        }
        self.0.atomic_u32(index, slot * ENTRY_SIZE + LEN_CODE_OFFSET).store(len_code(key.len, 0), Ordering::Relaxed);
    }
    fn write_len_code(&mut self, index: usize, slot: usize, value: u32) {
        // The key stores above are visible no later than the code.
        fence(Ordering::Release);
        self.0.atomic_u32(index, slot * ENTRY_SIZE + LEN_CODE_OFFSET).store(value, Ordering::Release);
    }
    fn write_meta(&mut self, index: usize, meta: u32) {
        fence(Ordering::Release);
        self.0.atomic_u32(index, META_OFFSET).store(meta, Ordering::Release);
    }
}

/// Stores `code` for `key` (a key hash from `hash::v6_key_hash`).
pub(crate) fn set<S: V6Store>(store: &mut S, hash: u32, key: &Key, code: u8) -> Result<(), TableFull> {
    let mask = (store.bucket_count() - 1) as u32;
    let home = mix32(hash) & mask;
    let mut idx = home;
    let mut free: Option<(u32, usize)> = None;
    let mut last = home;
    for _ in 0..XDPG_V6_MAX_PROBES {
        let b = store.read(idx as usize);
        for s in 0..SLOTS {
            let e = &b.e[s];
            if slot_matches(e, key) {
                // Live or a tombstone of this very key: reuse it in place.
                store.write_len_code(idx as usize, s, len_code(key.len, code));
                return Ok(());
            }
            if never_used(e) && free.is_none() {
                free = Some((idx, s));
            }
        }
        last = idx;
        if b.meta & OVERFLOW == 0 {
            break;
        }
        idx = (idx + 1) & mask;
    }
    if let Some((i, s)) = free {
        store.write_key(i as usize, s, key);
        store.write_len_code(i as usize, s, len_code(key.len, code));
        return Ok(());
    }
    // Extend the chain to the nearest never-used slot past its end...
    let used = (last.wrapping_sub(home) & mask) + 1;
    let mut target = last;
    let mut slot = None;
    for _ in used..XDPG_V6_MAX_PROBES {
        target = (target + 1) & mask;
        let b = store.read(target as usize);
        if let Some(s) = (0..SLOTS).find(|&s| never_used(&b.e[s])) {
            slot = Some(s);
            break;
        }
    }
    let s = slot.ok_or(TableFull)?;
    store.write_key(target as usize, s, key);
    store.write_len_code(target as usize, s, len_code(key.len, code));
    // ...then link the buckets in between, the old end last.
    let mut link = target;
    while link != last {
        link = link.wrapping_sub(1) & mask;
        let m = store.read(link as usize).meta;
        if m & OVERFLOW == 0 {
            store.write_meta(link as usize, m | OVERFLOW);
        }
    }
    Ok(())
}

/// Retires `key` (leaving a tombstone), if present.
pub(crate) fn clear<S: V6Store>(store: &mut S, hash: u32, key: &Key) {
    let mask = (store.bucket_count() - 1) as u32;
    let mut idx = mix32(hash) & mask;
    for _ in 0..XDPG_V6_MAX_PROBES {
        let b = store.read(idx as usize);
        for s in 0..SLOTS {
            if slot_matches(&b.e[s], key) && slot_code(&b.e[s]) != 0 {
                store.write_len_code(idx as usize, s, len_code(key.len, 0));
                return;
            }
        }
        if b.meta & OVERFLOW == 0 {
            return;
        }
        idx = (idx + 1) & mask;
    }
}

/// The code stored for `key`, or 0: what the data plane's probe returns.
#[cfg(test)]
pub(crate) fn get<S: V6Store>(store: &S, hash: u32, key: &Key) -> u8 {
    let mask = (store.bucket_count() - 1) as u32;
    let mut idx = mix32(hash) & mask;
    for _ in 0..XDPG_V6_MAX_PROBES {
        let b = store.read(idx as usize);
        if let Some(e) = b.e.iter().find(|e| slot_matches(e, key) && slot_code(e) != 0) {
            return slot_code(e);
        }
        if b.meta & OVERFLOW == 0 {
            break;
        }
        idx = (idx + 1) & mask;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32, len: u8) -> Key {
        Key { words: [0x2001_0db8u32.to_be(), i, 0, 0], len }
    }

    #[test]
    fn set_get_clear_and_tombstones() {
        const PROBES: usize = XDPG_V6_MAX_PROBES as usize;
        // Room beyond the longest chain, so the chain never wraps onto itself.
        let mut t = vec![xdpg_v6_bucket::default(); 4 * PROBES];
        let same_home: Vec<u32> = (0u32..).filter(|&h| mix32(h) as usize & (4 * PROBES - 1) == 5).take(SLOTS * PROBES + 1).collect();
        for (i, &h) in same_home[..SLOTS * PROBES].iter().enumerate() {
            set(&mut t, h, &key(i as u32, 48), 1).unwrap();
        }
        assert_eq!(set(&mut t, same_home[SLOTS * PROBES], &key(999, 48), 1), Err(TableFull));
        for (i, &h) in same_home[..SLOTS * PROBES].iter().enumerate() {
            assert_eq!(get(&t, h, &key(i as u32, 48)), 1);
            assert_eq!(get(&t, h, &key(i as u32, 47)), 0, "the length is part of the key");
        }
        clear(&mut t, same_home[0], &key(0, 48));
        assert_eq!(get(&t, same_home[0], &key(0, 48)), 0);
        // The tombstone is not reused by another key...
        assert_eq!(set(&mut t, same_home[SLOTS * PROBES], &key(999, 48), 1), Err(TableFull));
        // ...but is by the same one.
        set(&mut t, same_home[0], &key(0, 48), 2).unwrap();
        assert_eq!(get(&t, same_home[0], &key(0, 48)), 2);
    }

    #[test]
    fn the_zero_prefix_is_not_an_empty_slot() {
        let mut t = vec![xdpg_v6_bucket::default(); 64];
        let k = Key { words: [0; 4], len: 0 };
        assert_eq!(get(&t, 7, &k), 0);
        set(&mut t, 7, &k, 1).unwrap();
        assert_eq!(get(&t, 7, &k), 1);
    }

    /// A table sized for `capacity` entries (as `Capacity::new` sizes it)
    /// takes that many keys with random hashes, whatever the hash seed: the
    /// probe limit is long enough for the clusters linear probing makes.
    #[test]
    fn a_table_takes_its_full_capacity() {
        for (capacity, seeds) in [(65_536usize, 12u32), (262_144, 4)] {
            let buckets = crate::filter::maps::Capacity::new(1, capacity).v6_buckets;
            for seed in 0..seeds {
                let mut t = vec![xdpg_v6_bucket::default(); buckets];
                let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
                for i in 0..capacity as u32 {
                    // xorshift32: a stand-in for the key hash.
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let k = Key { words: [0x2001_0db8u32.to_be(), i, seed, 0], len: 64 };
                    assert!(set(&mut t, x, &k, 1).is_ok(), "capacity {capacity}, seed {seed}: full after {i}");
                }
            }
        }
    }
}
