//! What every program uses, written once. Nothing here knows about filters
//! or load balancers.
//!
//! - `pinned.rs`: [`Pinned`](pinned::Pinned), a loaded program with its
//!   maps and model, and [`ProgramKind`](pinned::ProgramKind), what a
//!   program tells the core about itself. Start here.
//! - `program.rs`: the XDP program, its links and its pins; `attach.rs`:
//!   attach modes and interfaces; `pin.rs`: the pin directory; `sys.rs`:
//!   the system calls libbpf-rs does not cover.
//! - `maps.rs`: typed maps and `program_maps!`; `mmap.rs`: memory-mapped
//!   arrays; `layout.rs`: the generated constants and names, the shared
//!   header's offsets; `counter.rs`: counter snapshots.
//! - `table.rs`: the chained-bucket hash table (and its write order) the
//!   filter's tables use; `hash.rs`: the hash under it.
//! - `testrun.rs`: `BPF_PROG_TEST_RUN` results; `grace.rs`: waiting until
//!   no program still runs on a table a switch retired.
//! - `upgrade.rs`: a newer build taking over a pinned program (the
//!   migration hook is [`ProgramKind::migration`](pinned::ProgramKind::migration)).
//! - `names.rs`: `Display` and `FromStr` for the public enums (policies,
//!   modes, states) from one table of names each.

pub(crate) mod attach;
pub(crate) mod chain;
pub(crate) mod counter;
pub(crate) mod grace;
pub(crate) mod hash;
pub(crate) mod layout;
pub(crate) mod maps;
pub(crate) mod mmap;
pub(crate) mod names;
pub(crate) mod pin;
pub(crate) mod pinned;
pub(crate) mod program;
pub(crate) mod sys;
pub(crate) mod table;
pub(crate) mod testrun;
pub(crate) mod upgrade;
