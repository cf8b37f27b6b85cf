//! Compiles every `src/bpf/*.bpf.c` into an eBPF object and generates its
//! libbpf-rs skeleton (`$OUT_DIR/<name>.skel.rs`) with libbpf-cargo; and
//! generates, from the C sources, the Rust constants of `*consts.h`
//! (`consts.rs`) and the names of every map and program (`names.rs`).
//!
//! With the `bench` feature it also compiles the benchmark-only programs of
//! `benches/bpf/` (skeletons in the same `$OUT_DIR`, included by
//! `benches/common/bpf.rs`). The crate's own tests, examples and benches turn
//! that feature on through its dev-dependency on itself; a library user never
//! compiles them, and the published crate has no `benches/`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const BPF_DIR: &str = "src/bpf";
const BENCH_BPF_DIR: &str = "benches/bpf";
const MIN_CLANG_MAJOR: u32 = 14;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var_os("CLANG").unwrap_or_else(|| OsString::from("clang"));
    check_clang(&clang);

    println!("cargo:rerun-if-env-changed=CLANG");
    let (mut sources, files) = bpf_files(BPF_DIR);
    write_consts(&out_dir);
    write_names(&out_dir, &files);
    if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        assert!(
            Path::new(BENCH_BPF_DIR).is_dir(),
            "the `bench` feature compiles the benchmark programs in {BENCH_BPF_DIR}/, which only a checkout \
             of xdpguard has (the published crate does not): build the benches from a checkout"
        );
        sources.extend(bpf_files(BENCH_BPF_DIR).0);
    }

    let args = clang_args();
    for source in &sources {
        let stem = source
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".bpf.c"))
            .expect("source names end in .bpf.c");
        let skel = out_dir.join(format!("{stem}.skel.rs"));
        let obj = out_dir.join(format!("{stem}.bpf.o"));
        if let Err(err) =
            SkeletonBuilder::new().source(source).obj(&obj).clang(&clang).clang_args(&args).build_and_generate(&skel)
        {
            panic!("building {} failed: {err:#}", source.display());
        }
    }
}

/// The programs (`*.bpf.c`) and every C file (programs and headers) of a
/// directory, sorted, each registered for a rebuild when it changes.
fn bpf_files(dir: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={dir}");
    let mut sources = Vec::new();
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir}: {e}")) {
        let path = entry.unwrap_or_else(|e| panic!("reading {dir}: {e}")).path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".bpf.c") || name.ends_with(".h") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path.clone());
        }
        if name.ends_with(".bpf.c") {
            sources.push(path);
        }
    }
    sources.sort();
    files.sort();
    (sources, files)
}

/// Fails the build early, with the fix, when clang is missing or too old.
fn check_clang(clang: &OsString) {
    let help = "xdpguard compiles its eBPF programs with clang: install clang >= 14 \
                (Debian/Ubuntu: `apt-get install clang libelf-dev`), or point CLANG at one";
    // check-deps: clang (or $CLANG; .ci/deps installs clang)
    let output = match Command::new(clang).arg("--version").output() {
        Ok(out) if out.status.success() => out,
        _ => panic!("clang not found ({}). {help}", clang.to_string_lossy()),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let major =
        text.split("version ").nth(1).and_then(|v| v.split('.').next()).and_then(|v| v.trim().parse::<u32>().ok());
    match major {
        Some(m) if m >= MIN_CLANG_MAJOR => {}
        Some(m) => panic!("clang {m} is too old. {help}"),
        None => println!("cargo:warning=could not read clang's version; {help}"),
    }
}

fn clang_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-I".into(), BPF_DIR.into(), "-Wall".into()];
    // Debian and Ubuntu keep <asm/types.h> under a multiarch directory that
    // clang's BPF target does not search by itself.
    if let Some(dir) = multiarch_include() {
        args.push("-idirafter".into());
        args.push(dir.into_os_string());
    }
    args
}

fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}

