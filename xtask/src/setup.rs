//! `cargo xtask setup`: make this machine able to build and test edge-filter.
//!
//! Contract: idempotent, and quick when everything is in place (a few process
//! launches); each missing piece is installed and named on the way:
//! - the `rust-src` component of the nightly toolchain (`-Z build-std=core`), and
//!   `rustfmt` and `clippy` for the toolchain that builds the rest (the lints tier);
//! - `bpf-linker` 0.13, linked against the nightly toolchain's own libLLVM, rebuilt
//!   when it is missing or cannot start (a dangling libLLVM after a toolchain update);
//! - the Debian packages the tests use.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests need, each with a shell test that it is there (mostly
/// a command it provides): `ip` and `tc` create and inspect the test devices; the
/// kernel matrix boots kernels with qemu in an initramfs of busybox, packed with
/// cpio, modules unpacked with xz; the benchmark
/// measures xdp-filter and nftables beside edge-filter and reads veth statistics
/// with ethtool; the end-to-end suite checks `/metrics` with promtool, runs real
/// XMPP servers (Prosody with lua-unbound, DNS SRV from dnsmasq) and a firewall pair
/// under keepalived.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "command -v ip"),
    ("xdp-tools", "command -v xdp-filter"),
    ("nftables", "command -v nft"),
    ("ethtool", "command -v ethtool"),
    ("qemu-system-x86", "command -v qemu-system-x86_64"),
    ("busybox-static", "command -v busybox"),
    ("cpio", "command -v cpio"),
    ("xz-utils", "command -v xz"),
    ("zstd", "command -v zstd"),
    ("prometheus", "command -v promtool"),
    ("prosody", "command -v prosody"),
    ("lua-unbound", "dpkg -s lua-unbound"),
    ("dnsmasq", "command -v dnsmasq"),
    ("keepalived", "command -v keepalived"),
];

pub(crate) fn run() -> anyhow::Result<()> {
    rust_src()?;
    lint_tools()?;
    bpf_linker()?;
    packages()?;
    Ok(())
}

/// The output of a command that must succeed.
pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("start {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command with inherited output; fail if it fails.
pub(crate) fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("start {cmd:?}"))?;
    ensure!(st.success(), "{cmd:?} failed ({st})");
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out =
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context("the nightly toolchain is needed to build the eBPF crate")?;
    Ok(PathBuf::from(out.trim()))
}

/// `rustfmt` and `clippy` of the toolchain `cargo` runs, which the lints tier uses.
fn lint_tools() -> anyhow::Result<()> {
    for (tool, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        let have = Command::new(env!("CARGO")).args([tool, "--version"]).output().is_ok_and(|o| o.status.success());
        if !have {
            println!("setup: adding {component}");
            status(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly toolchain's libLLVM, which bpf-linker must link so that both agree on
/// the bitcode the compiler emits.
fn nightly_libllvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .collect();
    found.sort();
    found.pop().with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

fn llvm_major(libllvm: &Path) -> anyhow::Result<String> {
    // libLLVM.so.22.1-rust-1.97.0-nightly
    let name = libllvm.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let major = name.trim_start_matches("libLLVM.so.").split(['.', '-']).next().unwrap_or_default();
    ensure!(major.chars().all(|c| c.is_ascii_digit()) && !major.is_empty(), "cannot read the LLVM version of {name}");
    Ok(major.to_owned())
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let libllvm = nightly_libllvm(&sysroot)?;
    let major = llvm_major(&libllvm)?;
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major})", libllvm.display());
    // bpf-linker's build looks for `$LLVM_PREFIX/lib/libLLVM.so`; the toolchain ships
    // only the versioned name, so give it a prefix with the plain name.
    let prefix = std::env::temp_dir().join(format!("edge-filter-llvm-prefix-{}", std::process::id()));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link).with_context(|| format!("symlink {}", link.display()))?;
    let libdir = sysroot.join("lib");
    let result = status(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix)
            // Find libLLVM at run time without LD_LIBRARY_PATH.
            .env("RUSTFLAGS", format!("-C link-args=-Wl,-rpath,{}", libdir.display())),
    );
    let _ = std::fs::remove_dir_all(&prefix);
    result?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but `bpf-linker --version` still fails; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, probe)| Command::new("sh").args(["-c", probe]).output().map_or(true, |o| !o.status.success()))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    let apt = |args: &[&str]| status(Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive"));
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}
