//! The `edge-filter` binary end to end: the perimeter topology in network namespaces,
//! the daemon on the firewall, real TCP connections, and what the operator sees.
//!
//! Privileged: run as root, one test at a time (`cargo xtask test` does both).

use std::{net::IpAddr, path::PathBuf, thread::sleep, time::Duration};

use edge_filter_tests::{
    plan::*,
    topology::{Daemon, Outcome, Topology, connect, echo, echo_server, open_stream, packets, rule_hits, sa},
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);
const METRICS: &str = "127.0.0.1:9435";

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Echo servers on the Edge (5269, 23456, 22 on both addresses of each family) and on
/// the partner (5269).
fn servers(t: &Topology) {
    for ip in [ACCESS4, ACCESS6] {
        for port in [5269, 22] {
            ok(echo_server(&t.edge, sa(ip, port)));
        }
    }
    for ip in [INTERNAL4, INTERNAL6] {
        for port in [23456, 22] {
            ok(echo_server(&t.edge, sa(ip, port)));
        }
    }
    for ip in [PARTNER4, PARTNER6] {
        ok(echo_server(&t.partner, sa(ip, 5269)));
    }
}

/// The topology with [`servers`], a config of the plan's roles and `extra`, and the
/// daemon running it.
fn running(extra: &str) -> (Topology, PathBuf, Daemon) {
    let t = ok(Topology::new());
    servers(&t);
    let config = ok(t.write_config(extra));
    let d = ok(t.start(&config));
    (t, config, d)
}

fn stats(t: &Topology) -> Value {
    ok(t.stats())
}

