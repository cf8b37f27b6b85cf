//! Which filters pass their packets on to a program (`Filter::set_next`),
//! found in the kernel's own lists rather than in any pin directory: every
//! loaded program named `xdpg_filter`, its `xdpg_next` program array, and
//! the XDP links that run it. So a load balancer knows it is chained
//! behind a filter whichever process, tool or configuration file chained
//! it, and its health, `detach` and `upgrade` can take that into account.
//!
//! Cost: one pass over the kernel's programs (with their map ids) and,
//! when a filter chains the program, one over its links, a look in the
//! pin directories the caller knows (a bpffs mounted elsewhere) and a
//! search of `/sys/fs/bpf` for the filter's pins, and a read of the
//! filter's link pins (its lost attachments); on demand (`health`, `status`,
//! `detach`, `upgrade`), never per packet. The whole `xdpguard-lb status
//! --exit-code` process took 3.9-4.0 ms unchained and 4.0-4.2 ms chained
//! (Intel Xeon, 50 runs each, a handful of programs loaded): within the
//! noise of a process start.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::query::{LinkInfoIter, LinkTypeInfo, ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::{MapCore, MapHandle};

use crate::core::attach::Attachment;
use crate::core::layout::names;
use crate::core::maps::{ProgArray, TypedMap};
use crate::core::pin::PinDir;
use crate::core::pinned::ProgramKind;
use crate::core::program;
use crate::core::sys;

/// A filter program whose next program is the one asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedFrom {
    /// The filter program's kernel id.
    pub program_id: u32,
    /// The interfaces (indexes, in the namespace each link was made in)
    /// whose XDP link runs that filter: empty when it is attached nowhere.
    pub ifindexes: Vec<u32>,
    /// The filter's pin directory, when it is pinned under
    /// `/sys/fs/bpf` (searched four levels deep) or in a directory the
    /// caller named ([`LoadBalancer::chained_from_near`](crate::LoadBalancer::chained_from_near)).
    pub pin: Option<PathBuf>,
    /// The filter's lost attachments: interfaces it was attached to that
    /// were deleted (or the kernel otherwise took it off), as its pin
    /// directory records them (empty when its pin directory was not
    /// found). What those interfaces receive no longer reaches the
    /// program chained behind it: a load balancer's NAT replies there go
    /// untranslated.
    pub lost: Vec<Attachment>,
    /// The filter's `xdpg_next` program array's kernel id.
    pub(crate) next_map_id: u32,
}

impl ChainedFrom {
    /// The filter as messages name it: `the filter pinned at DIR`, else
    /// `filter program N`.
    pub fn filter_name(&self) -> String {
        match &self.pin {
            Some(p) => format!("the filter pinned at {}", p.display()),
            None => format!("filter program {}", self.program_id),
        }
    }

    /// What stops its chaining: `xdpguard next none --pin DIR`, else the
    /// API call or, for a filter pinned where it was not found, the
    /// command on its pin directory.
    pub fn unchain_hint(&self) -> String {
        match &self.pin {
            Some(p) => format!("`xdpguard next none --pin {}`", p.display()),
            None => format!(
                "`xdpguard next none --pin DIR` on its pin directory, or `Filter::clear_next` on filter program {} \
                 in the process that holds it",
                self.program_id
            ),
        }
    }
}

/// Every filter whose `xdpg_next` slot holds program `program_id`, one
/// entry per `xdpg_next` map: a filter's older program that a process
/// still holds open after an upgrade shares its map, and is the same
/// filter (its interfaces and pin merged in).
pub(crate) fn chained_into(program_id: u32) -> Vec<ChainedFrom> {
    chained_into_near(program_id, &[])
}

