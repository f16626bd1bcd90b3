//! The check `cargo xtask kernels` runs inside each kernel it boots (statically
//! linked, as `/kernel-check` in the initramfs): load the programs, run the fixture
//! subset with BPF_PROG_TEST_RUN, attach to a veth in native mode, send real frames,
//! and check the counters. The last line is `EDGE-FILTER-KERNEL-CHECK: PASS` or `FAIL`
//! with the reason (a verifier log included).

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, ensure};
use aya::programs::XdpMode;
use edge_filter::{Filter, LoadOptions, Policy, Role, Variant};
use edge_filter_common::verdict;
use edge_filter_tests::{
    Harness, Lab,
    packet::{flags::SYN, tcp},
    plan::*,
    subset,
    topology::inject,
};

fn fixtures(variant: Variant) -> anyhow::Result<usize> {
    let mut n = 0;
    for (what, policy, cases) in subset::groups() {
        let h = Harness::with_variant(policy, variant).with_context(|| format!("{what}: load"))?;
        h.check_all(&cases).with_context(|| format!("{what} ({variant:?})"))?;
        n += cases.len();
    }
    Ok(n)
}

/// The filter on a veth in native mode; real frames from its peer.
fn native() -> anyhow::Result<()> {
    let lab = Lab::new(&["wire0", "filt0"])?;
    for dev in ["wire0", "filt0"] {
        let out = std::process::Command::new("ip").args(["link", "set", dev, "up"]).output()?;
        ensure!(out.status.success(), "ip link set {dev} up: {}", String::from_utf8_lossy(&out.stderr));
    }
    let ifindex = lab.ifindex("filt0")?;
    let mut filter = Filter::load(&LoadOptions::default())?;
    filter.maps_mut().set_address_sets(&sets())?;
    filter.maps_mut().set_policy(&Policy::default())?;
    let slot = filter.maps_mut().set_iface(ifindex, Role::Outside)?;
    filter.program_mut()?.attach_to_if_index(ifindex, XdpMode::Driver).context("attach in native mode")?;
    for frame in [tcp(PARTNER4, ACCESS4, 40000, 5269, SYN).build(), tcp(PARTNER4, ACCESS4, 40000, 22, SYN).build()] {
        inject("wire0", &frame)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let c = filter.maps().slot_counters(slot)?;
    let (rule, no_rule) = (c[verdict::PASS_RULE as usize].packets, c[verdict::DROP_NO_RULE as usize].packets);
    ensure!(rule == 1 && no_rule == 1, "native veth: pass/rule {rule}, drop/no_rule {no_rule} (want 1 and 1)");
    Ok(())
}

fn check() -> anyhow::Result<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let variant = Variant::for_kernel();
    let mut n = fixtures(variant)?;
    if variant == Variant::MultiBuffer {
        n += fixtures(Variant::Linear)?;
    }
    native()?;
    // What the verifier walked (kernel 5.16+ reports it): the margin to its limit.
    let verified = Filter::load(&LoadOptions::default())?
        .program()?
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count())
        .map_or_else(String::new, |n| format!(", {n} instructions verified"));
    Ok(format!("kernel {} ({variant:?}): {n} fixture cases, native veth attach{verified}", release.trim()))
}

fn main() -> ExitCode {
    match check() {
        Ok(summary) => {
            println!("EDGE-FILTER-KERNEL-CHECK: PASS {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("EDGE-FILTER-KERNEL-CHECK: FAIL {e:#}");
            ExitCode::FAILURE
        }
    }
}
