//! A firewall pair in network namespaces: two nodes running edge-filter from the same
//! config between two shared segments, with real keepalived (VRRPv3) holding the
//! gateway addresses of both segments in one sync group, as an Edge pool is run.
//!
//! ```text
//!  partner ─┐                 ┌── node 1 (out0 outside, in0 edge) ──┐
//!           ├─ outside switch ┤                                     ├─ inside switch ── edge
//! frontend ─┘                 └── node 2 (out0 outside, in0 edge) ──┘
//! ```
//!
//! Each switch is a bridge in a namespace of its own. The nodes' own addresses are
//! `.2` and `.3` (`::2`, `::3`) of each segment; the gateway addresses (`.1`, `::1` of
//! the partner's, the Front End's, access-edge's and internal-edge's networks) are
//! keepalived's, node 1 at the higher priority, preempting. Every namespace, process,
//! pin directory and file is this pair's own and removed on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::topology::{Daemon, Netns, Topology, ip, terminate, unique};

/// The gateway addresses keepalived moves: (interface, VRRP instance, addresses).
const VIRTUAL: [(&str, &str, u8, &[&str]); 4] = [
    ("out0", "OUT4", 51, &["198.51.100.1/24", "198.18.0.1/24"]),
    ("in0", "IN4", 52, &["203.0.113.1/24", "192.0.2.1/24"]),
    ("out0", "OUT6", 61, &["2001:db8:5100::1/64", "2001:db8:198::1/64"]),
    ("in0", "IN6", 62, &["2001:db8:203::1/64", "2001:db8:192::1/64"]),
];

/// VRRP advertisement interval: three missed ones (and the backup's skew) make a
/// failover, about 0.35 s.
const ADVERT_INT: &str = "0.1";

/// One node: its namespace and directories (as a [`Topology`] whose firewall it is,
/// so that the CLI, the daemon and the census helpers work on it), its daemon and
/// its keepalived.
pub struct Node {
    pub t: Topology,
    pub daemon: Option<Daemon>,
    keepalived: Option<Child>,
    priority: u8,
}

