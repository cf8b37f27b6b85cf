//! Compiles every `src/bpf/*.bpf.c` into an eBPF object and generates its
//! libbpf-rs skeleton (`$OUT_DIR/<name>.skel.rs`) with libbpf-cargo; and
//! generates, from the C sources, the Rust constants of `*consts.h`
//! (`consts.rs`) and the names of every map and program (`names.rs`).
//!
//! When the objects committed in `src/bpf/prebuilt/` were made from exactly
//! these sources (`src/bpf/prebuilt/INPUTS` holds the digest of the sources
//! and flags, and the clang that made them), it generates the skeletons from
//! them and compiles nothing: they are the objects CI verified, and another
//! clang (an old one above all) makes other bytes. It compiles with clang
//! when the sources changed since (a developer's edit), or when
//! `XDPGUARD_BPF_COMPILE=1` asks for it; `XDPGUARD_BPF_PREBUILT=1` insists
//! on the committed objects (failing when they are stale). Before, any clang
//! on PATH was used, and a clang older than 14 failed the build although
//! matching objects were at hand.
//! `.ci/prebuilt-bpf check` (which sets `XDPGUARD_BPF_COMPILE=1`) fails when
//! a clang build differs from the committed objects; `.ci/prebuilt-bpf
//! update` refreshes them. The objects are
//! byte-for-byte reproducible: `-fdebug-prefix-map` takes the checkout's path
//! out of the BTF line info, the only input that differed between checkouts.
//!
//! With the `bench` feature it also compiles the benchmark-only programs of
//! `benches/bpf/` (skeletons in the same `$OUT_DIR`, included by
//! `benches/common/bpf.rs`). The crate's own tests, examples and benches turn
//! that feature on through its dev-dependency on itself; a library user never
//! compiles them, and the published crate has no `benches/`. They always need
//! clang.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;
use sha2::{Digest, Sha256};

const BPF_DIR: &str = "src/bpf";
const BENCH_BPF_DIR: &str = "benches/bpf";
const PREBUILT_DIR: &str = "src/bpf/prebuilt";
const PREBUILT_ENV: &str = "XDPGUARD_BPF_PREBUILT";
const COMPILE_ENV: &str = "XDPGUARD_BPF_COMPILE";
const MIN_CLANG_MAJOR: u32 = 14;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed={PREBUILT_ENV}");
    println!("cargo:rerun-if-env-changed={COMPILE_ENV}");
    println!("cargo:rerun-if-changed={PREBUILT_DIR}");
    let (sources, files) = bpf_files(BPF_DIR);
    write_consts(&out_dir);
    write_names(&out_dir, &files);

    let digest = inputs_digest(&files);
    fs::write(out_dir.join("INPUTS.sha256"), format!("{digest}\n")).expect("writing OUT_DIR/INPUTS.sha256");
    let clang = env::var_os("CLANG").unwrap_or_else(|| OsString::from("clang"));
    let set = |name: &str| env::var_os(name).is_some_and(|v| v == "1");
    let (want_prebuilt, want_compile) = (set(PREBUILT_ENV), set(COMPILE_ENV));
    assert!(
        !(want_prebuilt && want_compile),
        "{PREBUILT_ENV}=1 and {COMPILE_ENV}=1 are both set: unset one ({PREBUILT_ENV}=1 uses the eBPF objects \
         committed in {PREBUILT_DIR}/, {COMPILE_ENV}=1 compiles them with clang)"
    );
    let compile = if want_compile {
        check_clang(&clang);
        true
    } else if want_prebuilt {
        check_prebuilt(&digest, &format!("{PREBUILT_ENV}=1"));
        false
    } else if prebuilt_matches(&digest) {
        if let Err(why) = clang_usable(&clang) {
            println!(
                "cargo:warning={why}: using the eBPF objects committed in {PREBUILT_DIR}/, made from these \
                 sources (by {})",
                prebuilt_field("clang ")
            );
        }
        false
    } else {
        // The sources changed since the committed objects were made: only
        // clang can build them.
        if let Err(why) = clang_usable(&clang) {
            check_prebuilt(&digest, &why);
        }
        true
    };
    let args = clang_args();
    for source in &sources {
        let stem = stem(source);
        let skel = out_dir.join(format!("{stem}.skel.rs"));
        if compile {
            build(source, &out_dir.join(format!("{stem}.bpf.o")), &skel, &clang, &args);
        } else {
            let obj = Path::new(PREBUILT_DIR).join(format!("{stem}.bpf.o"));
            if let Err(err) = SkeletonBuilder::new().obj(&obj).generate(&skel) {
                panic!("generating the skeleton of {} failed: {err:#}", obj.display());
            }
        }
    }

    if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        assert!(
            Path::new(BENCH_BPF_DIR).is_dir(),
            "the `bench` feature compiles the benchmark programs in {BENCH_BPF_DIR}/, which only a checkout \
             of xdpguard has (the published crate does not): build the benches from a checkout"
        );
        check_clang(&clang);
        for source in &bpf_files(BENCH_BPF_DIR).0 {
            let stem = stem(source);
            build(
                source,
                &out_dir.join(format!("{stem}.bpf.o")),
                &out_dir.join(format!("{stem}.skel.rs")),
                &clang,
                &args,
            );
        }
    }
}

