//! Build the test programs from `edge-filter-test-ebpf` (`tests/ebpf`: the traffic
//! generator and the benchmark's floor) for the BPF target and leave them in
//! `OUT_DIR`, where `src/programs.rs` embeds them. Needs the nightly toolchain with
//! `rust-src` and `bpf-linker`; `cargo xtask setup` installs them.
//!
//! A missing `bpf-linker` is reported by `edge-filter-test-ebpf`'s own build script,
//! which cargo runs first, in one line that says to run `cargo xtask setup`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "edge-filter-test-ebpf")
        .ok_or_else(|| anyhow!("edge-filter-test-ebpf package not found"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("edge-filter-test-ebpf manifest has no directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