/// As [`chained_into`], looking for the filters' pins in `near` (pin
/// directories, or directories holding them one level down) before
/// `/sys/fs/bpf`.
pub(crate) fn chained_into_near(program_id: u32, near: &[&Path]) -> Vec<ChainedFrom> {
    let filter_name = std::ffi::OsStr::new(names::XDPG_FILTER);
    // (program, its xdpg_next map) for each filter program chaining it.
    let programs: Vec<(u32, u32)> =
        ProgInfoIter::with_query_opts(ProgInfoQueryOptions::default().include_map_ids(true))
            .filter(|p| p.name == filter_name)
            .filter_map(|p| Some((p.id, p.map_ids.iter().copied().find(|&id| next_of(id) == Some(program_id))?)))
            .collect();
    if programs.is_empty() {
        return Vec::new();
    }
    let mut links: Vec<(u32, u32)> = Vec::new();
    for link in LinkInfoIter::default() {
        // A link detached (ifindex 0) lingers until the kernel frees it.
        if let LinkTypeInfo::Xdp(xdp) = &link.info {
            if xdp.ifindex != 0 && programs.iter().any(|&(p, _)| p == link.prog_id) {
                links.push((link.prog_id, xdp.ifindex));
            }
        }
    }
    let mut found: Vec<ChainedFrom> = Vec::new();
    for &(program, map) in &programs {
        let ifindexes = links.iter().filter(|&&(p, _)| p == program).map(|&(_, i)| i);
        let pin = pin_near(names::XDPG_FILTER, program, near);
        match found.iter_mut().find(|c| c.next_map_id == map) {
            Some(c) => {
                c.ifindexes.extend(ifindexes);
                // The pinned (current) program names the filter.
                if c.pin.is_none() && pin.is_some() {
                    (c.pin, c.program_id) = (pin, program);
                }
            }
            None => found.push(ChainedFrom {
                program_id: program,
                ifindexes: ifindexes.collect(),
                pin,
                lost: Vec::new(),
                next_map_id: map,
            }),
        }
    }
    for c in &mut found {
        c.lost = c.pin.as_deref().map(lost_links).unwrap_or_default();
    }
    found
}

/// The lost attachments of the filter pinned in `dir`, read as the
/// filter's own handle reads them ([`program::scan_links`]): none when the
/// directory or a link's info cannot be read (not proof of death).
fn lost_links(dir: &Path) -> Vec<Attachment> {
    let Ok(pins) = PinDir::open(dir, <crate::filter::FilterKind as ProgramKind>::KIND) else { return Vec::new() };
    let mut lost = program::scan_links(&pins, &[]).map(|(_, lost)| lost).unwrap_or_default();
    lost.sort_by(|a, b| a.interface.cmp(&b.interface));
    lost
}

/// The pin directory under `/sys/fs/bpf` (searched four levels deep) of
/// the xdpguard program `program_id`, whose program is pinned as `file`
/// (`xdpg_filter`, `xdpg_lb`, `xdpg_decap`).
pub(crate) fn pin_of(file: &str, program_id: u32) -> Option<PathBuf> {
    pin_near(file, program_id, &[])
}

/// As [`pin_of`], looking in `near` first: each a pin directory, or a
/// directory holding pin directories one level down (the pins of a bpffs
/// mounted elsewhere than `/sys/fs/bpf`, which the search does not reach).
pub(crate) fn pin_near(file: &str, program_id: u32, near: &[&Path]) -> Option<PathBuf> {
    fn search(dir: &Path, file: &str, program_id: u32, depth: u32) -> Option<PathBuf> {
        let id = sys::obj_get(&dir.join(file)).ok().and_then(|fd| sys::prog_id(fd.as_fd()).ok());
        if id == Some(program_id) {
            return Some(dir.to_path_buf());
        }
        if depth == 0 {
            return None;
        }
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .find_map(|e| search(&e.path(), file, program_id, depth - 1))
    }
    near.iter()
        .find_map(|dir| search(dir, file, program_id, 1))
        .or_else(|| search(Path::new("/sys/fs/bpf"), file, program_id, 4))
}

/// The program in slot 0 of map `map_id` when it is a filter's `xdpg_next`.
fn next_of(map_id: u32) -> Option<u32> {
    let handle = MapHandle::from_map_id(map_id).ok()?;
    if handle.name() != names::XDPG_NEXT {
        return None;
    }
    ProgArray::new(names::XDPG_NEXT, handle).ok()?.get(0).ok()?
}

/// Puts `program` in the `xdpg_next` slot of each filter of `chains`, in
/// place of what it held (one atomic slot write each); returns the
/// filters whose slot refused it (they keep the program they had).
pub(crate) fn rechain(chains: &[ChainedFrom], program: BorrowedFd<'_>) -> Vec<(u32, std::io::Error)> {
    let one = |c: &ChainedFrom| -> std::io::Result<()> {
        let handle = MapHandle::from_map_id(c.next_map_id).map_err(crate::core::maps::io_from_libbpf)?;
        ProgArray::new(names::XDPG_NEXT, handle)?.set(0, program)
    };
    chains.iter().filter_map(|c| one(c).err().map(|e| (c.program_id, e))).collect()
}