/// Turns the `#define XDPG_* <integer>` lines and the enums of every
/// `src/bpf/*consts.h` into `$OUT_DIR/consts.rs`, so each constant the kernel
/// and user space share is written down once, in C.
fn write_consts(out_dir: &Path) {
    let mut rust = String::from("// Generated by build.rs from src/bpf/*consts.h. Do not edit.\n");
    let mut headers: Vec<PathBuf> = fs::read_dir(BPF_DIR)
        .expect("src/bpf exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with("consts.h")))
        .collect();
    headers.sort();
    for header in headers {
        let text = fs::read_to_string(&header).expect("readable header");
        let mut in_enum = false;
        let mut next_value = 0u64;
        for raw in text.lines() {
            let line = raw.split("/*").next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("#define ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let Some(v) = parse_c_integer(value) {
                    rust.push_str(&format!("pub const {name}: u32 = {v:#x};\n"));
                }
            } else if line.starts_with("enum ") && line.ends_with('{') {
                in_enum = true;
                next_value = 0;
            } else if in_enum && line.starts_with('}') {
                in_enum = false;
            } else if in_enum {
                let item = line.trim_end_matches(',');
                if item.is_empty() {
                    continue;
                }
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => {
                        (n.trim(), parse_c_integer(v.trim()).expect("enum values in consts headers are literals"))
                    }
                    None => (item, next_value),
                };
                rust.push_str(&format!("pub const {name}: u32 = {value};\n"));
                next_value = value + 1;
            }
        }
    }
    fs::write(out_dir.join("consts.rs"), rust).expect("writable OUT_DIR");
}

/// Turns every map (`} xdpg_x SEC(".maps");`), inner-map template
/// (`__array(values, struct xdpg_x)`) and XDP program (`SEC("xdp")` then
/// `int xdpg_x(`) the C sources define into `$OUT_DIR/names.rs`, one
/// `pub const XDPG_X: &str = "xdpg_x";` each, so every name the kernel and
/// bpffs know is written down once, in C.
fn write_names(out_dir: &Path, files: &[PathBuf]) {
    let mut rust =
        String::from("// Generated by build.rs from the map and program definitions in src/bpf/. Do not edit.\n");
    let mut seen: Vec<(String, String)> = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).expect("readable source");
        let shown = file.display().to_string();
        let mut lines = text.lines().map(str::trim).peekable();
        while let Some(line) = lines.next() {
            let found = if let Some(rest) = line.strip_prefix("} ").and_then(|r| r.strip_suffix(" SEC(\".maps\");")) {
                Some(("map", rest.to_owned()))
            } else if let Some(rest) = line.strip_prefix("__array(values, struct ").and_then(|r| r.strip_suffix(");")) {
                Some(("inner map", rest.to_owned()))
            } else if line == "SEC(\"xdp\")" {
                let next = lines.peek().copied().unwrap_or_default();
                let name = next.strip_prefix("int ").and_then(|r| r.split('(').next()).unwrap_or_default();
                Some(("XDP program", name.to_owned()))
            } else {
                None
            };
            let Some((what, name)) = found else {
                continue;
            };
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{shown}: cannot read the {what}'s name in `{line}`"
            );
            // BPF_OBJ_NAME_LEN is 16 with the NUL: longer names are cut.
            assert!(name.len() <= 15, "{shown}: the {what} name `{name}` is longer than the kernel's 15 characters");
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                assert!(*first == shown, "{shown}: the {what} `{name}` is also defined in {first}");
                continue;
            }
            seen.push((name.clone(), shown.clone()));
            rust.push_str(&format!(
                "/// The {what} `{name}` ({shown}).\npub const {}: &str = \"{name}\";\n",
                name.to_ascii_uppercase()
            ));
        }
    }
    fs::write(out_dir.join("names.rs"), rust).expect("writable OUT_DIR");
}

fn parse_c_integer(token: &str) -> Option<u64> {
    let t = token.trim_end_matches(['u', 'U', 'l', 'L']);
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}
