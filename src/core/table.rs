//! One chained-bucket hash table, written once for every slot layout the
//! data plane reads (the filter's IPv4 host buckets and IPv6 entry buckets).
//!
//! A key's home is `mix32(hash) & mask`; a bucket whose overflow bit is set
//! continues into the next one, up to `MAX_PROBES` buckets. A slot holds a
//! key and a code: 0 means "none", anything else is the key's value.
//!
//! The table is edited in place while the data plane reads it, with no
//! lock. A reader reads a slot's code first and its key after (v4: the
//! bucket's code word, then each address; v6: each entry's `len_code`, then
//! its address words), so the write order below is what keeps every lookup
//! correct while a writer runs:
//!
//! - A key is written into a slot while the slot's code is 0, and made
//!   visible by one store of its code, after the key (`Store::publish`).
//! - A retired slot keeps its key (a tombstone) and is reused only by that
//!   same key: a reader that read a live code can then never find another
//!   key beside it. A layout whose tombstone of some key looks like a slot
//!   never used (v4's `0.0.0.0`) refuses to retire that key in a shared
//!   table ([`TableError::Unpatchable`]); the caller rebuilds instead.
//! - A chain is extended end first: the new slot is filled and published,
//!   then the buckets before it are linked from the new end back to the old
//!   one, so a reader reaches the new slot only once the whole chain leads
//!   there.
//!
//! Readers therefore see every key with its old value or its new one, never
//! another key's; the tests at the end check it after every single store of
//! random edit sequences, for a test layout here and for each real layout
//! in its own module.

use std::sync::atomic::{fence, Ordering};

use bytemuck::Pod;

use crate::core::hash::mix32;
use crate::core::mmap::MappedArray;

/// How one bucket type lays out its slots. Buckets are read and written as
/// 32-bit words (`word` indexes the bucket's `u32`s).
pub(crate) trait Layout: Pod {
    /// What a slot is looked up by.
    type Key: Copy + Eq + std::fmt::Debug;
    /// Slots per bucket.
    const SLOTS: usize;
    /// The longest chain a reader follows, in buckets.
    const MAX_PROBES: u32;
    /// The word holding the bucket's overflow bit.
    const OVERFLOW_WORD: usize;
    /// The overflow bit: a later bucket holds keys whose chain passes here.
    const OVERFLOW_BIT: u32;

    /// The key slot `slot` holds, live or retired; `None` for a slot never used.
    fn key(&self, slot: usize) -> Option<Self::Key>;
    /// The slot's code: 0 when it holds no value (never used, or retired).
    fn code(&self, slot: usize) -> u32;
    /// The stores that write `key` into a never-used `slot`, its code still 0.
    fn write_key(slot: usize, key: &Self::Key, store: &mut dyn FnMut(usize, u32));
    /// The one store, `(word, value)`, that sets `slot`'s code (0 retires it).
    fn code_word(&self, slot: usize, key: &Self::Key, code: u32) -> (usize, u32);
    /// Whether `key`'s tombstone can be told from a slot never used (only
    /// then may the key be retired in place while readers run).
    fn tombstone_visible(_key: &Self::Key) -> bool {
        true
    }
    /// The slot of its home bucket a key of chain hash `hash` goes in when
    /// that slot was never used, for a lookup that judges that slot first;
    /// `None`: the first slot never used on the chain.
    fn home_slot(_hash: u32) -> Option<usize> {
        None
    }
}

/// Where a table lives: a `Vec` being built, or a live map readers share.
pub(crate) trait Store<B> {
    /// Whether the data plane reads this table while it is written.
    const SHARED: bool;
    /// Number of buckets (a power of two).
    fn len(&self) -> usize;
    fn read(&self, index: usize) -> B;
    /// A store that readers need not see before the next `publish`.
    fn write(&mut self, index: usize, word: usize, value: u32);
    /// A store that readers see no earlier than every store before it.
    fn publish(&mut self, index: usize, word: usize, value: u32);
}

/// Why an edit could not be made in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableError {
    /// No free slot within `MAX_PROBES` buckets of the key's home.
    Full,
    /// Retiring the key in place could hand its slot to another key while
    /// readers run (see [`Layout::tombstone_visible`]): rebuild instead.
    Unpatchable,
}