#[test]
fn the_vendor_table_with_real_tcp_in_both_families() {
    let (t, _, d) = running("");
    for (fam, access, internal, partner) in [("v4", ACCESS4, INTERNAL4, PARTNER4), ("v6", ACCESS6, INTERNAL6, PARTNER6)] {
        assert_eq!(ok(connect(&t.partner, sa(access, 5269), T)), Outcome::Connected, "{fam} R1 partner -> access-edge:5269");
        assert_eq!(ok(connect(&t.edge, sa(partner, 5269), T)), Outcome::Connected, "{fam} R2 Edge -> partner:5269, replies back in");
        assert_eq!(ok(connect(&t.frontend, sa(internal, 23456), T)), Outcome::Connected, "{fam} R3 frontend -> internal-edge:23456");
    }
    let before = stats(&t);
    for (fam, access, internal) in [("v4", ACCESS4, INTERNAL4), ("v6", ACCESS6, INTERNAL6)] {
        assert_eq!(ok(connect(&t.partner, sa(access, 22), T)), Outcome::TimedOut, "{fam} partner -> access-edge:22");
        assert_eq!(ok(connect(&t.partner, sa(access, 23456), T)), Outcome::TimedOut, "{fam} partner -> access-edge:23456");
        assert_eq!(ok(connect(&t.frontend, sa(internal, 22), T)), Outcome::TimedOut, "{fam} frontend -> internal-edge:22");
        assert_eq!(ok(connect(&t.frontend, sa(internal, 5269), T)), Outcome::TimedOut, "{fam} frontend -> internal-edge:5269");
    }
    let after = stats(&t);
    // Each refused attempt is at least one SYN (retransmissions add more), on the NIC
    // it arrived on.
    assert!(packets(&after, "out0", "drop", "no_rule") >= packets(&before, "out0", "drop", "no_rule") + 4, "{after:#}");
    assert!(packets(&after, "fe0", "drop", "no_rule") >= packets(&before, "fe0", "drop", "no_rule") + 4, "{after:#}");
    assert_eq!(packets(&after, "ext0", "drop", "no_rule"), 0, "{after:#}");
    // The allowed connections: rules hit on the opener's NIC, replies on the other.
    assert!(packets(&after, "out0", "pass", "rule") > 0 && packets(&after, "ext0", "pass", "reply") > 0, "{after:#}");
    assert!(packets(&after, "ext0", "pass", "rule") > 0 && packets(&after, "out0", "pass", "reply") > 0, "{after:#}");
    assert!(packets(&after, "fe0", "pass", "rule") > 0 && packets(&after, "int0", "pass", "reply") > 0, "{after:#}");
    for rule in ["federation-in", "federation-out", "internal-mtls"] {
        assert!(rule_hits(&after, rule) >= 6, "{rule}: {after:#}");
    }
    // /metrics says the same as stats (the drop and rule counters are quiet now).
    let metrics = ok(t.metrics(METRICS.parse().unwrap()));
    let now = stats(&t);
    for iface in ["out0", "fe0"] {
        let line = format!(
            "edge_filter_packets_total{{action=\"drop\",interface=\"{iface}\",reason=\"no_rule\"}} {}",
            packets(&now, iface, "drop", "no_rule")
        );
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    let line = format!("edge_filter_rule_hits_total{{rule=\"internal-mtls\"}} {}", rule_hits(&now, "internal-mtls"));
    assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    assert!(metrics.lines().any(|l| l == "edge_filter_addresses{set=\"access-edge\"} 2"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "edge_filter_dry_run 0"), "{metrics}");
    drop(d);
}

#[test]
fn addresses_change_while_traffic_flows_and_survive_a_restart() {
    let t = ok(Topology::new());
    // A second Edge address on the external NIC, not yet in access-edge.
    let second = IpAddr::from([203, 0, 113, 11]);
    ok(t.edge.ip(&["addr", "add", "203.0.113.11/24", "dev", "ext0"]));
    for port in [5269, 22] {
        ok(echo_server(&t.edge, sa(second, port)));
    }
    ok(echo_server(&t.edge, sa(ACCESS4, 5269)));
    let config = ok(t.write_config(""));
    let d = ok(t.start(&config));
    let mut running = ok(open_stream(&t.partner, sa(ACCESS4, 5269), T));
    assert!(echo(&mut running));

    assert_eq!(ok(connect(&t.partner, sa(second, 22), T)), Outcome::Connected, "unpoliced before the change");
    let out = ok(t.cli(&["addr", "add", "access-edge", "203.0.113.11"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok(connect(&t.partner, sa(second, 22), T)), Outcome::TimedOut, "policed after addr add");
    assert_eq!(ok(connect(&t.partner, sa(second, 5269), T)), Outcome::Connected, "R1 to the new address");
    assert!(echo(&mut running), "the running connection is untouched");

    let list = ok(t.cli(&["addr", "list", "access-edge", "--json"]));
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(list.as_array().unwrap().iter().any(|e| e["address"] == "203.0.113.11" && e["source"] == "runtime"), "{list:#}");
    assert!(list.as_array().unwrap().iter().any(|e| e["address"] == "203.0.113.10" && e["source"] == "config"), "{list:#}");

    // The state directory brings the change back after a stop, a detach (as after a
    // reboot: no pins) and a new run.
    d.stop().unwrap();
    let out = ok(t.cli(&["detach"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = ok(t.start(&config));
    assert_eq!(ok(connect(&t.partner, sa(second, 22), T)), Outcome::TimedOut, "still policed after the restart");

    let out = ok(t.cli(&["addr", "del", "access-edge", "203.0.113.11"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok(connect(&t.partner, sa(second, 22), T)), Outcome::Connected, "unpoliced again after addr del");
    drop(d);
}

#[test]
fn sigterm_leaves_the_filter_enforcing_and_the_next_run_adopts_it() {
    let (t, config, d) = running("");
    let mut conn = ok(open_stream(&t.partner, sa(ACCESS4, 5269), T));
    assert!(echo(&mut conn));
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 22), T)), Outcome::TimedOut);
    let before = stats(&t);

    assert!(d.stop().unwrap().success(), "run exits 0 on SIGTERM");
    // The gap: no daemon.
    assert!(echo(&mut conn), "the established connection keeps working");
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 22), T)), Outcome::TimedOut, "a probe in the gap is still dropped");
    let gap = stats(&t);
    assert!(packets(&gap, "out0", "drop", "no_rule") > packets(&before, "out0", "drop", "no_rule"));

    let d = ok(t.start(&config));
    let status = ok(t.cli(&["status", "--json"]));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["interfaces"].as_array().unwrap().len(), 4, "{status:#}");
    assert!(echo(&mut conn), "still working after the new run replaced the program");
    let after = stats(&t);
    assert!(packets(&after, "out0", "drop", "no_rule") >= packets(&gap, "out0", "drop", "no_rule"), "counters carried over: {gap:#} then {after:#}");
    assert!(rule_hits(&after, "federation-in") >= rule_hits(&gap, "federation-in"));
    drop(d);
}

