//! Running a loaded program on one frame with `BPF_PROG_TEST_RUN`: the
//! kernel executes the real program (with its live maps) and hands back the
//! verdict and the possibly rewritten frame. Nothing is sent anywhere.

use std::time::Duration;

/// An XDP program's return value.
// Exhaustive: the kernel's XDP actions, a fixed ABI, and `Other` takes
// any value it may add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpAction {
    /// `XDP_ABORTED`: a program error.
    Aborted,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`: on to the kernel stack.
    Pass,
    /// `XDP_TX`: back out of the receiving interface.
    Tx,
    /// `XDP_REDIRECT`: out of another interface (or CPU, or socket).
    Redirect,
    /// Anything else.
    Other(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            other => XdpAction::Other(other),
        }
    }
}

/// The outcome of a test run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The program's verdict.
    pub action: XdpAction,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The kernel's average time per run (hot caches: the same frame
    /// repeated measures the best case, not a flood).
    pub duration: Duration,
}