fn word<B: Pod>(bucket: &B, word: usize) -> u32 {
    bytemuck::cast_slice::<B, u32>(std::slice::from_ref(bucket))[word]
}

impl<B: Pod> Store<B> for Vec<B> {
    const SHARED: bool = false;
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn read(&self, index: usize) -> B {
        self[index]
    }
    fn write(&mut self, index: usize, word: usize, value: u32) {
        bytemuck::cast_slice_mut::<B, u32>(std::slice::from_mut(&mut self[index]))[word] = value;
    }
    fn publish(&mut self, index: usize, word: usize, value: u32) {
        self.write(index, word, value);
    }
}

/// A live table in a mapped array the data plane reads.
pub(crate) struct Live<'a, B>(pub &'a MappedArray<B>);

impl<B: Pod> Store<B> for Live<'_, B> {
    const SHARED: bool = true;
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read(&self, index: usize) -> B {
        self.0.get(index)
    }
    fn write(&mut self, index: usize, word: usize, value: u32) {
        self.0.atomic_u32(index, 4 * word).store(value, Ordering::Relaxed);
    }
    fn publish(&mut self, index: usize, word: usize, value: u32) {
        // The stores before are visible no later than this one.
        fence(Ordering::Release);
        self.0.atomic_u32(index, 4 * word).store(value, Ordering::Release);
    }
}

/// The buckets of `hash`'s chain, in the order a reader visits them.
struct Chain<'s, B, S: ?Sized> {
    store: &'s S,
    mask: u32,
    next: Option<u32>,
    probes: u32,
    _bucket: std::marker::PhantomData<B>,
}

impl<B: Layout, S: Store<B> + ?Sized> Iterator for Chain<'_, B, S> {
    type Item = (u32, B);
    fn next(&mut self) -> Option<(u32, B)> {
        let idx = self.next.take()?;
        let bucket = self.store.read(idx as usize);
        self.probes += 1;
        if self.probes < B::MAX_PROBES && word(&bucket, B::OVERFLOW_WORD) & B::OVERFLOW_BIT != 0 {
            self.next = Some((idx + 1) & self.mask);
        }
        Some((idx, bucket))
    }
}

fn chain<B: Layout, S: Store<B> + ?Sized>(store: &S, start: u32) -> Chain<'_, B, S> {
    let mask = (store.len() - 1) as u32;
    Chain { store, mask, next: Some(start & mask), probes: 0, _bucket: std::marker::PhantomData }
}

/// The home bucket of chain hash `hash`: where its chain starts.
pub(crate) fn home<B, S: Store<B> + ?Sized>(store: &S, hash: u32) -> u32 {
    mix32(hash) & (store.len() - 1) as u32
}

/// The buckets a reader walks from `hash`'s home, in order.
pub(crate) fn walk<B: Layout, S: Store<B> + ?Sized>(store: &S, hash: u32) -> impl Iterator<Item = B> + '_ {
    chain(store, home(store, hash)).map(|(_, b)| b)
}

/// The code stored for `key`, 0 when absent: what the data plane's lookup
/// returns. `hash` is what the data plane mixes into the home bucket.
#[cfg(test)]
pub(crate) fn get<B: Layout, S: Store<B> + ?Sized>(store: &S, hash: u32, key: &B::Key) -> u32 {
    chain(store, home(store, hash))
        .find_map(|(_, b)| (0..B::SLOTS).find(|&s| b.key(s) == Some(*key) && b.code(s) != 0).map(|s| b.code(s)))
        .unwrap_or(0)
}

fn publish_code<B: Layout, S: Store<B> + ?Sized>(store: &mut S, idx: u32, slot: usize, key: &B::Key, code: u32) {
    let (w, v) = store.read(idx as usize).code_word(slot, key, code);
    store.publish(idx as usize, w, v);
}

fn fill<B: Layout, S: Store<B> + ?Sized>(store: &mut S, idx: u32, slot: usize, key: &B::Key, code: u32) {
    B::write_key(slot, key, &mut |w, v| store.write(idx as usize, w, v));
    publish_code(store, idx, slot, key, code);
}

