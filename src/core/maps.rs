//! A BPF object's maps as owned handles, by their stable `xdpg_*` names:
//! duplicated from a freshly loaded object, or reopened from pins. Owning
//! the fds (rather than the skeleton) is what lets one type serve both.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object};

use crate::error::{io_from_libbpf, LoadError, PinError};
use crate::filter::layout::xdpg_counter;
use crate::core::pin::PinDir;

pub(crate) struct MapSet {
    handles: Vec<(&'static str, MapHandle)>,
}

/// Turns a libbpf-rs error into a [`LoadError`] that says what was being done.
pub(crate) fn load_err(op: &str) -> impl FnOnce(libbpf_rs::Error) -> LoadError + '_ {
    move |e| LoadError::Bpf { op: op.to_owned(), source: io_from_libbpf(e) }
}

/// Duplicates the fd of a loaded object's program, so the object (and the
/// skeleton borrowing it) can be dropped.
pub(crate) fn program_fd(object: &Object, name: &str) -> Result<OwnedFd, LoadError> {
    let prog = object.progs().find(|p| p.name() == name).expect("the object defines its program");
    prog.as_fd()
        .try_clone_to_owned()
        .map_err(|source| LoadError::Bpf { op: "duplicating the program fd".into(), source })
}

impl MapSet {
    /// Duplicates the fds of `names` from a loaded object.
    pub(crate) fn from_object(object: &Object, names: &[&'static str]) -> Result<Self, LoadError> {
        let mut handles = Vec::with_capacity(names.len());
        for &name in names {
            let map = object.maps().find(|m| m.name() == name).expect("the object defines every listed map");
            handles.push((name, MapHandle::try_from(&map).map_err(load_err("duplicating map fds"))?));
        }
        Ok(Self { handles })
    }

    /// Opens the maps `names` pinned in `dir`.
    pub(crate) fn open_pinned(dir: &PinDir, names: &[&'static str]) -> Result<Self, PinError> {
        let mut handles = Vec::with_capacity(names.len());
        for &name in names {
            let path = dir.join(name);
            let handle = MapHandle::from_pinned_path(&path).map_err(|e| PinError::Io {
                op: "opening pinned map",
                path: path.clone(),
                source: io_from_libbpf(e),
            })?;
            handles.push((name, handle));
        }
        Ok(Self { handles })
    }

    pub(crate) fn get(&self, name: &str) -> &MapHandle {
        &self.handles.iter().find(|(n, _)| *n == name).expect("known map name").1
    }

    pub(crate) fn pin_all(&self, dir: &PinDir) -> Result<(), PinError> {
        for (name, handle) in &self.handles {
            dir.pin(name, handle.as_fd())?;
        }
        Ok(())
    }

    /// Kernel memory charged to all the maps.
    pub(crate) fn memlock_bytes(&self) -> u64 {
        self.handles.iter().filter_map(|(_, h)| crate::core::sys::map_memlock(h.as_fd()).ok()).sum()
    }

    /// One entry of a per-CPU map, folded over CPUs with `add`.
    pub(crate) fn sum_percpu<T: bytemuck::Pod + Default>(
        &self,
        name: &str,
        key: u32,
        add: impl Fn(T, T) -> T,
    ) -> io::Result<T> {
        let per_cpu = self
            .get(name)
            .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
            .map_err(io_from_libbpf)?
            .unwrap_or_default();
        Ok(per_cpu.iter().map(|b| bytemuck::pod_read_unaligned::<T>(&b[..size_of::<T>()])).fold(T::default(), add))
    }

    /// One `struct xdpg_counter` entry of a per-CPU map, summed over CPUs.
    pub(crate) fn counter(&self, name: &str, key: u32) -> io::Result<crate::Counter> {
        let c = self.sum_percpu(name, key, |a: xdpg_counter, b| xdpg_counter {
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
        })?;
        Ok(crate::Counter { packets: c.packets, bytes: c.bytes })
    }

    /// Zeroes one entry of a per-CPU map on every CPU.
    pub(crate) fn zero_percpu(&self, name: &str, key: u32) -> io::Result<()> {
        let map = self.get(name);
        let cpus = libbpf_rs::num_possible_cpus().map_err(io_from_libbpf)?;
        let zero = vec![vec![0u8; map.value_size() as usize]; cpus];
        map.update_percpu(&key.to_ne_bytes(), &zero, MapFlags::ANY).map_err(io_from_libbpf)
    }
}
