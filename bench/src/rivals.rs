//! The alternatives an operator would otherwise use, set up as close to the policy as
//! each can express it.
//!
//! - xdp-filter (Debian's xdp-tools): default deny, TCP to ports 5269 and 23456
//!   allowed. It judges each field on its own (a port, an address), not tuples, and
//!   keeps no state, so this is the nearest it comes; it is measured with its `tcp`
//!   feature set and with all its features. It is loaded without libxdp's dispatcher
//!   (`LIBXDP_SKIP_DISPATCHER`), its cheapest form, and inside a private mount
//!   namespace with a bpffs of its own, so its pins never touch the machine's.
//! - nftables at the netdev ingress hook: the table stateless, as that hook has no
//!   connection tracking (replies of R2 are let in by their source port); and in an
//!   `inet` input chain with connection tracking, the policy as a host firewall.

use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{ProgramInfo, Xdp};
use aya_obj::programs::XdpAttachType;

use edge_filter_tests::plan;

/// xdp-filter's feature sets, as its `--features` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpFilterFeatures {
    Tcp,
    All,
}

impl XdpFilterFeatures {
    pub fn name(self) -> &'static str {
        match self {
            XdpFilterFeatures::Tcp => "tcp",
            XdpFilterFeatures::All => "all",
        }
    }
}

/// Load xdp-filter on `dev` (native mode) in the calling thread's network namespace
/// and return its program, ready for BPF_PROG_TEST_RUN.
pub fn xdp_filter(dev: &str, features: XdpFilterFeatures) -> anyhow::Result<Xdp> {
    let script = format!(
        "set -e; mount -t bpf bpf /sys/fs/bpf; \
         xdp-filter load --mode native --policy deny --features {f} {dev}; \
         xdp-filter port --proto tcp 5269; xdp-filter port --proto tcp 23456",
        f = features.name()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("LIBXDP_SKIP_DISPATCHER", "1")
        .output()
        .context("run xdp-filter (Debian package xdp-tools)")?;
    ensure!(out.status.success(), "xdp-filter load on {dev} ({}): {}", features.name(), String::from_utf8_lossy(&out.stderr).trim());
    let id = attached_xdp_id(dev)?;
    let info =
        aya::programs::loaded_programs().filter_map(Result::ok).find(|p| p.id() == id).with_context(|| format!("program {id} on {dev} is gone"))?;
    program_of(info, "xdp-filter")
}

fn program_of(info: ProgramInfo, name: &'static str) -> anyhow::Result<Xdp> {
    Ok(Xdp::from_program_info(info, name.into(), XdpAttachType::Interface)?)
}

/// The id of the XDP program attached to `dev`, from `ip -details -json link show`.
pub fn attached_xdp_id(dev: &str) -> anyhow::Result<u32> {
    let out = Command::new("ip").args(["-details", "-json", "link", "show", "dev", dev]).output()?;
    ensure!(out.status.success(), "ip link show {dev}: {}", String::from_utf8_lossy(&out.stderr).trim());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v[0]["xdp"]["prog"]["id"].as_u64().with_context(|| format!("no XDP program on {dev}"))?;
    Ok(id as u32)
}

/// The nftables variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nft {
    /// Stateless, at the netdev ingress hook of the receiving device.
    NetdevIngress,
    /// Stateful, in an `inet` input chain.
    InetInput,
}

/// The table name every variant uses; one table at a time.
pub const NFT_TABLE: &str = "edge_filter_bench";

fn elements(addrs: &[IpAddr], v4: bool) -> String {
    addrs.iter().filter(|a| a.is_ipv4() == v4).map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl Nft {
    pub fn name(self) -> &'static str {
        match self {
            Nft::NetdevIngress => "nftables netdev ingress",
            Nft::InetInput => "nftables inet input",
        }
    }

    /// The ruleset for the test plan's edge addresses on device `dev`.
    pub fn ruleset(self, dev: &str) -> String {
        use plan::*;
        let access = [ACCESS4, ACCESS6];
        let internal = [INTERNAL4, INTERNAL6];
        let all: Vec<IpAddr> = access.iter().chain(&internal).copied().collect();
        let (family, hook, state) = match self {
            Nft::NetdevIngress => (
                "netdev",
                format!("type filter hook ingress device \"{dev}\" priority 0; policy accept;"),
                // No connection tracking here: R2's replies come from port 5269.
                "ip daddr @access4 tcp sport 5269 accept\n    ip6 daddr @access6 tcp sport 5269 accept".to_owned(),
            ),
            Nft::InetInput => {
                ("inet", "type filter hook input priority 0; policy accept;".to_owned(), "ct state established,related accept".to_owned())
            }
        };
        format!(
            "table {family} {NFT_TABLE} {{
  set edge4 {{ type ipv4_addr; elements = {{ {e4} }} }}
  set edge6 {{ type ipv6_addr; elements = {{ {e6} }} }}
  set access4 {{ type ipv4_addr; elements = {{ {a4} }} }}
  set access6 {{ type ipv6_addr; elements = {{ {a6} }} }}
  set internal4 {{ type ipv4_addr; elements = {{ {i4} }} }}
  set internal6 {{ type ipv6_addr; elements = {{ {i6} }} }}
  chain edge {{
    {hook}
    ip saddr @edge4 counter drop
    ip6 saddr @edge6 counter drop
    {state}
    ip daddr @access4 tcp dport 5269 accept
    ip6 daddr @access6 tcp dport 5269 accept
    ip daddr @internal4 tcp dport 23456 accept
    ip6 daddr @internal6 tcp dport 23456 accept
    ip daddr @edge4 meta l4proto icmp accept
    ip6 daddr @edge6 meta l4proto ipv6-icmp accept
    ip daddr @edge4 counter drop
    ip6 daddr @edge6 counter drop
  }}
}}
",
            e4 = elements(&all, true),
            e6 = elements(&all, false),
            a4 = elements(&access, true),
            a6 = elements(&access, false),
            i4 = elements(&internal, true),
            i6 = elements(&internal, false),
        )
    }

    /// Install the ruleset in the calling thread's network namespace.
    pub fn install(self, dev: &str) -> anyhow::Result<()> {
        nft(&["-f", "-"], Some(&self.ruleset(dev)))
    }

    /// Remove it again.
    pub fn remove(self) -> anyhow::Result<()> {
        let family = if self == Nft::NetdevIngress { "netdev" } else { "inet" };
        nft(&["delete", "table", family, NFT_TABLE], None)
    }

    /// Packets the table dropped (the sum of its drop rules' counters).
    pub fn dropped(self) -> anyhow::Result<u64> {
        let out = Command::new("nft").args(["-j", "list", "ruleset"]).output().context("run nft (Debian package nftables)")?;
        ensure!(out.status.success(), "nft list ruleset: {}", String::from_utf8_lossy(&out.stderr).trim());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut total = 0;
        for item in v["nftables"].as_array().into_iter().flatten() {
            for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
                total += expr["counter"]["packets"].as_u64().unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// `nft ARGS` in the calling thread's network namespace (a child inherits it).
fn nft(args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
    let mut child =
        Command::new("nft").args(args).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().context("run nft (Debian package nftables)")?;
    if let Some(text) = input {
        child.stdin.take().context("nft stdin")?.write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
