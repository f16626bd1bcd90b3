//! Host mode end to end: the Edge's addresses are local to the machine that runs the
//! filter, its NICs have role `host`, and its own outbound connections are recorded by
//! the TC egress program so that their replies pass the XDP program, and nothing else.
//!
//! Privileged: run as root, one test at a time.

use std::time::Duration;

use edge_filter_tests::{
    packet::{flags::*, tcp},
    plan::*,
    topology::{Netns, Outcome, Topology, connect, connect_from, echo_server, sa},
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn drops(t: &Topology, iface: &str) -> u64 {
    let out = ok(t.cli(&["stats", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["interface"] == iface && r["action"] == "drop" && r["reason"] == "no_rule")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

/// Send a raw frame out of `dev` in `ns`.
fn inject(ns: &Netns, dev: &'static str, frame: Vec<u8>) {
    ok(ok(ns.enter(move || edge_filter_tests::topology::inject(dev, &frame))));
}

fn host_mode(env: &[(&str, &str)]) {
    let t = ok(Topology::host_mode());
    for (ip, port) in [(ACCESS4, 5269), (ACCESS6, 5269), (INTERNAL4, 23456), (INTERNAL6, 23456), (ACCESS4, 40000), (ACCESS6, 40000)] {
        ok(echo_server(&t.edge, sa(ip, port)));
    }
    for ip in [PARTNER4, PARTNER6] {
        ok(echo_server(&t.partner, sa(ip, 5269)));
    }
    // A second partner address for the one posing with port 5269 (the first listens on it).
    let (attacker4, attacker6) = (std::net::IpAddr::from([198, 51, 100, 21]), "2001:db8:5100::21".parse().unwrap());
    ok(t.partner.ip(&["addr", "add", "198.51.100.21/24", "dev", "eth0"]));
    ok(t.partner.ip(&["-6", "addr", "add", "2001:db8:5100::21/64", "dev", "eth0", "nodad"]));
    let d = ok(t.start_with_env(&ok(t.write_config("")), env));
    for (fam, access, internal, partner, attacker) in
        [("v4", ACCESS4, INTERNAL4, PARTNER4, attacker4), ("v6", ACCESS6, INTERNAL6, PARTNER6, attacker6)]
    {
        assert_eq!(ok(connect(&t.partner, sa(access, 5269), T)), Outcome::Connected, "{fam} R1 in");
        assert_eq!(ok(connect(&t.frontend, sa(internal, 23456), T)), Outcome::Connected, "{fam} R3 in");
        // The server binds its federation connections to its access-edge address.
        assert_eq!(ok(connect_from(&t.edge, sa(access, 0), sa(partner, 5269), T)), Outcome::Connected, "{fam} R2 out, replies back in");
        assert_eq!(ok(connect(&t.partner, sa(access, 40000), T)), Outcome::TimedOut, "{fam} another local port");
        let before = drops(&t, "ext0");
        assert_eq!(
            ok(connect_from(&t.partner, sa(attacker, 5269), sa(access, 40000), T)),
            Outcome::TimedOut,
            "{fam} a SYN from port 5269 to another local port"
        );
        assert!(drops(&t, "ext0") > before, "{fam} the SYN from 5269 is dropped");
        for flags in [ACK, RST, RST_ACK] {
            let before = drops(&t, "ext0");
            inject(&t.partner, "eth0", tcp(attacker, access, 5269, 40000, flags).build());
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(drops(&t, "ext0"), before + 1, "{fam} a {flags:#04x} from port 5269 with no flow");
        }
    }
    // The Edge's own connections are in the flow table with the rule that opened them.
    let flows: Value = serde_json::from_slice(&ok(t.cli(&["flows", "--json"])).stdout).unwrap();
    let out: Vec<&Value> = flows.as_array().unwrap().iter().filter(|f| f["rule"] == "federation-out").collect();
    assert!(out.len() >= 2 && out.iter().all(|f| f["opener"].as_str().unwrap().contains("203")), "{flows:#}");

    // The egress program outlives the daemon and is adopted by the next run.
    let egress_attached = || ok(egress_programs(&t.fw, "ext0")).iter().any(|p| p == "edge_filter_eg");
    assert!(egress_attached(), "the kernel lists the egress program on ext0: {:?}", egress_programs(&t.fw, "ext0"));
    assert!(d.stop().unwrap().success());
    assert!(egress_attached(), "the egress program stays when the daemon stops");
    assert_eq!(ok(connect_from(&t.edge, sa(ACCESS4, 0), sa(PARTNER4, 5269), T)), Outcome::Connected, "R2 with no daemon");
    let d = ok(t.start_with_env(&ok(t.write_config("")), env));
    assert!(d.log_text().contains("egress flows recorded by TC") && d.log_text().contains("program replaced"), "{}", d.log_text());
    assert_eq!(ok(connect_from(&t.edge, sa(ACCESS6, 0), sa(PARTNER6, 5269), T)), Outcome::Connected, "R2 after the restart");
    drop(d);
    assert!(egress_attached(), "the egress program was replaced, not removed");
    let out = ok(t.cli(&["detach"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!egress_attached(), "detach removed the egress program: {:?}", egress_programs(&t.fw, "ext0"));
}

/// The programs the kernel runs at `iface`'s egress in `ns`, by name, however they
/// are attached: TCX links (asked of the kernel, BPF_PROG_QUERY) and clsact filters
/// (`tc filter show`, which does not list TCX links).
fn egress_programs(ns: &Netns, iface: &'static str) -> anyhow::Result<Vec<String>> {
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    let tcx = ns.enter(move || -> anyhow::Result<Vec<String>> {
        let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Egress)?;
        Ok(programs.iter().map(|p| p.name_as_str().unwrap_or("?").to_owned()).collect())
    })??;
    let tc = std::process::Command::new("tc").args(["-n", &ns.name, "filter", "show", "dev", iface, "egress"]).output()?;
    anyhow::ensure!(tc.status.success(), "tc filter show: {}", String::from_utf8_lossy(&tc.stderr));
    let clsact = String::from_utf8_lossy(&tc.stdout).contains("edge_filter_eg").then(|| "edge_filter_eg".to_owned());
    Ok(tcx.into_iter().chain(clsact).collect())
}

#[test]
fn host_mode_with_tcx() {
    host_mode(&[]);
}

#[test]
fn host_mode_with_clsact_as_on_kernels_before_6_6() {
    host_mode(&[("EDGE_FILTER_TC_ATTACH", "clsact")]);
}

/// With the vendor's external table, a host-mode server does more than federate from
/// its public address: its DNS queries (UDP and TCP) and CRL fetches are rows whose
/// source is an edge set, recorded at egress as an `edge` NIC records them at ingress,
/// and their answers pass; an answer nobody asked for does not.
#[test]
fn host_mode_outbound_rows_let_the_servers_own_queries_be_answered() {
    use edge_filter_tests::topology::{Datagram, datagram, udp_echo_server};
    let t = ok(Topology::host_mode());
    for ip in [PARTNER4, PARTNER6] {
        ok(udp_echo_server(&t.partner, sa(ip, 53)));
        ok(echo_server(&t.partner, sa(ip, 53)));
        ok(echo_server(&t.partner, sa(ip, 80)));
    }
    // A second partner address sends the unasked answer (the first holds port 53).
    ok(t.partner.ip(&["addr", "add", "198.51.100.22/24", "dev", "eth0"]));
    ok(t.partner.ip(&["-6", "addr", "add", "2001:db8:5100::22/64", "dev", "eth0", "nodad"]));
    let extra = "[policy]\ntables = [\"lync-edge-external\"]\n[metrics]\nlisten = \"127.0.0.1:9641\"\n";
    let d = ok(t.start(&ok(t.write_config(extra))));
    let other: [std::net::IpAddr; 2] = [[198, 51, 100, 22].into(), "2001:db8:5100::22".parse().unwrap()];
    for ((fam, access, partner), other) in [("v4", ACCESS4, PARTNER4), ("v6", ACCESS6, PARTNER6)].into_iter().zip(other) {
        assert_eq!(ok(datagram(&t.edge, sa(access, 0), sa(partner, 53), b"query", T)), Datagram::Answered, "{fam} DNS over UDP");
        assert_eq!(ok(connect_from(&t.edge, sa(access, 0), sa(partner, 53), T)), Outcome::Connected, "{fam} DNS over TCP");
        assert_eq!(ok(connect_from(&t.edge, sa(access, 0), sa(partner, 80), T)), Outcome::Connected, "{fam} CRL fetch");
        // Nothing was asked from this port: the partner's datagram from 53 is refused.
        let before = drops(&t, "ext0");
        assert_eq!(ok(datagram(&t.partner, sa(other, 53), sa(access, 40999), b"unasked", T)), Datagram::NoAnswer, "{fam}");
        assert!(drops(&t, "ext0") > before, "{fam}: the unasked datagram is drop/no_rule on ext0");
    }
    // The rows that let them out count their packets, as an `edge` NIC's would.
    let stats: Value = serde_json::from_slice(&ok(t.cli(&["stats", "--json"])).stdout).unwrap();
    for row in ["dns-udp-out", "dns-tcp-out", "crl-out"] {
        assert!(edge_filter_tests::topology::rule_hits(&stats, row) >= 2, "{row} counts the host's own packets at egress: {:#}", stats["rules"]);
    }
    drop(d);
}

/// Finding 2: on a `host` NIC, what is addressed to the machine on the link (its
/// link-local address, broadcast, multicast) is policed like its edge addresses: only
/// a row, an essential (ARP, neighbour discovery) or `host-link-local = "pass"` lets it
/// in. Before, with the default `unpoliced = "pass"`, the partner on the link reached
/// every local service through them.
#[test]
fn link_local_broadcast_and_multicast_destinations_are_policed_on_host_nics() {
    use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
    let t = ok(Topology::host_mode());
    // Local services on every address: SSH-like TCP, a DNS-like UDP service per family.
    ok(echo_server(&t.edge, "[::]:22".parse().unwrap()));
    ok(echo_server(&t.edge, sa(ACCESS4, 5269)));
    ok(edge_filter_tests::topology::udp_echo_server(&t.edge, "0.0.0.0:53".parse().unwrap()));
    ok(edge_filter_tests::topology::udp_echo_server(&t.edge, "[::]:54".parse().unwrap()));
    let link_local: Ipv6Addr = {
        let out = std::process::Command::new("ip").args(["-n", &t.fw.name, "-j", "-6", "addr", "show", "dev", "ext0"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let addrs = v[0]["addr_info"].as_array().cloned().unwrap_or_default();
        let ll = addrs.iter().find(|a| a["scope"] == "link").and_then(|a| a["local"].as_str());
        ll.unwrap_or_else(|| panic!("ext0 has a link-local address: {v:#}")).parse().unwrap()
    };
    let scope = ok(t
        .partner
        .enter(|| -> anyhow::Result<u32> {
            let name = std::ffi::CString::new("eth0")?;
            // SAFETY: a NUL-terminated name.
            Ok(unsafe { libc::if_nametoindex(name.as_ptr()) })
        })
        .and_then(|r| r));
    // What the partner on the link reaches: (what, answered).
    let probe = |t: &Topology| -> Vec<(&'static str, bool)> {
        let tcp = ok(connect(&t.partner, SocketAddr::V6(SocketAddrV6::new(link_local, 22, 0, scope)), T)) == Outcome::Connected;
        let udp = |to: SocketAddr| -> bool {
            ok(t.partner
                .enter(move || -> anyhow::Result<bool> {
                    let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
                    s.set_broadcast(true)?;
                    s.set_read_timeout(Some(T))?;
                    s.send_to(b"hello", to)?;
                    let mut buf = [0u8; 64];
                    Ok(matches!(s.recv_from(&mut buf), Ok((5, _))))
                })
                .and_then(|r| r))
        };
        vec![
            ("TCP 22 to the link-local address", tcp),
            ("UDP to 255.255.255.255", udp("255.255.255.255:53".parse().unwrap())),
            ("UDP to the subnet's broadcast", udp("198.51.100.255:53".parse().unwrap())),
            ("UDP to ff02::1", udp(SocketAddr::V6(SocketAddrV6::new("ff02::1".parse().unwrap(), 54, 0, scope)))),
            ("UDP to the link-local address", udp(SocketAddr::V6(SocketAddrV6::new(link_local, 54, 0, scope)))),
        ]
    };
    let config = ok(t.write_config(""));
    let check = ok(t.cli(&["check", "--config", config.to_str().unwrap()]));
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("warning: interface ext0 has role host") && text.contains("needs a [[rule]]"), "check warns of the lock-out: {text}");
    // ext0 also holds the partner's gateway address, in no edge set: under the default
    // unpoliced = "pass" it is open to the link, and check says so; under "drop" not.
    for addr in ["198.51.100.1,", "2001:db8:5100::1,"] {
        assert!(text.contains(&format!("interface ext0 has role host and the address {addr} in no edge set")), "check warns of {addr}: {text}");
    }
    assert!(!text.contains("the address 203.0.113.10"), "access-edge is in its set: {text}");
    let strict = ok(t.write_config("[policy]\nunpoliced = \"drop\"\n"));
    let out = ok(t.cli(&["check", "--config", strict.to_str().unwrap()]));
    let strict_text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !strict_text.contains("in no edge set"), "{strict_text}");
    // Back to the defaults for the daemon.
    let config = ok(t.write_config(""));
    let d = ok(t.start(&config));
    for (what, answered) in probe(&t) {
        assert!(!answered, "{what}: policed on the host NIC, no row lets it in");
    }
    // The federation rows still work, and neighbour discovery (the link-local probes
    // above needed it) is essential.
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 5269), T)), Outcome::Connected, "R1 still reaches the server");
    // The operator's way in: the setting.
    ok(t.write_config("[policy]\nhost-link-local = \"pass\"\n"));
    let out = ok(t.cli(&["reload", "--pid", &d.pid().unwrap().to_string()]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (what, answered) in probe(&t) {
        assert!(answered, "{what}: host-link-local = \"pass\"");
    }
    drop(d);
}

/// A host that takes its address by DHCP: a real DHCP server (dnsmasq) on the link,
/// busybox's `udhcpc` on the host NIC asking for broadcast answers. The server's
/// answers are addressed to the link only, so the host NIC polices them: refused by
/// default (no lease), essential under `policy.host-dhcp = true` (a lease), as
/// `check` says.
#[test]
fn dhcp_answers_reach_a_host_nic_only_under_host_dhcp() {
    use std::process::Command;
    let t = ok(Topology::host_mode());
    let server =
        ok(edge_filter_tests::prosody::Dnsmasq::dhcp(&t.partner, &t.work.join("dhcp"), "eth0", "198.51.100.100,198.51.100.150,255.255.255.0,1h"));
    // udhcpc: broadcast answers (-B), three tries a second apart, exit 1 without a
    // lease (-n), 0 once it has one (-q); the lease is not applied (-s /bin/true).
    let lease = |t: &Topology| -> bool {
        let busybox = Command::new("sh").args(["-c", "command -v busybox"]).output().unwrap();
        let busybox = String::from_utf8_lossy(&busybox.stdout).trim().to_owned();
        assert!(!busybox.is_empty(), "busybox is missing (`cargo xtask setup` installs busybox-static)");
        let out =
            t.fw.command(&busybox).args(["udhcpc", "-i", "ext0", "-f", "-n", "-q", "-B", "-t", "3", "-T", "1", "-s", "/bin/true"]).output().unwrap();
        out.status.success()
    };
    let config = ok(t.write_config(""));
    let check = String::from_utf8_lossy(&ok(t.cli(&["check", "--config", config.to_str().unwrap()])).stdout).into_owned();
    assert!(check.contains("needs policy.host-dhcp = true"), "check says how a DHCP host gets its answers: {check}");
    let d = ok(t.start(&config));
    let refused = !lease(&t);
    let dropped = drops(&t, "ext0");
    ok(t.write_config("[policy]\nhost-dhcp = true\n"));
    let out = ok(t.cli(&["reload", "--pid", &d.pid().unwrap().to_string()]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let leased = lease(&t);
    drop(server);
    assert!(refused, "without host-dhcp the server's broadcast answers are policed: no lease");
    assert!(dropped > 0, "and counted as drop/no_rule on ext0");
    assert!(leased, "under host-dhcp the host NIC lets the server's answers in: a lease");
    drop(d);
}
