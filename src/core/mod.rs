//! What every program uses: loading, attaching, pinning, maps, layouts and
//! test runs. Nothing here knows about filters or load balancers.

pub(crate) mod attach;
pub(crate) mod counter;
pub(crate) mod hash;
pub(crate) mod layout;
pub(crate) mod maps;
pub(crate) mod mmap;
pub(crate) mod pinned;
pub(crate) mod pin;
pub(crate) mod program;
pub(crate) mod sys;
pub(crate) mod table;
pub(crate) mod testrun;
