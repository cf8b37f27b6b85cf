//! Scratch directories for tests (bpffs pin directories, files under /tmp):
//! a unique name per directory, and removal with everything in it when the
//! guard drops, also when a test panics.
//!
//! Use it from tests with `mod common { pub mod netns; pub mod scratch; }`
//! ([`ScratchDir::bpffs`] mounts bpffs through `netns::ensure_bpffs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<base>/xdpg-test-<pid>-<tag><n>`, removed with its entries on drop. The
/// directory itself is not created: code under test often must create it.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A unique name under `base`. The pid and counter keep names unique
    /// across parallel tests and test binaries; `tag` says whose it is.
    pub fn new(base: impl AsRef<Path>, tag: &str) -> ScratchDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        ScratchDir(base.as_ref().join(format!("xdpg-test-{}-{tag}{n}", std::process::id())))
    }

    /// A unique pin directory under /sys/fs/bpf (mounted first if needed).
    pub fn bpffs(tag: &str) -> ScratchDir {
        xdpguard::testing::netns::ensure_bpffs();
        ScratchDir::new("/sys/fs/bpf", tag)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }

    /// The names of its entries, sorted (none if it does not exist).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Entry by entry, so one that cannot go does not keep the others.
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
