//! Build the kernel object from `edge-filter-ebpf` for the BPF target and leave it in
//! `OUT_DIR`, where `src/loader.rs` embeds it. Needs the nightly toolchain with
//! `rust-src` and `bpf-linker`; `cargo xtask setup` installs them.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    if which_bpf_linker().is_none() {
        // One line that says what to do, instead of a linker error deep in a nested build.
        println!("cargo::error=bpf-linker is not installed: run `cargo xtask setup`");
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "edge-filter-ebpf")
        .ok_or_else(|| anyhow!("edge-filter-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("edge-filter-ebpf manifest has no directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(std::env::var_os("CARGO_HOME").map(|h| std::path::PathBuf::from(h).join("bin")))
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}
