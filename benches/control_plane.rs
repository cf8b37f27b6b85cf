//! Control-plane figures: loading a big list from a file, single edits with a
//! big list loaded, replacing the whole list, and the kernel memory the maps
//! take, each next to the kernel LPM trie (the seed approach) in the same run.
//!
//! `cargo bench --bench control_plane`; `XDPG_BENCH_CP_SIZE` (default 1m)
//! sets the list size, `XDPG_BENCH_CP_SAMPLES` (default 2000) the number of
//! single inserts and removes timed, `XDPG_BENCH_QUICK=1` shrinks both.

mod common;

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::bpf::{LpmProg, XDP_PASS};
use common::prefixes::{parse_size, size_label, Prefix4, Set4};
use common::table::{print_markdown, Align, Table};
use common::{env_num, env_or, fmt_bytes, fmt_duration, machine, percentile, quick, require_root};
use libbpf_rs::{MapCore, MapFlags};
use xdpguard::testing::live::map_memlock;
use xdpguard::{Filter, IpNetwork};

fn ms(d: Duration) -> String {
    fmt_duration(d)
}

fn us(v: f64) -> String {
    format!("{:.1} µs", v * 1e6)
}

/// Time each call; returns the sorted samples in seconds.
fn sample(mut each: impl FnMut(usize), n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n)
        .map(|i| {
            let t = Instant::now();
            each(i);
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v
}

/// Prefixes from the same mix that are not in `set`.
fn fresh(set: &Set4, n: usize, seed: u64) -> Vec<Prefix4> {
    let existing: HashSet<Prefix4> = set.prefixes.iter().copied().collect();
    let extra = Set4::generate(n * 2, seed);
    extra.prefixes.into_iter().filter(|p| !existing.contains(p)).take(n).collect()
}

fn v4_capacity(n: usize) -> usize {
    n.max(xdpguard::DEFAULT_V4_CAPACITY)
}

fn main() {
    if !common::started_by_cargo_bench() {
        return;
    }
    require_root();
    let q = quick();
    let n =
        parse_size(&env_or("XDPG_BENCH_CP_SIZE", if q { "100k" } else { "1m" })).expect("XDPG_BENCH_CP_SIZE: a size");
    let samples: usize = env_num("XDPG_BENCH_CP_SAMPLES", if q { "300" } else { "2000" });
    let machine = machine();
    println!("xdpguard control-plane bench on {machine}: {} IPv4 prefixes", size_label(n));
    let label = size_label(n);

    let set = Set4::generate(n, 1);
    let dir = std::env::temp_dir().join(format!("xdpg-bench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("blocklist.txt");
    let mut text = String::with_capacity(n * 18);
    text += "# generated blocklist: 70% /32, 25% /24, 5% /16-/23\n";
    for p in &set.prefixes {
        text += &p.net().to_string();
        text.push('\n');
    }
    std::fs::write(&path, &text).expect("writing the list file");
    drop(text);

    // --- Load from a file -------------------------------------------------
    let mut load = Table::new(
        format!("Loading {label} IPv4 prefixes from a file"),
        &[("step", Align::Left), ("xdpguard", Align::Right), ("kernel LPM trie", Align::Right)],
    );
    let t = Instant::now();
    let filter = Filter::builder().v4_capacity(v4_capacity(n)).load().expect("loading the filter");
    let create = t.elapsed();
    let t = Instant::now();
    let body = std::fs::read_to_string(&path).expect("reading the list file");
    let lines = xdpguard::parse_list(&body, "blocklist.txt").expect("parsing the list file");
    let nets: Vec<IpNetwork> = lines.iter().map(|l| l.entry.network).collect();
    let parse = t.elapsed();
    assert_eq!(nets.len(), n);
    let t = Instant::now();
    let change = filter.blocklist().extend(nets.iter().copied()).expect("bulk load");
    let extend = t.elapsed();
    assert_eq!(change.changed, n, "every prefix is new");
    assert_eq!(filter.blocklist().len().expect("len"), n);

    let lpm = LpmProg::load(n + samples, 1, XDP_PASS).expect("loading bench_lpm");
    let t = Instant::now();
    let body = std::fs::read_to_string(&path).expect("reading the list file");
    let lines = xdpguard::parse_list(&body, "blocklist.txt").expect("parsing the list file");
    let prefixes: Vec<Prefix4> = lines
        .iter()
        .map(|l| match l.entry.network {
            IpNetwork::V4(v) => Prefix4 { addr: u32::from(v.network()), len: v.prefix() },
            IpNetwork::V6(_) => unreachable!("the file is IPv4 only"),
        })
        .collect();
    let lpm_parse = t.elapsed();
    let t = Instant::now();
    for &p in &prefixes {
        lpm.insert_v4(p).expect("LPM insert");
    }
    let lpm_one = t.elapsed();
    // Batch updates, for comparison, into a second trie.
    let lpm_b = LpmProg::load(n, 1, XDP_PASS).expect("loading bench_lpm");
    let keys: Vec<u8> = prefixes.iter().flat_map(|&p| common::bpf::lpm_v4_key(p)).collect();
    let values = vec![1u8; prefixes.len()];
    let t = Instant::now();
    let batch = lpm_b.v4.update_batch(&keys, &values, prefixes.len() as u32, MapFlags::ANY, MapFlags::ANY);
    let lpm_batch = t.elapsed();
    drop(lpm_b);

    load.row(vec!["load the program and maps".into(), ms(create), "—".into()]);
    load.row(vec!["read + parse the file".into(), ms(parse), ms(lpm_parse)]);
    load.row(vec![
        "insert all (xdpguard: one atomic extend; LPM: one update per prefix)".into(),
        ms(extend),
        ms(lpm_one),
    ]);
    load.row(vec!["file → live, total (excluding program load)".into(), ms(parse + extend), ms(lpm_parse + lpm_one)]);
    load.row(vec![
        "LPM with one BPF_MAP_UPDATE_BATCH instead".into(),
        "—".into(),
        match &batch {
            Ok(()) => ms(lpm_batch),
            Err(e) => format!("not supported ({e})"),
        },
    ]);
    let speedup = (lpm_parse + lpm_one).as_secs_f64() / (parse + extend).as_secs_f64();
    load.note(format!(
        "Target: ≤ 2 s, or ≥ 4× faster than one-at-a-time LPM updates. Measured: {} file → live, {speedup:.2}× the LPM trie's {}.",
        ms(parse + extend),
        ms(lpm_parse + lpm_one)
    ));

    // --- Single edits with the big list loaded ------------------------------
    let mut edits = Table::new(
        format!("Single insert / remove with {label} prefixes loaded ({samples} samples each)"),
        &[("operation", Align::Left), ("p50", Align::Right), ("p99", Align::Right), ("max", Align::Right)],
    );
    let extra = fresh(&set, samples, 99);
    let extra_nets: Vec<IpNetwork> = extra.iter().map(|p| p.net()).collect();
    let ins = sample(|i| assert!(filter.blocklist().insert(extra_nets[i]).expect("insert").changed), extra.len());
    let rem = sample(|i| assert!(filter.blocklist().remove(extra_nets[i]).expect("remove").changed), extra.len());
    let lins = sample(|i| lpm.insert_v4(extra[i]).expect("LPM insert"), extra.len());
    let lrem = sample(|i| lpm.remove_v4(extra[i]).expect("LPM delete"), extra.len());
    for (name, v) in
        [("xdpguard insert", &ins), ("xdpguard remove", &rem), ("LPM trie update", &lins), ("LPM trie delete", &lrem)]
    {
        edits.row(vec![name.into(), us(percentile(v, 50.0)), us(percentile(v, 99.0)), us(*v.last().expect("samples"))]);
    }
    edits.note("New prefixes from the same mix (70% /32, 25% /24, 5% /16–/23); each removal undoes one insert.");

    // --- Replace ------------------------------------------------------------
    let mut replace = Table::new(
        format!("Replacing the whole {label}-prefix list (atomic)"),
        &[("new list", Align::Left), ("xdpguard replace()", Align::Right), ("changed entries", Align::Right)],
    );
    let keep = n - n / 10;
    let tenth = fresh(&set, n / 10, 7);
    let daily: Vec<IpNetwork> = set.prefixes[..keep].iter().chain(tenth.iter()).map(|p| p.net()).collect();
    let t = Instant::now();
    let c = filter.blocklist().replace(daily.iter().copied()).expect("replace");
    let replace_daily = t.elapsed();
    replace.row(vec!["90% the same, 10% new (a daily update)".into(), ms(replace_daily), c.changed.to_string()]);
    let other = Set4::generate(n, 12345);
    let t = Instant::now();
    let c = filter.blocklist().replace(other.nets()).expect("replace");
    let replace_all = t.elapsed();
    replace.row(vec!["an unrelated list of the same size".into(), ms(replace_all), c.changed.to_string()]);
    assert_eq!(filter.blocklist().len().expect("len"), other.prefixes.len());
    replace.note("changed entries counts both the removals and the insertions.");

    // --- Memory ---------------------------------------------------------------
    let mut mem = Table::new(
        format!("Kernel memory of the maps (memlock from map info), {label} IPv4 prefixes loaded"),
        &[("structure", Align::Left), ("memory", Align::Right), ("for 1M IPv4 prefixes", Align::Right)],
    );
    // xdpguard's IPv4 maps are arrays preallocated for the capacity (here at
    // least 1,048,576 entries), so their size does not depend on how many
    // prefixes are loaded; the LPM trie allocates per entry and scales.
    let per_m = |b: u64| fmt_bytes((b as f64 * 1_000_000.0 / n as f64) as u64);
    let full = filter.map_memory_bytes();
    let v4_only =
        Filter::builder().v4_capacity(v4_capacity(n)).v6_capacity(1).load().expect("loading a v4-only filter");
    v4_only.blocklist().extend(nets.iter().copied()).expect("bulk load");
    let v4_bytes = v4_only.map_memory_bytes();
    let v4_tables: u64 =
        v4_only.map_memory_by_map().iter().filter(|(name, _)| name.starts_with("xdpg_v4_")).map(|&(_, b)| b).sum();
    drop(v4_only);
    let empty =
        Filter::builder().v4_capacity(v4_capacity(n)).load().expect("loading an empty filter").map_memory_bytes();
    let lpm_bytes = map_memlock(lpm.v4.as_fd()).expect("LPM memlock");
    mem.row(vec![
        format!("xdpguard, all maps (v4 capacity {}, v6 capacity {})", v4_capacity(n), xdpguard::DEFAULT_V6_CAPACITY),
        fmt_bytes(full),
        "—".into(),
    ]);
    mem.row(vec![
        format!("xdpguard, IPv4 side only (v4 capacity {}, v6 capacity 1)", v4_capacity(n)),
        fmt_bytes(v4_bytes),
        fmt_bytes(v4_bytes),
    ]);
    mem.row(vec![
        "xdpguard, the IPv4 tables (`xdpg_v4_*`: level-1 lines, host buckets, entries; both table pairs)".into(),
        fmt_bytes(v4_tables),
        fmt_bytes(v4_tables),
    ]);
    mem.row(vec![
        "xdpguard, everything else in a filter with v6 capacity 1 (guard stage, counters, events)".into(),
        fmt_bytes(v4_bytes - v4_tables),
        "—".into(),
    ]);
    mem.row(vec!["xdpguard, empty, default capacities".into(), fmt_bytes(empty), "—".into()]);
    mem.row(vec![format!("kernel LPM trie (IPv4 map, {label} entries)"), fmt_bytes(lpm_bytes), per_m(lpm_bytes)]);
    mem.note(format!(
        "Target: ≤ 64 MiB of map memory per 1M IPv4 prefixes. Measured: {} for the IPv4 tables ({} with the maps every filter has), preallocated for {} entries.",
        fmt_bytes(v4_tables),
        fmt_bytes(v4_bytes),
        v4_capacity(n)
    ));
    mem.note("The LPM trie's memlock comes from the kernel's own accounting of its nodes (scaled to 1M when fewer are loaded).");

    let _ = std::fs::remove_dir_all(&dir);
    let tables = vec![load, edits, replace, mem];
    for t in &tables {
        println!("\n{}", t.aligned());
    }
    print_markdown(&[format!("Machine: {machine}.")], &tables);
}
