//! Rebuild the kernel objects when `bpf-linker` changes: cargo does not know the linker
//! is an input of this crate.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo::error=bpf-linker is not installed: run `cargo xtask setup`"),
    }
}
