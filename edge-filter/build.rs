//! Build the kernel object from `edge-filter-ebpf` for the BPF target and leave it in
//! `OUT_DIR`, where `src/loader` embeds it. Needs the nightly toolchain with
//! `rust-src` and `bpf-linker`; `cargo xtask setup` installs them.
//!
//! The object is built with the BPF target feature `allows-misaligned-mem-access`:
//! header fields sit at any offset of a frame, and without it LLVM reads each one a
//! byte at a time (a 32-bit address is four loads, three shifts and three ors). The
//! verifier accepts unaligned packet and map-value loads where the kernel has
//! `CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS` (x86-64, the architecture edge-filter is
//! built and tested for: the kernel matrix loads the object on every kernel it
//! supports); the stack stays aligned as the verifier requires. aya-build, which
//! builds the other BPF crates, sets the target's flags itself and takes no more, so
//! this script runs the same cargo command with the feature added.
//!
//! A missing `bpf-linker` is reported by `edge-filter-ebpf`'s own build script, which
//! cargo runs first, in one line that says to run `cargo xtask setup`.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message};

/// Flags of the BPF build besides `bpf_target_arch`.
const RUSTFLAGS: &[&str] = &["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-feature=+allows-misaligned-mem-access", "-Ctarget-cpu=v3"];

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf =
        metadata.packages.into_iter().find(|p| p.name.as_str() == "edge-filter-ebpf").ok_or_else(|| anyhow!("edge-filter-ebpf package not found"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("edge-filter-ebpf manifest has no directory"))?;
    // Cargo knows the crate's library as a build dependency, not its binaries.
    println!("cargo:rerun-if-changed={root}");
    // The host's architecture, for the kernel structures aya-ebpf reads.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let rustflags: Vec<String> =
        std::iter::once(format!("--cfg=bpf_target_arch=\"{arch}\"")).chain(RUSTFLAGS.iter().map(|f| (*f).to_owned())).collect();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", "edge-filter-ebpf", "--bins", "--message-format=json"])
        .args(["--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let relay = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            println!("cargo:warning={line}");
        }
    });
    let mut binaries = Vec::new();
    for message in Message::parse_stream(BufReader::new(child.stdout.take().context("stdout")?)) {
        match message.context("cargo's JSON messages")? {
            Message::CompilerArtifact(Artifact { executable: Some(path), target, .. }) => binaries.push((target.name, path)),
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                for line in message.rendered.unwrap_or_default().lines() {
                    println!("cargo:warning={line}");
                }
            }
            _ => {}
        }
    }
    let status = child.wait().with_context(|| format!("wait for {cmd:?}"))?;
    let _ = relay.join();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    for (name, path) in binaries {
        std::fs::copy(&path, out_dir.join(&name)).with_context(|| format!("copy {path} to OUT_DIR"))?;
    }
    Ok(())
}
