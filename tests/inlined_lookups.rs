//! Every map lookup of every xdpguard program is inlined by the verifier or
//! calls its map's own lookup directly: none is left as a call into the
//! generic `bpf_map_lookup_elem` helper. That helper reaches the map through
//! an indirect call (a retpoline on most x86 hosts), and the verifier leaves
//! a lookup to it whenever one call site can see two maps, which is what
//! `use_b ? lookup(&map_b, k) : lookup(&map_a, k)` compiles to. The filter's
//! A/B tables did that until this test: 58 ns of an IPv4 drop's 65 at
//! repeat=1 (BENCHMARKS.md, "Issue 13, sixth session"). Checked on the
//! kernel's translated code of the loaded programs (the filter, its guard
//! stage, the LB, the decap program), where such a call names the helper by
//! its offset from `__bpf_call_base` (both read from /proc/kallsyms, as
//! `bpftool prog dump xlated` does). Needs root; fails (does not skip)
//! without it.

mod common {
    pub mod lb;
    pub mod scratch;
    pub mod verdict;
}

use common::lb::in_lb_ns;
use libbpf_rs::query::{ProgInfoIter, ProgInfoQueryOptions, ProgramInfo};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use xdpguard::{Decap, LoadBalancer};

/// BPF_JMP | BPF_CALL: a call; src_reg 0 makes it a helper call (1 and 2
/// are calls into subprograms and kfuncs).
const CALL: u8 = 0x85;

/// A kernel symbol's address, from /proc/kallsyms.
fn kallsyms(name: &str) -> u64 {
    let all = std::fs::read_to_string("/proc/kallsyms").expect("reading /proc/kallsyms");
    let addr = all
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
            (sym == name).then(|| u64::from_str_radix(addr, 16).expect("a hex address"))
        })
        .next()
        .unwrap_or_else(|| panic!("{name} is not in /proc/kallsyms"));
    assert_ne!(addr, 0, "/proc/kallsyms hides addresses: run as root (kernel.kptr_restrict ≤ 1)");
    addr
}

/// The `imm` a translated call into the generic lookup helper carries.
fn generic_lookup_imm() -> i32 {
    let off = kallsyms("bpf_map_lookup_elem") as i64 - kallsyms("__bpf_call_base") as i64;
    i32::try_from(off).expect("a helper lies within 2 GiB of __bpf_call_base")
}

/// The kernel's view of loaded program `id`, its translated code with it.
fn info(id: u32) -> ProgramInfo {
    let opts = ProgInfoQueryOptions::default().include_xlated_prog_insns(true).include_map_ids(true);
    ProgInfoIter::with_query_opts(opts).find(|p| p.id == id).unwrap_or_else(|| panic!("program {id} is not loaded"))
}

/// Indexes of the instructions of `prog` (and its subprograms) that call
/// the generic lookup helper.
fn generic_lookups(prog: &ProgramInfo) -> Vec<usize> {
    let imm = generic_lookup_imm();
    assert!(!prog.xlated_prog_insns.is_empty(), "{}: the kernel gave no translated code", prog.name.to_string_lossy());
    prog.xlated_prog_insns
        .chunks_exact(8)
        .enumerate()
        .filter(|(_, i)| i[0] == CALL && i[1] >> 4 == 0 && i32::from_le_bytes([i[4], i[5], i[6], i[7]]) == imm)
        .map(|(n, _)| n)
        .collect()
}

/// Fails when program `id` calls the generic lookup helper; its name.
fn assert_all_inlined(id: u32) -> String {
    let info = info(id);
    let name = info.name.to_string_lossy().into_owned();
    let found = generic_lookups(&info);
    assert!(
        found.is_empty(),
        "{name}: instructions {found:?} call the generic bpf_map_lookup_elem helper (an indirect call per lookup): \
         give each map its own lookup call site (XDPG_LOOKUP_AB in src/bpf/filter.bpf.c), so the verifier can \
         inline or call it directly"
    );
    name
}

/// The id of the program in slot `slot` of the program array named
/// `map_name` that program `prog` uses.
fn prog_in_array(prog: u32, map_name: &str, slot: u32) -> u32 {
    let prog = info(prog);
    let map = prog
        .map_ids
        .iter()
        .map(|&id| MapHandle::from_map_id(id).expect("opening a map of the program"))
        .find(|m| m.name() == map_name)
        .unwrap_or_else(|| panic!("{} uses no map {map_name}", prog.name.to_string_lossy()));
    let id = map
        .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
        .expect("reading the program array")
        .unwrap_or_else(|| panic!("{map_name}[{slot}] is empty"));
    u32::from_ne_bytes(id[..4].try_into().expect("a program id"))
}

#[test]
fn no_program_calls_the_generic_map_lookup_helper() {
    // The filter, and its guard stage once a rule is loaded.
    let filter = common::verdict::load(16);
    let id = filter.program_id().expect("the filter's id");
    assert_eq!(assert_all_inlined(id), "xdpg_filter");
    filter.rules().add(common::verdict::rule("drop udp dport 9")).expect("adding a rule");
    // Slot XDPG_STAGE_GUARD (src/bpf/guard_consts.h).
    assert_eq!(assert_all_inlined(prog_in_array(id, "xdpg_stages", 0)), "xdpg_guard");

    // The LB and the decap program (in a namespace: the LB names its
    // interfaces).
    let names = in_lb_ns("vinl", 2, |_| {
        let lb = LoadBalancer::builder()
            .redirect_interface("eth0")
            .redirect_interface("eth1")
            .max_vips(4)
            .max_backends(16)
            .connections(1024)
            .load()
            .expect("load the LB (needs root)");
        let decap = Decap::builder().load().expect("load the decap program");
        [
            assert_all_inlined(lb.program_id().expect("the LB's id")),
            assert_all_inlined(decap.program_id().expect("the decap's id")),
        ]
    });
    assert_eq!(names, ["xdpg_lb".to_string(), "xdpg_decap".to_string()]);
}