impl Node {
    /// The edge-filter config both nodes run: `out0` outside, `in0` edge, the plan's
    /// edge sets, a census every second.
    pub fn config(&self) -> anyhow::Result<PathBuf> {
        let path = self.t.work.join("edge-filter.toml");
        let text = "[[interface]]\nname = \"out0\"\nrole = \"outside\"\n\n[[interface]]\nname = \"in0\"\nrole = \"edge\"\n\n\
                    [addresses]\naccess-edge = [\"203.0.113.10\", \"2001:db8:203::10\"]\n\
                    internal-edge = [\"192.0.2.10\", \"2001:db8:192::10\"]\n\n[state]\ncensus-interval = 1\n";
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Start edge-filter on this node (attached once this returns).
    pub fn start_filter(&mut self) -> anyhow::Result<()> {
        let config = self.config()?;
        self.daemon = Some(self.t.start(&config)?);
        Ok(())
    }

    /// Stop edge-filter and remove its pins: the node comes back as after a reboot,
    /// with empty state tables.
    pub fn forget_state(&mut self) -> anyhow::Result<()> {
        if let Some(d) = self.daemon.take() {
            d.stop()?;
        }
        let out = self.t.cli(&["detach"])?;
        ensure!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    fn keepalived_config(&self) -> String {
        let mut c = format!(
            "global_defs {{\n    router_id {}\n    vrrp_version 3\n    script_user root\n    vrrp_garp_master_repeat 5\n    vrrp_garp_master_delay 1\n}}\n\
             vrrp_sync_group GATEWAYS {{\n    group {{\n        OUT4\n        IN4\n        OUT6\n        IN6\n    }}\n}}\n",
            self.t.fw.name
        );
        for (dev, name, vrid, addrs) in VIRTUAL {
            let addrs: String = addrs.iter().map(|a| format!("        {a} dev {dev}\n")).collect();
            c.push_str(&format!(
                "vrrp_instance {name} {{\n    state BACKUP\n    interface {dev}\n    virtual_router_id {vrid}\n    priority {}\n    advert_int {ADVERT_INT}\n    virtual_ipaddress {{\n{addrs}    }}\n}}\n",
                self.priority
            ));
        }
        c
    }

    /// Start keepalived in this node's namespace, every file of it in the node's
    /// work directory.
    pub fn start_keepalived(&mut self) -> anyhow::Result<()> {
        ensure!(self.keepalived.is_none(), "keepalived already runs on {}", self.t.fw.name);
        let dir = self.t.work.join("keepalived");
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, self.keepalived_config())?;
        let check =
            self.t.fw.command("keepalived").arg(format!("--config-test={}", dir.join("config-test.log").display())).arg("-f").arg(&conf).output();
        let check = check.context("run keepalived (is it installed? `cargo xtask setup` installs it)")?;
        ensure!(
            check.status.success(),
            "keepalived rejects its config:\n{}",
            std::fs::read_to_string(dir.join("config-test.log")).unwrap_or_default()
        );
        let log = File::options().create(true).append(true).open(dir.join("keepalived.log"))?;
        let path = |name: &str| format!("{}", dir.join(name).display());
        let child = self
            .t
            .fw
            .command("keepalived")
            .args(["--vrrp", "--dont-fork", "--log-console", "--log-detail", "--no-syslog"])
            .arg(format!("--use-file={}", conf.display()))
            .arg(format!("--pid={}", path("keepalived.pid")))
            .arg(format!("--vrrp_pid={}", path("vrrp.pid")))
            .arg(format!("--checkers_pid={}", path("checkers.pid")))
            .arg(format!("--bfd_pid={}", path("bfd.pid")))
            // Its SIGUSR1/SIGUSR2 dumps go to TMPDIR.
            .env("TMPDIR", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start keepalived")?;
        self.keepalived = Some(child);
        Ok(())
    }

    /// Stop keepalived (SIGTERM: it gives the addresses up at once and tells the
    /// other node with a priority-0 advertisement) and wait for it to exit.
    pub fn stop_keepalived(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.keepalived.take() else { return Ok(()) };
        terminate(&mut child, &format!("keepalived on {}", self.t.fw.name), Duration::from_secs(10))?;
        Ok(())
    }

    pub fn keepalived_log(&self) -> String {
        std::fs::read_to_string(self.t.work.join("keepalived/keepalived.log")).unwrap_or_default()
    }

    /// How many of the gateway addresses this node holds.
    pub fn gateways_held(&self) -> anyhow::Result<usize> {
        let out = self.t.fw.command("ip").args(["-o", "addr", "show"]).output()?;
        ensure!(out.status.success(), "ip addr: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(VIRTUAL.iter().flat_map(|(_, _, _, addrs)| addrs.iter()).filter(|a| text.contains(&format!(" {a} "))).count())
    }

    /// Take this node's links down (a failed node) or up again.
    pub fn links(&self, up: bool) -> anyhow::Result<()> {
        for dev in ["out0", "in0"] {
            self.t.fw.ip(&["link", "set", dev, if up { "up" } else { "down" }])?;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop_keepalived();
        if let Some(d) = self.daemon.take() {
            let _ = d.stop();
        }
    }
}

/// The pair and the hosts around it.
pub struct Pair {
    // Nodes first: their processes end before the namespaces go.
    pub nodes: [Node; 2],
    pub partner: Netns,
    pub edge: Netns,
    pub frontend: Netns,
    _switches: [Netns; 2],
}

/// The gateway addresses in all.
pub const GATEWAYS: usize = 8;

impl Pair {
    /// Build the segments and the nodes; nothing runs yet.
    pub fn new() -> anyhow::Result<Self> {
        let switches = [Netns::new("sw-out")?, Netns::new("sw-in")?];
        for sw in &switches {
            sw.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"])?;
            sw.ip(&["link", "set", "br0", "up"])?;
        }
        let (partner, edge, frontend) = (Netns::new("partner")?, Netns::new("edge")?, Netns::new("frontend")?);
        // A host or node port on a switch.
        let plug = |ns: &Netns, dev: &str, sw: &Netns, port: &str| -> anyhow::Result<()> {
            ip(&["link", "add", dev, "netns", &ns.name, "type", "veth", "peer", "name", port, "netns", &sw.name])?;
            sw.ip(&["link", "set", port, "master", "br0", "up"])?;
            Ok(())
        };
        let host = |ns: &Netns, port: &str, sw: &Netns, addrs: &[&str], gw4: &str, gw6: &str| -> anyhow::Result<()> {
            plug(ns, "eth0", sw, port)?;
            for a in addrs {
                ns.add_address("eth0", a)?;
            }
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", gw4])?;
            ns.ip(&["-6", "route", "add", "default", "via", gw6])?;
            Ok(())
        };
        host(&partner, "p-partner", &switches[0], &["198.51.100.20/24", "2001:db8:5100::20/64"], "198.51.100.1", "2001:db8:5100::1")?;
        host(&frontend, "p-frontend", &switches[0], &["198.18.0.20/24", "2001:db8:198::20/64"], "198.18.0.1", "2001:db8:198::1")?;
        host(
            &edge,
            "p-edge",
            &switches[1],
            &["203.0.113.10/24", "2001:db8:203::10/64", "192.0.2.10/24", "2001:db8:192::10/64"],
            "203.0.113.1",
            "2001:db8:203::1",
        )?;
        let node = |n: u8| -> anyhow::Result<Node> {
            let ns = Netns::new(&format!("node{n}"))?;
            ns.enter(|| -> std::io::Result<()> {
                for (path, v) in [
                    ("/proc/sys/net/ipv4/ip_forward", "1"),
                    ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
                    // A link that goes down keeps its IPv6 addresses, as IPv4 does.
                    ("/proc/sys/net/ipv6/conf/all/keep_addr_on_down", "1"),
                    ("/proc/sys/net/ipv6/conf/default/keep_addr_on_down", "1"),
                ] {
                    std::fs::write(path, v)?;
                }
                Ok(())
            })??;
            let me = n + 1;
            for (dev, sw, v4, v6) in [("out0", &switches[0], "198.51.100", "2001:db8:5100"), ("in0", &switches[1], "203.0.113", "2001:db8:203")] {
                plug(&ns, dev, sw, &format!("{dev}-n{n}"))?;
                ns.add_address(dev, &format!("{v4}.{me}/24"))?;
                ns.add_address(dev, &format!("{v6}::{me}/64"))?;
                ns.ip(&["link", "set", dev, "up"])?;
            }
            let t = Topology::node(ns, &partner, &edge, &frontend, &unique(&format!("n{n}")))?;
            Ok(Node { t, daemon: None, keepalived: None, priority: if n == 1 { 200 } else { 100 } })
        };
        let nodes = [node(1)?, node(2)?];
        Ok(Self { nodes, partner, edge, frontend, _switches: switches })
    }

    /// Start edge-filter on both nodes, then keepalived on both, and wait until node
    /// 1 holds every gateway address.
    pub fn start(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.start_filter()?;
        }
        for n in &mut self.nodes {
            n.start_keepalived()?;
        }
        self.wait_active(0, Duration::from_secs(10))
    }

    /// Wait until node `i` holds every gateway address and the other none.
    pub fn wait_active(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let (mine, theirs) = (self.nodes[i].gateways_held()?, self.nodes[1 - i].gateways_held()?);
            if mine == GATEWAYS && theirs == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} holds {mine} of {GATEWAYS} gateway addresses and node {} holds {theirs} after {within:?}\nnode 1 keepalived:\n{}\nnode 2 keepalived:\n{}",
                    i + 1,
                    2 - i,
                    self.nodes[0].keepalived_log(),
                    self.nodes[1].keepalived_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
