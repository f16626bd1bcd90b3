//! The config, the state directory and reloads, end to end: how runtime address
//! changes compose with the config (and say so), `check` refusing what `run` refuses,
//! and a refused reload being visible to whoever asked for it.
//!
//! Privileged: run as root, one test at a time (`cargo xtask test` does both).

use std::{thread::sleep, time::Duration};

use edge_filter_tests::topology::{Daemon, Topology};
use serde_json::Value;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The config of the topology with access-edge set to `access` (TOML list items) and
/// the metrics endpoint on `metrics`.
fn config_with_access(t: &Topology, access: &str, metrics: &str) -> std::path::PathBuf {
    let base = t.base_config().replace("access-edge = [\"203.0.113.10\", \"2001:db8:203::10\"]", &format!("access-edge = [{access}]"));
    assert!(base.contains(&format!("access-edge = [{access}]")), "{base}");
    ok(t.work_file("edge-filter.toml", &format!("{base}\n[metrics]\nlisten = \"{metrics}\"\n")))
}

/// SIGHUP, and wait until the daemon has logged one more outcome (applied or not).
fn hup(d: &Daemon) {
    let outcomes =
        |log: &str| log.lines().filter(|l| l.contains("applied") || l.contains("keeping the running config") || l.contains("refused")).count();
    let before = outcomes(&d.log_text());
    d.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while outcomes(&d.log_text()) <= before {
        assert!(std::time::Instant::now() < deadline, "SIGHUP not handled:\n{}", d.log_text());
        sleep(Duration::from_millis(50));
    }
}

/// `addr list --json`: (set, address, source) of each entry.
fn list(t: &Topology) -> Vec<(String, String, String)> {
    let out = ok(t.cli(&["addr", "list", "--json"]));
    assert!(out.status.success(), "addr list: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("addr list --json is JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["set"].as_str().unwrap().to_owned(), e["address"].as_str().unwrap().to_owned(), e["source"].as_str().unwrap().to_owned()))
        .collect()
}

fn source_of(t: &Topology, address: &str) -> Option<String> {
    list(t).into_iter().find(|(s, a, _)| s == "access-edge" && a == address).map(|(_, _, src)| src)
}

