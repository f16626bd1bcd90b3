//! `cargo xtask demo`: build the binary and the demo driver, then run the demo
//! (`tests/src/bin/demo.rs`), which builds its own namespaces and removes them.

use std::process::Command;

use anyhow::bail;

use crate::setup;

pub(crate) fn run(keep: bool, pair: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads XDP programs: run as root");
    }
    setup::status(Command::new(env!("CARGO")).args(["build", "--quiet", "--package", "edge-filter", "--bin", "edge-filter"]))?;
    let mut demo = Command::new(env!("CARGO"));
    demo.args(["run", "--quiet", "--package", "edge-filter-tests", "--bin", "demo"]);
    demo.arg("--");
    if keep {
        demo.arg("--keep");
    }
    if pair {
        demo.arg("--pair");
    }
    setup::status(&mut demo)
}
