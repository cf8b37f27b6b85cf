//! Dropping capabilities from the calling thread, for tests of what a
//! process without some privilege is told (a child process re-run by the
//! test: capabilities dropped are gone for good), shared by
//! tests/filter_errors.rs and tests/faults_lb.rs.
//!
//! Use it with `mod common { pub mod caps; }`.

#![allow(dead_code)]

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops capabilities from the calling thread's effective, permitted and
/// inheritable sets. Capabilities are per thread: what follows on this
/// thread, and the threads it spawns (the library's, to enter a network
/// namespace, among them), runs without them.
pub fn drop_caps(caps: &[u32]) {
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = CapHeader { version: VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: hdr and data are the v3 header and the two-element data array
    // capget expects; both outlive the call.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    for &cap in caps {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective &= !bit;
        data[word].permitted &= !bit;
        data[word].inheritable &= !bit;
    }
    // SAFETY: as above; capset only reads them.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Runs test `test` of this test binary again, in a child process with
/// `env` set (where the test drops capabilities or limits for good), and
/// checks it ran and passed (its checks end by printing `CHILD-DONE`).
/// Returns its standard output.
pub fn rerun_as_child(test: &str, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("CHILD-DONE") && stdout.contains("1 passed"), "child did not run:\n{stdout}\n{stderr}");
    stdout
}

/// Sets RLIMIT_NOFILE's soft limit (the hard one stays), for a child
/// process's tests of running out of file descriptors.
pub fn set_nofile(soft: u64) {
    let mut lim = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid rlimit for getrlimit to fill; it outlives the call.
    assert_eq!(unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = soft.min(lim.rlim_max);
    // SAFETY: setrlimit only reads lim, which outlives the call.
    assert_eq!(unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &lim) }, 0);
}