#[test]
fn sighup_applies_an_edited_config_and_dry_run_drops_nothing() {
    let (t, config, d) = running("");
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 22), T)), Outcome::TimedOut);

    std::fs::write(&config, format!("{}\n[policy]\ndry-run = true\n", t.base_config())).unwrap();
    d.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("applied") {
        assert!(std::time::Instant::now() < deadline, "SIGHUP not applied:\n{}", d.log_text());
        sleep(Duration::from_millis(50));
    }
    let before = stats(&t);
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 22), T)), Outcome::Connected, "dry-run drops nothing");
    assert_eq!(ok(connect(&t.partner, sa(ACCESS6, 22), T)), Outcome::Connected, "dry-run drops nothing (v6)");
    let after = stats(&t);
    assert!(packets(&after, "out0", "would_drop", "no_rule") > packets(&before, "out0", "would_drop", "no_rule"), "{after:#}");
    assert_eq!(packets(&after, "out0", "drop", "no_rule"), packets(&before, "out0", "drop", "no_rule"));

    // An invalid edit is refused and the running config stays.
    std::fs::write(&config, "[policy]\nfederation-port = 0\n").unwrap();
    d.signal(libc::SIGHUP);
    sleep(Duration::from_millis(500));
    assert!(d.log_text().contains("policy.federation-port = 0"), "{}", d.log_text());
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 5269), T)), Outcome::Connected);
    drop(d);
}

/// Run the CLI; (exit code, stderr).
fn fails(t: &Topology, args: &[&str]) -> (i32, String) {
    let out = ok(t.cli(args));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

#[test]
fn bad_input_is_one_line_naming_the_value_and_changes_nothing() {
    let t = ok(Topology::new());
    let bad = |name: &str, toml: &str| ok(t.work_file(name, toml)).display().to_string();
    let base = t.base_config();
    let cases = [
        (bad("a.toml", &format!("{base}\n[policy]\nfederation-port = 0\n")), "policy.federation-port = 0: a port from 1 to 65535"),
        (bad("b.toml", &format!("{base}\n[policy]\ninternal-port = 70000\n")), "policy.internal-port = 70000: a port from 1 to 65535"),
        (bad("c.toml", "[[interface]]\nname = \"out0\"\nrole = \"inside\"\n"), "interface \"out0\" role = \"inside\": outside, edge or host"),
        (
            bad("d.toml", "[[interface]]\nname = \"out0\"\nrole = \"edge\"\nmode = \"turbo\"\n"),
            "interface \"out0\" mode = \"turbo\": auto, native or skb",
        ),
        (bad("e.toml", "[addresses]\naccess-edge = [\"203.0.113.10/33\"]\n"), "prefix length 33 is longer than 32 bits"),
        (bad("f.toml", "[[rule]]\nid = \"x\"\nproto = \"tcp\"\nport = 22\nsource = \"any\"\ndestination = \"any\"\n"), "row `x`: names no edge set"),
        (bad("j.toml", "[policy]\ntables = [\"lync-edge\"]\n"), "unknown table `lync-edge`"),
        (
            bad("k.toml", "[[rule]]\nid = \"x\"\nproto = \"udp\"\nport = \"60000-50000\"\nsource = \"any\"\ndestination = \"av-edge\"\n"),
            "rule `x` port = \"60000-50000\"",
        ),
        (
            bad("g.toml", "[[interface]]\nname = \"out0\"\nrole = \"edge\"\n[[interface]]\nname = \"out0\"\nrole = \"edge\"\n"),
            "interface `out0` is listed twice",
        ),
        (bad("h.toml", "[state]\nmax_flows = 10\n"), "unknown key `state.max_flows`; did you mean `max-flows`?"),
        (bad("i.toml", "[[interface]]\nname = \"nosuch0\"\nrole = \"edge\"\n"), "unknown interface `nosuch0`"),
    ];
    for (path, want) in &cases {
        let (code, err) = fails(&t, &["run", "--config", path]);
        assert_ne!(code, 0, "{path}");
        assert!(err.contains(want), "{path}: got {err:?}, want {want:?}");
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    }
    assert!(!t.pin_dir.exists(), "a refused run changed nothing");
    let (code, err) = fails(&t, &["check", "--config", &cases[0].0]);
    assert_eq!(code, 1);
    assert!(err.contains("federation-port = 0"), "{err}");

    // With a filter running: refused address changes leave the sets as they were.
    let d = ok(t.start(&ok(t.write_config(""))));
    for (args, want) in [
        (vec!["addr", "add", "access-edge", "203.0.113.12", "203.0.113.300"], "`203.0.113.300` is not an IP address or prefix"),
        (
            vec!["addr", "add", "access_edge", "203.0.113.12"],
            "unknown address set `access_edge` (expected access-edge, webconf-edge, av-edge, internal-edge)",
        ),
        (vec!["addr", "add", "access-edge", "203.0.113.12/24"], "has host bits set beyond /24; did you mean 203.0.113.0/24?"),
    ] {
        let (code, err) = fails(&t, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: got {err:?}");
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    }
    let list: Value = serde_json::from_slice(&ok(t.cli(&["addr", "list", "--json"])).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "nothing changed: {list:#}");
    drop(d);

    // Another XDP program on a NIC is never replaced.
    ok(t.cli(&["detach"]));
    let foreign = t.foreign_xdp("out0");
    let (_held, id) = ok(foreign);
    let (code, err) = fails(&t, &["run", "--config", &t.write_config("").unwrap().display().to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("interface `out0` already has XDP program id {id}")), "{err}");
}

#[test]
fn the_drop_log_reports_refused_packets_within_its_limit() {
    let (t, _, d) = running("[log]\ndrops = true\ndrops-per-second = 5\n");
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 22), T)), Outcome::TimedOut);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let probe = |log: &str| log.lines().any(|l| l.contains("drop/no_rule") && l.contains("198.51.100.20:") && l.contains("-> 203.0.113.10:22"));
    while !probe(&d.log_text()) {
        assert!(std::time::Instant::now() < deadline, "the refused probe is not in the daemon's log:\n{}", d.log_text());
        sleep(Duration::from_millis(50));
    }
    sleep(Duration::from_millis(1100));
    let lines = |log: &str| log.lines().filter(|l| l.contains("drop/")).count();
    let before = lines(&d.log_text());
    let events_before = stats(&t)["events"].clone();

    // A burst of a thousand refused UDP datagrams.
    let start = std::time::Instant::now();
    ok(t.partner
        .enter(|| -> anyhow::Result<()> {
            let s = std::net::UdpSocket::bind("198.51.100.20:0")?;
            for _ in 0..1000 {
                s.send_to(b"x", "203.0.113.10:9")?;
            }
            Ok(())
        })
        .and_then(|r| r));
    let elapsed = start.elapsed().as_secs() + 1;
    sleep(Duration::from_millis(500));
    let logged = lines(&d.log_text()) - before;
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    let limit = 5 * cpus * (elapsed + 1);
    assert!(logged as u64 <= limit, "{logged} lines for the burst, limit {limit}");
    assert!(logged >= 1, "the burst is reported");
    let after = stats(&t);
    let suppressed = |e: &Value| e.as_array().unwrap().iter().find(|x| x[0] == "drop_log_suppressed").map_or(0, |x| x[1].as_u64().unwrap());
    assert!(suppressed(&after["events"]) >= suppressed(&events_before) + 1000 - limit, "{after:#}");
    drop(d);
}