/// Stores `code` (not 0) for `key`: in place where the key is, live or
/// retired; else in its home slot ([`Layout::home_slot`]) if never used;
/// else in the first slot never used on its chain; else in one past the
/// chain's end, which is then linked in end first.
pub(crate) fn set<B: Layout, S: Store<B> + ?Sized>(
    store: &mut S,
    hash: u32,
    key: &B::Key,
    code: u32,
) -> Result<(), TableError> {
    debug_assert_ne!(code, 0, "code 0 means no value: use clear");
    let home = home(store, hash);
    let home_slot = B::home_slot(hash);
    let mut own = None;
    let mut free = None;
    let mut last = home;
    for (idx, b) in chain(store, home) {
        for s in 0..B::SLOTS {
            match b.key(s) {
                Some(k) if k == *key && b.code(s) != 0 => {
                    if b.code(s) != code {
                        publish_code(store, idx, s, key, code);
                    }
                    return Ok(());
                }
                Some(k) if k == *key => {
                    own.get_or_insert((idx, s));
                }
                // The home bucket is the chain's first: any free slot
                // found before this one is in it too.
                None if idx == home && home_slot == Some(s) => {
                    free = Some((idx, s));
                }
                None => {
                    free.get_or_insert((idx, s));
                }
                Some(_) => {}
            }
        }
        last = idx;
    }
    if let Some((idx, s)) = own {
        publish_code(store, idx, s, key, code);
        return Ok(());
    }
    if let Some((idx, s)) = free {
        fill(store, idx, s, key, code);
        return Ok(());
    }
    // Extend the chain: the nearest never-used slot after its end...
    let mask = (store.len() - 1) as u32;
    let used = (last.wrapping_sub(home) & mask) + 1;
    let mut target = last;
    let mut slot = None;
    for _ in used..B::MAX_PROBES {
        target = (target + 1) & mask;
        let b = store.read(target as usize);
        if let Some(s) = (0..B::SLOTS).find(|&s| b.key(s).is_none()) {
            slot = Some(s);
            break;
        }
    }
    let s = slot.ok_or(TableError::Full)?;
    fill(store, target, s, key, code);
    // ...then the buckets in between are linked, the old end last.
    let mut link = target;
    while link != last {
        link = link.wrapping_sub(1) & mask;
        let meta = word(&store.read(link as usize), B::OVERFLOW_WORD);
        if meta & B::OVERFLOW_BIT == 0 {
            store.publish(link as usize, B::OVERFLOW_WORD, meta | B::OVERFLOW_BIT);
        }
    }
    Ok(())
}

/// Stores `code` (not 0) for `key` in its home slot ([`Layout::home_slot`])
/// if that slot was never used (the key must not be in the table yet).
/// Returns whether it did: a bulk build places the keys a lookup judges
/// first this way, before the others take the slots left.
pub(crate) fn set_in_home_slot<B: Layout, S: Store<B> + ?Sized>(
    store: &mut S,
    hash: u32,
    key: &B::Key,
    code: u32,
) -> bool {
    let idx = home(store, hash);
    match B::home_slot(hash) {
        Some(s) if store.read(idx as usize).key(s).is_none() => {
            fill(store, idx, s, key, code);
            true
        }
        _ => false,
    }
}