fn cli_ok(t: &Topology, args: &[&str]) -> String {
    let out = ok(t.cli(args));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Finding 3: the state directory never silently overrides the config.
#[test]
fn runtime_changes_compose_with_the_config_as_documented() {
    let t = ok(Topology::new());
    let metrics = "127.0.0.1:9936";
    let both = "\"203.0.113.10\", \"2001:db8:203::10\"";
    let config = config_with_access(&t, both, metrics);
    let d = ok(t.start(&config));

    // A runtime removal of a config entry: shown as such, and warned about.
    cli_ok(&t, &["addr", "del", "access-edge", "203.0.113.10"]);
    assert_eq!(source_of(&t, "203.0.113.10").as_deref(), Some("removed"), "{:?}", list(&t));
    let status = cli_ok(&t, &["status"]);
    assert!(status.contains("warning") && status.contains("203.0.113.10"), "status does not warn:\n{status}");
    let check = cli_ok(&t, &["check", "--config", config.to_str().unwrap()]);
    assert!(check.contains("warning") && check.contains("203.0.113.10") && check.contains("removed"), "check does not warn:\n{check}");
    let status: Value = serde_json::from_str(&cli_ok(&t, &["status", "--json"])).unwrap();
    assert!(status["overrides"].as_array().is_some_and(|o| o.iter().any(|w| w.as_str().unwrap().contains("203.0.113.10"))), "{status:#}");

    // The config drops the entry: the removal matches nothing and is pruned. The
    // config then puts the address back: it is enforced.
    config_with_access(&t, "\"2001:db8:203::10\"", metrics);
    hup(&d);
    assert!(d.log_text().contains("pruned"), "no pruning logged:\n{}", d.log_text());
    assert_eq!(source_of(&t, "203.0.113.10"), None);
    let status = cli_ok(&t, &["status"]);
    assert!(status.lines().any(|l| l.contains("pruned") && l.contains("203.0.113.10")), "status does not show the pruning:\n{status}");
    assert!(!status.contains("warning"), "nothing overrides the config now:\n{status}");
    let listed = cli_ok(&t, &["addr", "list"]);
    assert!(listed.lines().any(|l| l.contains("pruned") && l.contains("203.0.113.10")), "{listed}");
    config_with_access(&t, both, metrics);
    hup(&d);
    assert_eq!(source_of(&t, "203.0.113.10").as_deref(), Some("config"), "put back in the config, still left out: {:?}", list(&t));

    // While the config keeps an entry, its runtime removal stays, with a warning in
    // the log at each reload.
    cli_ok(&t, &["addr", "del", "access-edge", "203.0.113.10"]);
    hup(&d);
    assert_eq!(source_of(&t, "203.0.113.10").as_deref(), Some("removed"));
    assert!(d.log_text().lines().any(|l| l.contains("WARN") && l.contains("203.0.113.10") && l.contains("removed at runtime")), "{}", d.log_text());
    // `addr add` of a config entry undoes the removal; it stays a config entry.
    cli_ok(&t, &["addr", "add", "access-edge", "203.0.113.10"]);
    assert_eq!(source_of(&t, "203.0.113.10").as_deref(), Some("config"));
    // `addr add` of an address the config has records nothing (it is refused, or
    // skipped with --idempotent): the config owns it, and taking it out of the config
    // takes it out of the running sets.
    let (code, out) = outcome(&t, &["addr", "add", "access-edge", "2001:db8:203::10"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("already in"), "{out}");
    cli_ok(&t, &["addr", "add", "--idempotent", "access-edge", "2001:db8:203::10"]);
    assert_eq!(source_of(&t, "2001:db8:203::10").as_deref(), Some("config"));
    let state = std::fs::read_to_string(t.state_dir.join("addresses.toml")).unwrap_or_default();
    assert!(!state.contains("2001:db8:203::10"), "{state}");
    config_with_access(&t, "\"203.0.113.10\"", metrics);
    hup(&d);
    assert_eq!(source_of(&t, "2001:db8:203::10"), None, "removed from the config, still enforced: {:?}", list(&t));

    // A runtime addition the config takes over becomes a config entry (the addition
    // is pruned), and goes when the config drops it.
    cli_ok(&t, &["addr", "add", "access-edge", "203.0.113.11"]);
    assert_eq!(source_of(&t, "203.0.113.11").as_deref(), Some("runtime"));
    config_with_access(&t, "\"203.0.113.10\", \"203.0.113.11\"", metrics);
    hup(&d);
    assert_eq!(source_of(&t, "203.0.113.11").as_deref(), Some("config"));
    assert!(!std::fs::read_to_string(t.state_dir.join("addresses.toml")).unwrap().contains("203.0.113.11"));
    config_with_access(&t, "\"203.0.113.10\"", metrics);
    hup(&d);
    assert_eq!(source_of(&t, "203.0.113.11"), None, "{:?}", list(&t));

    // A runtime addition the config does not have survives reloads and restarts.
    cli_ok(&t, &["addr", "add", "access-edge", "203.0.113.12"]);
    hup(&d);
    assert_eq!(source_of(&t, "203.0.113.12").as_deref(), Some("runtime"));
    d.stop().unwrap();
    cli_ok(&t, &["detach"]);
    let d = ok(t.start(&config));
    assert_eq!(source_of(&t, "203.0.113.12").as_deref(), Some("runtime"));
    assert_eq!(source_of(&t, "203.0.113.10").as_deref(), Some("config"));
    // `check --json` shows the composition `run` applied: each entry with its source.
    let check: Value = serde_json::from_str(&cli_ok(&t, &["check", "--config", config.to_str().unwrap(), "--json"])).unwrap();
    let entries = check["state"]["entries"].as_array().expect("check --json has the state entries");
    assert!(entries.iter().any(|e| e["address"] == "203.0.113.12" && e["source"] == "runtime" && e["enforced"] == true), "{check:#}");
    assert!(entries.iter().any(|e| e["address"] == "203.0.113.10" && e["source"] == "config"), "{check:#}");
    drop(d);
}

/// Run the CLI; (exit code, stdout and stderr).
fn outcome(t: &Topology, args: &[&str]) -> (i32, String) {
    let out = ok(t.cli(args));
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Finding 7: `check` refuses what `run` refuses, and names interfaces by name.
#[test]
fn check_refuses_what_run_refuses() {
    let t = ok(Topology::new());
    let file = |name: &str, toml: &str| ok(t.work_file(name, toml)).display().to_string();
    let missing = file("missing.toml", &format!("{}\n[[interface]]\nname = \"nosuch0\"\nrole = \"edge\"\n", t.base_config()));
    let (code, out) = outcome(&t, &["check", "--config", &missing]);
    assert_eq!(code, 1, "check passes a config with an interface that does not exist:\n{out}");
    assert!(out.contains("unknown interface `nosuch0`"), "{out}");
    let (code, _) = outcome(&t, &["run", "--config", &missing]);
    assert_ne!(code, 0, "run refuses it too");

    let role = file("role.toml", "[[interface]]\nname = \"out0\"\nrole = \"inside\"\n");
    let (code, out) = outcome(&t, &["check", "--config", &role]);
    assert_eq!(code, 1);
    assert!(out.contains("interface \"out0\" role = \"inside\": outside, edge or host"), "{out}");
    let unnamed = file("unnamed.toml", "[[interface]]\nrole = \"edge\"\n");
    let (_, out) = outcome(&t, &["check", "--config", &unnamed]);
    assert!(out.contains("interface[0].name = (missing)"), "the index where the name is missing: {out}");
    // The file alone, as on another machine.
    let (code, out) = outcome(&t, &["check", "--offline", "--config", &missing]);
    assert_eq!(code, 0, "{out}");

    // A foreign XDP program on a NIC: `run` refuses it, so `check` does.
    let good = file("good.toml", &format!("{}\n[metrics]\nlisten = \"127.0.0.1:9938\"\n", t.base_config()));
    let (code, out) = outcome(&t, &["check", "--config", &good]);
    assert_eq!(code, 0, "{out}");
    let foreign = t.foreign_xdp("out0");
    let (held, id) = ok(foreign);
    let (code, out) = outcome(&t, &["check", "--config", &good]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("interface `out0` already has XDP program id {id}")), "{out}");
    drop(held);

    // The daemon's own links are not foreign: `check` before a restart passes.
    let d = ok(t.start(std::path::Path::new(&good)));
    let (code, out) = outcome(&t, &["check", "--config", &good]);
    assert_eq!(code, 0, "{out}");
    drop(d);
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

/// Finding 8: a refused reload is visible to the operator who asked for it.
#[test]
fn a_refused_reload_fails_the_reload_command_and_is_counted() {
    let t = ok(Topology::new());
    let metrics = "127.0.0.1:9937";
    let good = format!("{}\n[metrics]\nlisten = \"{metrics}\"\n", t.base_config());
    let config = t.work.join("edge-filter.toml");
    std::fs::write(&config, &good).unwrap();
    let d = ok(t.start(&config));

    std::fs::write(&config, format!("{good}\n[policy]\nfederation-port = 0\n")).unwrap();
    let (code, out) = outcome(&t, &["reload"]);
    assert_ne!(code, 0, "reload of an invalid config succeeds:\n{out}");
    assert!(out.contains("policy.federation-port = 0"), "the daemon's reason: {out}");
    assert!(d.log_text().contains("refused"), "{}", d.log_text());
    let status: Value = serde_json::from_str(&cli_ok(&t, &["status", "--json"])).unwrap();
    assert_eq!(status["last_reload"]["outcome"], "refused", "{status:#}");
    assert!(status["last_reload"]["reason"].as_str().unwrap().contains("policy.federation-port = 0"), "{status:#}");
    let text = ok(t.metrics(metrics.parse().unwrap()));
    assert_eq!(metric(&text, "edge_filter_reloads_total{outcome=\"refused\"}"), Some(1), "{text}");
    assert_eq!(metric(&text, "edge_filter_reloads_total{outcome=\"applied\"}"), Some(0), "{text}");

    // An interface that does not exist: valid TOML, refused by the daemon.
    std::fs::write(&config, format!("{good}\n[[interface]]\nname = \"nosuch0\"\nrole = \"edge\"\n")).unwrap();
    let (code, out) = outcome(&t, &["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("unknown interface `nosuch0`"), "{out}");

    std::fs::write(&config, format!("{good}\n[policy]\ndry-run = true\n")).unwrap();
    let (code, out) = outcome(&t, &["reload"]);
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&cli_ok(&t, &["status", "--json"])).unwrap();
    assert_eq!(status["dry_run"], true, "{status:#}");
    let text = ok(t.metrics(metrics.parse().unwrap()));
    assert_eq!(metric(&text, "edge_filter_reloads_total{outcome=\"applied\"}"), Some(1), "{text}");
    assert_eq!(metric(&text, "edge_filter_reloads_total{outcome=\"refused\"}"), Some(2), "{text}");

    // A pid that is not the daemon's is never signalled.
    let (code, out) = outcome(&t, &["reload", "--pid", "1"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("pid 1 is not the daemon"), "{out}");

    // With no daemon, `reload` says so.
    d.stop().unwrap();
    let (code, out) = outcome(&t, &["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not running"), "{out}");
}