#[test]
fn operator_commands_refuse_without_root_and_serialise_with_a_lock() {
    let t = ok(Topology::new());
    let d = ok(t.start(&ok(t.write_config(""))));
    // Not root: one line that says so, nothing changed.
    let bin = ok(edge_filter_tests::topology::edge_filter_bin());
    for args in [vec!["status"], vec!["addr", "add", "access-edge", "203.0.113.12"], vec!["stats"]] {
        let out =
            t.fw.command("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&bin)
                .args(&args)
                .env("EDGE_FILTER_PIN_DIR", &t.pin_dir)
                .env("EDGE_FILTER_STATE_DIR", &t.state_dir)
                .output()
                .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim(), "edge-filter: needs root (CAP_BPF and CAP_NET_ADMIN) to load and read BPF programs and maps");
    }
    // Twenty concurrent `addr add`s: every one lands in the maps and the state file.
    let children: Vec<_> =
        (0..20).map(|i| ok(t.edge_filter()).args(["addr", "add", "access-edge", &format!("203.0.113.{}", 100 + i)]).spawn().unwrap()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let list: Value = serde_json::from_slice(&ok(t.cli(&["addr", "list", "access-edge", "--json"])).stdout).unwrap();
    let runtime = list.as_array().unwrap().iter().filter(|e| e["source"] == "runtime").count();
    assert_eq!(runtime, 20, "{list:#}");
    let state = std::fs::read_to_string(t.state_dir.join("addresses.toml")).unwrap();
    for i in 0..20 {
        assert!(state.contains(&format!("\"203.0.113.{}\"", 100 + i)), "{state}");
    }
    drop(d);
}

// A pin directory under a plain directory is refused (no bpffs is mounted over it):
// tests/tests/lifecycle.rs.
