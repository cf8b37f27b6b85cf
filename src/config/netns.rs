//! Running a section's steps inside its network namespace (`netns`).
//!
//! Only the calling thread moves (`setns(2)` with `CLONE_NEWNET` is per
//! thread) and only its network namespace: the mount namespace, and so
//! bpffs and the pins, stay as they are (unlike `ip netns exec`, which
//! remounts /sys). Interfaces are resolved, attached and read back in the
//! namespace entered; the guard returns the thread to where it was.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// While alive, the calling thread is in the named network namespace.
pub(crate) struct Entered {
    home: Option<File>,
}

impl Entered {
    /// Enters `/run/netns/NAME` (nothing for `None`).
    pub(crate) fn enter(name: Option<&str>) -> Result<Self, String> {
        let Some(name) = name else { return Ok(Self { home: None }) };
        let path = Path::new("/run/netns").join(name);
        let target = File::open(&path).map_err(|e| {
            format!(
                "network namespace `{name}`: cannot open {}: {e} (create it with `ip netns add {name}`)",
                path.display()
            )
        })?;
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("cannot open this thread's network namespace: {e}"))?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering network namespace `{name}`: {e}"))?;
        Ok(Self { home: Some(home) })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            // Going back to a namespace this thread was in cannot fail for
            // lack of privileges; if it did, staying would be wrong.
            setns(&home, CloneFlags::CLONE_NEWNET).expect("returning to the caller's network namespace");
        }
    }
}
