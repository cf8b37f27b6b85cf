//! Memory-mapped `BPF_F_MMAPABLE` array maps: the control plane writes the
//! filter's tables straight into kernel memory, without a syscall per entry.
//! The data plane reads the same memory concurrently, so every access goes
//! through raw pointers (volatile or atomic), never through `&[T]`.

use std::io;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use bytemuck::Pod;
use libbpf_rs::{MapCore, MapHandle};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Accessors for the atomically shared fields of a config struct held in
/// element 0 of `self.cfg` (a [`MappedArray`]): `field: AtomicType => accessor`.
macro_rules! cfg_fields {
    ($cfg:ty; $($field:ident: $atomic:ty => $accessor:ident),* $(,)?) => {
        $(pub(crate) fn $field(&self) -> &$atomic {
            self.cfg.$accessor(0, std::mem::offset_of!($cfg, $field))
        })*
    };
}
pub(crate) use cfg_fields;

/// An array map's values, mapped into this process.
pub(crate) struct MappedArray<T> {
    base: NonNull<T>,
    len: usize,
    map_bytes: usize,
    _values: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; all
// accesses are volatile or atomic and writers are serialised by the caller
// (the filter's edit lock).
unsafe impl<T: Send> Send for MappedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for MappedArray<T> {}

impl<T: Pod> MappedArray<T> {
    /// Maps all of `map`'s values. The value size must be `size_of::<T>()`
    /// and a multiple of 8 (the kernel's element stride).
    pub(crate) fn new(map: &MapHandle) -> io::Result<Self> {
        let value_size = map.value_size() as usize;
        if value_size != size_of::<T>() || value_size % 8 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "map {:?} has {value_size}-byte values, expected {} (mismatched layout)",
                    map.name(),
                    size_of::<T>()
                ),
            ));
        }
        let len = map.max_entries() as usize;
        let page = 4096;
        let map_bytes = (len * value_size).div_ceil(page) * page;
        let size =
            NonZeroUsize::new(map_bytes).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty map"))?;
        // SAFETY: we map a BPF array map fd that was created BPF_F_MMAPABLE;
        // the size is its page-rounded value area, which the kernel allows.
        let ptr = unsafe {
            mmap(None, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, map.as_fd(), 0)
        }
        .map_err(io::Error::from)?;
        Ok(Self { base: ptr.cast(), len, map_bytes, _values: PhantomData })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, index: usize) -> *mut T {
        assert!(index < self.len, "index {index} out of bounds ({})", self.len);
        // SAFETY: index is in bounds of the mapping.
        unsafe { self.base.as_ptr().add(index) }
    }

    /// Reads one value.
    pub(crate) fn get(&self, index: usize) -> T {
        // SAFETY: slot() is in bounds and aligned; T is Pod, so any bytes
        // another writer left are a valid T.
        unsafe { self.slot(index).read_volatile() }
    }

    /// Writes one value. Not atomic as a whole: use only on values the data
    /// plane is not reading, or through the atomic accessors below.
    pub(crate) fn set(&self, index: usize, value: T) {
        // SAFETY: slot() is in bounds and aligned.
        unsafe { self.slot(index).write_volatile(value) }
    }

    /// Copies `values` over the first `values.len()` entries and zeroes the rest.
    pub(crate) fn fill_from(&self, values: &[T]) {
        assert!(values.len() <= self.len);
        let base = self.base.as_ptr();
        // SAFETY: both ranges are in bounds (values.len() <= self.len,
        // asserted) and do not overlap (one is ours, one the mapping).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), base, values.len()) };
        // SAFETY: values.len() <= self.len, so the pointer stays inside the
        // mapping (or one past its last value).
        let rest = unsafe { base.add(values.len()) };
        // SAFETY: the remaining self.len - values.len() values are in bounds,
        // and T is Pod, so zero bytes are a valid T.
        unsafe { std::ptr::write_bytes(rest, 0, self.len - values.len()) };
    }

    /// Copies `values` over entries `start..` and zeroes the rest of
    /// `start..start + len`.
    pub(crate) fn fill_range(&self, start: usize, len: usize, values: &[T]) {
        assert!(values.len() <= len && start.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: start + len <= self.len (asserted), so the pointer stays
        // inside the mapping (or one past its last value).
        let base = unsafe { self.base.as_ptr().add(start) };
        // SAFETY: values.len() <= len entries from base are in bounds, and
        // the ranges do not overlap (one is ours, one the mapping).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), base, values.len()) };
        // SAFETY: values.len() <= len, so the pointer stays in bounds.
        let rest = unsafe { base.add(values.len()) };
        // SAFETY: the remaining len - values.len() values are in bounds, and
        // T is Pod, so zero bytes are a valid T.
        unsafe { std::ptr::write_bytes(rest, 0, len - values.len()) };
    }

    /// The `u32` at `byte_offset` inside value `index`, for single-store updates.
    pub(crate) fn atomic_u32(&self, index: usize, byte_offset: usize) -> &AtomicU32 {
        assert!(byte_offset % 4 == 0 && byte_offset + 4 <= size_of::<T>());
        // SAFETY: byte_offset + 4 <= size_of::<T>() (asserted): the pointer
        // stays inside value `index`.
        let field = unsafe { self.slot(index).byte_add(byte_offset) }.cast::<u32>();
        // SAFETY: in bounds and 4-byte aligned (values are 8-byte aligned,
        // byte_offset is a multiple of 4); the memory lives as long as self.
        unsafe { AtomicU32::from_ptr(field) }
    }

    /// The `u64` at `byte_offset` inside value `index`.
    pub(crate) fn atomic_u64(&self, index: usize, byte_offset: usize) -> &AtomicU64 {
        assert!(byte_offset % 8 == 0 && byte_offset + 8 <= size_of::<T>());
        // SAFETY: byte_offset + 8 <= size_of::<T>() (asserted): the pointer
        // stays inside value `index`.
        let field = unsafe { self.slot(index).byte_add(byte_offset) }.cast::<u64>();
        // SAFETY: in bounds and 8-byte aligned (values are 8-byte aligned,
        // byte_offset is a multiple of 8); lives as long as self.
        unsafe { AtomicU64::from_ptr(field) }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: base/map_bytes are exactly what mmap returned; nothing
        // borrows the mapping past self.
        let _ = unsafe { munmap(self.base.cast(), self.map_bytes) };
    }
}