/// Retires `key`, leaving its slot as a tombstone. Returns whether it was
/// there.
pub(crate) fn clear<B: Layout, S: Store<B> + ?Sized>(
    store: &mut S,
    hash: u32,
    key: &B::Key,
) -> Result<bool, TableError> {
    let found = chain(store, home(store, hash))
        .find_map(|(idx, b)| (0..B::SLOTS).find(|&s| b.key(s) == Some(*key) && b.code(s) != 0).map(|s| (idx, s)));
    let Some((idx, s)) = found else {
        return Ok(false);
    };
    if S::SHARED && !B::tombstone_visible(key) {
        return Err(TableError::Unpatchable);
    }
    publish_code(store, idx, s, key, 0);
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    //! The write-order tests: a store that records every single store and,
    //! after each one, checks what a reader racing the writer could see.

    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// What [`check_write_order`] exercised, so callers can assert their
    /// edit sequences reached the interesting cases.
    #[derive(Debug, Default)]
    pub(crate) struct Seen {
        pub sets: usize,
        pub clears: usize,
        pub extensions: usize,
        pub tombstones_reused: usize,
        pub full: usize,
        pub unpatchable: usize,
        pub stores: usize,
    }

    struct Recorder<B: Layout> {
        buckets: Vec<B>,
        /// Every key with its hash and its value before the current edit.
        keys: Vec<(B::Key, u32, u32)>,
        /// The key being edited, its hash and its value after the edit.
        editing: Option<(B::Key, u32, u32)>,
        /// Each slot that ever held a code, and the key it held then.
        owner: HashMap<(usize, usize), B::Key>,
        seen: Seen,
    }

    impl<B: Layout> Recorder<B> {
        fn check(&mut self, index: usize, word: usize, before: u32, value: u32) {
            self.seen.stores += 1;
            let bucket = self.buckets[index];
            // Tombstones are reused only by their own key: a slot that ever
            // had a code keeps its key for good.
            for s in 0..B::SLOTS {
                if bucket.code(s) != 0 {
                    let key = bucket.key(s).expect("a slot with a code holds a key");
                    self.owner.entry((index, s)).or_insert(key);
                }
                if let Some(owner) = self.owner.get(&(index, s)) {
                    assert_eq!(bucket.key(s), Some(*owner), "bucket {index} slot {s} changed hands");
                }
            }
            // Every key reads its old value or, for the key being edited,
            // its new one: never another key's.
            for &(key, hash, old) in &self.keys {
                let got = get(self, hash, &key);
                let new = self.editing.filter(|e| e.0 == key).map(|e| e.2);
                assert!(got == old || Some(got) == new, "{key:?} read {got}, expected {old} or {new:?}");
            }
            // Chains grow end first: when a bucket is linked, the chain past
            // it already leads to the key being added.
            let linked = word == B::OVERFLOW_WORD && value & B::OVERFLOW_BIT != 0 && before & B::OVERFLOW_BIT == 0;
            if let (true, Some((key, _, new))) = (linked, self.editing) {
                let next = (index + 1) & (self.buckets.len() - 1);
                let reached = chain(self, next as u32)
                    .any(|(_, b)| (0..B::SLOTS).any(|s| b.key(s) == Some(key) && b.code(s) == new));
                assert!(reached, "bucket {index} linked before the chain beyond it led to {key:?}");
                self.seen.extensions += 1;
            }
        }
    }

    impl<B: Layout> Store<B> for Recorder<B> {
        const SHARED: bool = true;
        fn len(&self) -> usize {
            self.buckets.len()
        }
        fn read(&self, index: usize) -> B {
            self.buckets[index]
        }
        fn write(&mut self, index: usize, word: usize, value: u32) {
            let before = super::word(&self.buckets[index], word);
            self.buckets.write(index, word, value);
            self.check(index, word, before, value);
        }
        fn publish(&mut self, index: usize, word: usize, value: u32) {
            self.write(index, word, value);
        }
    }

    /// Applies `edits` random sets (of codes from `codes`) and clears of
    /// `keys` (key, hash) to a table of `buckets` buckets, checking after
    /// every single store that readers see each key with its old or its new
    /// value, that no slot that held a code ever changes key, and that
    /// chains are linked end first; and after every edit that the table
    /// holds exactly what was set.
    pub(crate) fn check_write_order<B: Layout>(
        buckets: usize,
        keys: &[(B::Key, u32)],
        codes: &[u32],
        edits: usize,
        seed: u64,
    ) -> Seen {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rec = Recorder::<B> {
            buckets: vec![<B as bytemuck::Zeroable>::zeroed(); buckets],
            keys: keys.iter().map(|&(k, h)| (k, h, 0)).collect(),
            editing: None,
            owner: HashMap::new(),
            seen: Seen::default(),
        };
        for _ in 0..edits {
            let i = rng.random_range(0..keys.len());
            let (key, hash, old) = rec.keys[i];
            let clear_it = old != 0 && rng.random_bool(0.4);
            let new = if clear_it { 0 } else { codes[rng.random_range(0..codes.len())] };
            let own_tombstone =
                old == 0 && rec.owner.iter().any(|(&(b, s), k)| *k == key && rec.buckets[b].key(s) == Some(key));
            rec.editing = Some((key, hash, new));
            let result = if clear_it {
                rec.seen.clears += 1;
                clear(&mut rec, hash, &key).map(drop)
            } else {
                rec.seen.sets += 1;
                set(&mut rec, hash, &key, new)
            };
            let now = match result {
                Ok(()) => {
                    rec.seen.tombstones_reused += usize::from(own_tombstone);
                    new
                }
                Err(TableError::Full) => {
                    rec.seen.full += 1;
                    old
                }
                Err(TableError::Unpatchable) => {
                    rec.seen.unpatchable += 1;
                    old
                }
            };
            rec.editing = None;
            rec.keys[i].2 = now;
            for &(k, h, v) in &rec.keys {
                assert_eq!(get(&rec, h, &k), v, "{k:?} after the edit");
            }
        }
        rec.seen
    }

    /// A test layout: two slots per bucket, keys stored plus one (0 marks a
    /// slot never used), their 4-bit codes and the overflow bit in one word,
    /// and short chains, so that chains fill, extend and run full often.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Pair {
        keys: [u32; 2],
        meta: u32,
    }

    impl Layout for Pair {
        type Key = u32;
        const SLOTS: usize = 2;
        const MAX_PROBES: u32 = 4;
        const OVERFLOW_WORD: usize = 2;
        const OVERFLOW_BIT: u32 = 1 << 31;
        fn key(&self, slot: usize) -> Option<u32> {
            self.keys[slot].checked_sub(1)
        }
        fn code(&self, slot: usize) -> u32 {
            (self.meta >> (4 * slot)) & 0xF
        }
        fn write_key(slot: usize, key: &u32, store: &mut dyn FnMut(usize, u32)) {
            store(slot, key + 1);
        }
        fn code_word(&self, slot: usize, _key: &u32, code: u32) -> (usize, u32) {
            (2, (self.meta & !(0xF << (4 * slot))) | (code << (4 * slot)))
        }
    }

    #[test]
    fn readers_see_old_or_new_values_after_every_store() {
        for seed in 0..20 {
            // 24 keys over 16 buckets, homes crowded into a few of them.
            let keys: Vec<(u32, u32)> = (0..24u32).map(|k| (k, k % 5)).collect();
            let seen = check_write_order::<Pair>(16, &keys, &[1, 2, 3, 9, 15], 600, seed);
            assert!(seen.extensions > 0 && seen.tombstones_reused > 0 && seen.full > 0, "{seen:?}");
        }
    }

    #[test]
    fn a_full_chain_reports_full_and_changes_nothing() {
        let mut t = vec![<Pair as bytemuck::Zeroable>::zeroed(); 16];
        // Home bucket 0 for all: 2 slots x 4 probes.
        let same_home: Vec<u32> = (0u32..).filter(|&h| mix32(h) & 15 == 0).take(9).collect();
        for (k, &h) in same_home[..8].iter().enumerate() {
            set(&mut t, h, &(k as u32), 1).unwrap();
        }
        let before = t.clone();
        assert_eq!(set(&mut t, same_home[8], &8, 1), Err(TableError::Full));
        assert_eq!(bytemuck::cast_slice::<Pair, u8>(&t), bytemuck::cast_slice::<Pair, u8>(&before));
        // A tombstone is reused by its own key only.
        assert_eq!(clear(&mut t, same_home[0], &0), Ok(true));
        assert_eq!(get(&t, same_home[0], &0), 0);
        assert_eq!(set(&mut t, same_home[8], &8, 1), Err(TableError::Full));
        set(&mut t, same_home[0], &0, 7).unwrap();
        assert_eq!(get(&t, same_home[0], &0), 7);
        assert_eq!(clear(&mut t, same_home[8], &8), Ok(false));
    }
}