fn stem(source: &Path) -> &str {
    source
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".bpf.c"))
        .expect("source names end in .bpf.c")
}

fn build(source: &Path, obj: &Path, skel: &Path, clang: &OsString, args: &[OsString]) {
    if let Err(err) =
        SkeletonBuilder::new().source(source).obj(obj).clang(clang).clang_args(args).build_and_generate(skel)
    {
        panic!("building {} failed: {err:#}", source.display());
    }
}

/// The digest of what makes the objects: every C file's name and bytes, and
/// the flags that reach the object (not the machine-dependent include
/// directory or the path map, which change no instruction).
fn inputs_digest(files: &[PathBuf]) -> String {
    let mut hash = Sha256::new();
    for file in files {
        let name = file.file_name().and_then(|n| n.to_str()).expect("C file names are UTF-8");
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display())));
        hash.update([0]);
    }
    hash.update(format!("libbpf-cargo 0.27 -I {BPF_DIR} -Wall").as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A field of `src/bpf/prebuilt/INPUTS` (`(none)` when it has none).
fn prebuilt_field(key: &str) -> String {
    let text = fs::read_to_string(Path::new(PREBUILT_DIR).join("INPUTS")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or("(none)").to_owned()
}

/// Whether the committed objects were made from these very sources, for
/// this target.
fn prebuilt_matches(digest: &str) -> bool {
    prebuilt_field("sources-sha256 ") == digest && env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() == Ok("little")
}

/// Fails the build, naming both ways out, unless the committed objects were
/// made from these very sources. `why` says why they are wanted.
fn check_prebuilt(digest: &str, why: &str) {
    let recorded = prebuilt_field("sources-sha256 ");
    assert!(
        recorded == digest,
        "{why}, and the committed eBPF objects in {PREBUILT_DIR}/ were not made from these sources (recorded \
         {recorded}, now {digest}), so {PREBUILT_ENV}=1 cannot use them. Install clang >= {MIN_CLANG_MAJOR} \
         (Debian/Ubuntu: `apt-get install clang libelf-dev`; or point CLANG at one) or, in a checkout with \
         Debian 12's clang, run `.ci/prebuilt-bpf update`"
    );
    assert!(
        env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() == Ok("little"),
        "{why}, and the committed eBPF objects are little-endian: install clang >= {MIN_CLANG_MAJOR} to build \
         for this target (or point CLANG at one; {COMPILE_ENV}=1 insists on compiling)"
    );
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

/// clang's `--version` text, or `None` when it cannot be run.
fn clang_version(clang: &OsString) -> Option<String> {
    // check-deps: clang (or $CLANG; .ci/deps installs clang)
    let out = Command::new(clang).arg("--version").output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `clang` can build the programs: `Err` says why not (missing,
/// too old). A version it cannot read counts as usable (warned about when
/// it is used).
fn clang_usable(clang: &OsString) -> Result<(), String> {
    let Some(text) = clang_version(clang) else {
        return Err(format!("clang not found ({})", clang.to_string_lossy()));
    };
    match clang_major(&text) {
        Some(m) if m < MIN_CLANG_MAJOR => {
            Err(format!("clang {m} ({}) is older than {MIN_CLANG_MAJOR}", clang.to_string_lossy()))
        }
        _ => Ok(()),
    }
}

fn clang_major(version_text: &str) -> Option<u32> {
    version_text.split("version ").nth(1).and_then(|v| v.split('.').next()).and_then(|v| v.trim().parse::<u32>().ok())
}

/// Fails the build early, with the fix, when clang is missing or too old.
fn check_clang(clang: &OsString) {
    let help = format!(
        "xdpguard compiles its eBPF programs with clang: install clang >= {MIN_CLANG_MAJOR} (Debian/Ubuntu: \
         `apt-get install clang libelf-dev`), or point CLANG at one. Without clang, the objects committed in \
         {PREBUILT_DIR}/ are used when they were made from these sources ({PREBUILT_ENV}=1 insists on them; \
         unset {COMPILE_ENV}, which asks for compiling)"
    );
    if let Err(why) = clang_usable(clang) {
        panic!("{why}. {help}");
    }
    if clang_version(clang).as_deref().and_then(clang_major).is_none() {
        println!("cargo:warning=could not read clang's version; {help}");
    }
}

fn clang_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-I".into(), BPF_DIR.into(), "-Wall".into()];
    // The checkout's path out of the BTF line info: the objects are then the
    // same wherever the crate is built (what .ci/prebuilt-bpf compares).
    let root = env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut map = OsString::from("-fdebug-prefix-map=");
    map.push(root);
    map.push("=.");
    args.push(map);
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
