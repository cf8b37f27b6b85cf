//! What the running kernel supports, for tests whose expectations depend
//! on it (and that must say so rather than assume one kernel's answer).

/// Whether the kernel loads `BPF_PROG_TYPE_EXT` (freplace) programs, the
/// type a libxdp dispatcher's components are: libxdp (xdp-tools'
/// `xdp-filter`, `xdp-loader`) builds a dispatcher where it does, and falls
/// back to one plain program per interface where it does not. The same
/// probe (libbpf's, which loads a minimal EXT program) as the note
/// [`AttachError::AlreadyAttached`](crate::AttachError::AlreadyAttached)
/// gives about a libxdp program. `None` when the probe fails for another
/// reason (then no note speaks of freplace).
pub fn loads_freplace() -> Option<bool> {
    crate::core::sys::kernel_loads_freplace()
}
