//! Crash points, for tests of what a reopen repairs: a process whose
//! environment names a point (`XDPG_CRASH_AT=NAME`) aborts when it gets
//! there, as a `kill -9` would (no destructor runs; the kernel releases its
//! locks). Compiled in with the `testing` feature only.
//!
//! Points: `lists.staged` (a bulk list edit: its entry store written and
//! its tables staged, not yet switched in) and `lists.switched` (switched
//! in, the spare IPv6 table not yet brought level); `filter.pinned` (a
//! pinned filter's creation: its maps and program pinned, its guard stage
//! not yet) and `filter.guard_pinned` (the guard pinned too, the creation
//! not yet marked finished).

/// The environment variable naming the point to abort at.
pub const CRASH_AT: &str = "XDPG_CRASH_AT";

/// Aborts the process if [`CRASH_AT`] names `point`.
pub(crate) fn point(point: &str) {
    if std::env::var(CRASH_AT).is_ok_and(|at| at == point) {
        std::process::abort();
    }
}
