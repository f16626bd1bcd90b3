//! What the operator reads and types, end to end: refused no-op address changes,
//! live flow counts, the CLI on a closed pipe, and `/metrics` as valid Prometheus
//! text from the first scrape.
//!
//! Privileged: run as root, one test at a time (`cargo xtask test` does both). Each
//! daemon listens for metrics on a port of its own.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    os::unix::process::ExitStatusExt as _,
    process::Stdio,
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

use edge_filter_tests::{
    plan::*,
    topology::{Daemon, Outcome, Topology, connect, echo, echo_server, open_stream, sa},
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn metrics_config(port: u16) -> String {
    format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// The topology with echo servers on access-edge 5269 and 22 (IPv4), and the daemon
/// running the plan's config with `extra`.
fn serving(extra: &str) -> (Topology, Daemon) {
    let t = ok(Topology::new());
    for port in [5269, 22] {
        ok(echo_server(&t.edge, sa(ACCESS4, port)));
    }
    let d = ok(t.start(&ok(t.write_config(extra))));
    (t, d)
}

/// Run the CLI; (exit code, stdout, stderr).
fn run(t: &Topology, args: &[&str]) -> (i32, String, String) {
    let out = ok(t.cli(args));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

fn json(t: &Topology, args: &[&str]) -> Value {
    let (code, out, err) = run(t, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// GET /metrics from the firewall namespace, with an optional Accept header: (the
/// Content-Type, the body).
fn scrape(t: &Topology, addr: SocketAddr, accept: Option<&'static str>) -> (String, String) {
    ok(t.fw
        .enter(move || -> anyhow::Result<(String, String)> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
            write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n{accept}\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            anyhow::ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
            let ctype = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_owned()))
                .unwrap_or_default();
            Ok((ctype, body.to_owned()))
        })
        .and_then(|r| r))
}

/// `promtool check metrics` on `text`: (success, what it said).
fn promtool(text: &str, work: &std::path::Path) -> (bool, String) {
    let path = work.join("scrape.prom");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Finding 4: `addr add` of an entry already there and `addr del` of one that is not
/// are refused with one line naming the entry, and change nothing; `--idempotent`
/// accepts both as done.
#[test]
fn address_changes_that_change_nothing_are_refused_unless_idempotent() {
    let t = ok(Topology::new());
    let d = ok(t.start(&ok(t.write_config(&metrics_config(9836)))));
    let before = json(&t, &["addr", "list", "--json"]);
    for (args, want) in [
        (vec!["addr", "del", "access-edge", "203.0.113.12"], "203.0.113.12"),
        (vec!["addr", "add", "access-edge", "203.0.113.10"], "203.0.113.10"),
        (vec!["addr", "add", "access-edge", "203.0.113.12", "203.0.113.10"], "203.0.113.10"),
        (vec!["addr", "del", "internal-edge", "192.0.2.10", "2001:db8:192::99"], "2001:db8:192::99"),
        (vec!["addr", "add", "access-edge", "203.0.113.12", "203.0.113.12"], "203.0.113.12"),
    ] {
        let (code, _, err) = run(&t, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} does not name {want}");
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert_eq!(json(&t, &["addr", "list", "--json"]), before, "{args:?} changed the sets");
    }
    assert!(!t.state_dir.join("addresses.toml").exists(), "a refused change wrote the state directory");

    // Scripts that converge on a state say so.
    for args in
        [vec!["addr", "del", "--idempotent", "access-edge", "203.0.113.12"], vec!["addr", "add", "--idempotent", "access-edge", "203.0.113.10"]]
    {
        let (code, _, err) = run(&t, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert_eq!(json(&t, &["addr", "list", "--json"]), before, "--idempotent no-ops changed the sets");
    // A real change with --idempotent is made, and the no-op part of it is not recorded.
    let (code, _, err) = run(&t, &["addr", "add", "--idempotent", "access-edge", "203.0.113.10", "203.0.113.12"]);
    assert_eq!(code, 0, "{err}");
    let list = json(&t, &["addr", "list", "access-edge", "--json"]);
    let source = |a: &str| list.as_array().unwrap().iter().find(|e| e["address"] == a).map(|e| e["source"].clone());
    assert_eq!(source("203.0.113.12"), Some("runtime".into()), "{list:#}");
    assert_eq!(source("203.0.113.10"), Some("config".into()), "{list:#}");
    let (code, _, err) = run(&t, &["addr", "del", "access-edge", "203.0.113.12"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&t, &["addr", "del", "access-edge", "203.0.113.12"]);
    assert_eq!(code, 2, "deleting twice: {err}");
    let help = run(&t, &["addr", "add", "--help"]).1;
    assert!(help.contains("--idempotent"), "{help}");
    drop(d);
}

/// Finding 5: a flow idle past its timeout is not live, although the kernel removes
/// it only when a packet of it comes or the daemon's recount runs: `status`, `flows`
/// and `edge_filter_flows` count live flows, judged by the kernel's timeouts.
#[test]
fn flows_past_their_timeout_are_not_counted_as_live() {
    let (t, d) = serving(&format!(
        "{}[state]\nsyn-timeout = 2\nestablished-timeout = 3\nclosing-timeout = 2\nudp-timeout = 2\ncensus-interval = 1\n",
        metrics_config(9837)
    ));
    // The daemon publishes its first census before it says it enforces.
    assert_eq!(json(&t, &["status", "--json"])["census"]["by"], "daemon", "status right after the daemon started");
    let metrics: SocketAddr = "127.0.0.1:9837".parse().unwrap();
    // The live counts come from the daemon's census: read one taken after `since`.
    let gauge = |name: &str, since| -> String {
        let body = ok(t.metrics_counted_after(metrics, since));
        body.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name} in\n{body}")).to_owned()
    };
    let mut idle = ok(open_stream(&t.partner, sa(ACCESS4, 5269), T));
    assert!(echo(&mut idle));
    let since = SystemTime::now();
    let status = ok(t.status_counted_after(since));
    assert_eq!(status["census"]["by"], "daemon", "{status:#}");
    assert_eq!(status["flows"], 1, "{status:#}");
    assert_eq!(status["flow_events"]["flows"]["live"], 1, "{status:#}");
    assert_eq!(gauge("edge_filter_flows", since), "edge_filter_flows 1");
    let (_, text, err) = run(&t, &["status"]);
    assert!(text.contains("established 1"), "status says how many are established: {text}{err}");

    // Idle past the established timeout (3 s): still in the table, no longer live.
    sleep(Duration::from_millis(4500));
    let table = json(&t, &["flows", "--json"]);
    assert!(!table.as_array().unwrap().is_empty(), "the expired flow is still in the table: {table:#}");
    let since = SystemTime::now();
    let status = ok(t.status_counted_after(since));
    assert_eq!(status["flows"], 0, "{status:#}");
    assert_eq!(status["flow_events"]["flows"]["live"], 0, "{status:#}");
    assert_eq!(status["flow_events"]["flows"]["evicted"], 0, "an expired flow is not an evicted one: {status:#}");
    assert_eq!(gauge("edge_filter_flows", since), "edge_filter_flows 0");
    let (_, text, _) = run(&t, &["flows"]);
    assert!(text.lines().last().unwrap_or("").starts_with("0 established"), "{text}");
    let (_, text, _) = run(&t, &["status"]);
    assert!(text.contains("established 0"), "{text}");
    drop(d);
}

/// Finding 12: a scrape and `status` do not walk the state tables; they read the
/// census the daemon takes every `state.census-interval` on its own thread, and say
/// when it was taken. With an hour between censuses, a new connection is in the
/// table (`flows` walks it) and not yet in the counts; a SIGHUP that shortens the
/// interval brings the next census, which counts it. The census goes with the daemon.
#[test]
fn scrapes_and_status_read_the_daemons_census_instead_of_walking_the_tables() {
    let t = ok(Topology::new());
    ok(echo_server(&t.edge, sa(ACCESS4, 5269)));
    let config = |interval: u32| ok(t.write_config(&format!("{}[state]\ncensus-interval = {interval}\n", metrics_config(9838))));
    let d = ok(t.start(&config(3600)));
    let metrics: SocketAddr = "127.0.0.1:9838".parse().unwrap();
    let census_file = edge_filter::pins::Pins::new(&t.pin_dir).census_path();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !census_file.exists() {
        assert!(Instant::now() < deadline, "the daemon publishes its census at {}", census_file.display());
        sleep(Duration::from_millis(50));
    }
    // The census thread yields to scrapes and signals: it runs at nice 19, the rest of
    // the daemon at 0 (field 19 of /proc/<pid>/task/<tid>/stat, after the command).
    let pid = d.pid().expect("the daemon runs");
    let nice_of = |name: &str| -> Vec<i64> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("stat")).ok())
            .filter(|stat| stat.contains(&format!("({name})")))
            .map(|stat| stat.rsplit_once(") ").unwrap().1.split(' ').nth(16).unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(nice_of("census"), [19], "the census thread's nice value");
    assert_eq!(nice_of("edge-filter"), [0], "the main thread's nice value");

    let mut conn = ok(open_stream(&t.partner, sa(ACCESS4, 5269), T));
    assert!(echo(&mut conn));
    let listed = json(&t, &["flows", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "flows walks the table: {listed:#}");
    let status = json(&t, &["status", "--json"]);
    assert_eq!(status["census"]["by"], "daemon", "{status:#}");
    assert_eq!(status["flows"], 0, "status counts as of the daemon's census, taken before the connection: {status:#}");
    let (_, body) = scrape(&t, metrics, None);
    assert!(body.lines().any(|l| l == "edge_filter_flows 0"), "a scrape reads the census too:\n{body}");
    assert!(body.lines().any(|l| l.starts_with("edge_filter_census_timestamp_seconds ")), "{body}");
    assert!(body.lines().any(|l| l.starts_with("edge_filter_census_duration_seconds ")), "{body}");
    let (_, text, err) = run(&t, &["status"]);
    assert!(text.contains("counted by daemon"), "status says whose count it shows: {text}{err}");

    // A shorter interval takes effect at once: the next census counts the connection.
    let since = SystemTime::now();
    config(1);
    d.signal(libc::SIGHUP);
    let body = ok(t.metrics_counted_after(metrics, since));
    assert!(body.lines().any(|l| l == "edge_filter_flows 1"), "{body}");
    assert_eq!(ok(t.status_counted_after(since))["flows"], 1);
    assert!(echo(&mut conn));

    let st = ok(d.stop());
    assert!(st.success(), "{st:?}");
    assert!(!census_file.exists(), "the census goes with its daemon");
    let status = json(&t, &["status", "--json"]);
    assert_eq!(status["census"]["by"], "this command", "without a daemon, status counts for itself: {status:#}");
    assert_eq!(status["flows"], 1, "{status:#}");
}

/// A pipe whose reader is already gone: the first write fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are new and ours; the read end is closed at once.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

/// Finding 6: `edge-filter status | head -1` ends quietly, as coreutils do, instead of
/// panicking on the broken pipe.
#[test]
fn the_cli_ends_quietly_on_a_closed_pipe() {
    let t = ok(Topology::new());
    let config = ok(t.write_config(&metrics_config(9839)));
    let d = ok(t.start(&config));
    let config = config.display().to_string();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["flows"],
        vec!["flows", "--json"],
        vec!["stats"],
        vec!["addr", "list"],
        vec!["check", "--config", &config],
    ] {
        let out = ok(t.edge_filter()).args(&args).stdout(Stdio::from(closed_pipe())).stderr(Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let quiet = out.status.success() || out.status.signal() == Some(libc::SIGPIPE);
        assert!(quiet, "{args:?}: {:?}: {err}", out.status);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
    drop(d);
}

/// Finding 11: `/metrics` is valid Prometheus text (promtool says so) on a scrape
/// taken while traffic flows; OpenMetrics only when asked for; every series that can
/// exist is there from the first scrape, at 0.
#[test]
fn metrics_are_valid_prometheus_text_with_every_series_from_the_first_scrape() {
    let (t, d) = serving(&metrics_config(9838));
    let addr: SocketAddr = "127.0.0.1:9838".parse().unwrap();

    let (ctype, first) = scrape(&t, addr, None);
    assert!(ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"), "{ctype}");
    for line in [
        "edge_filter_packets_total{action=\"drop\",interface=\"out0\",reason=\"no_rule\"} 0",
        "edge_filter_packets_total{action=\"pass\",interface=\"fe0\",reason=\"rule\"} 0",
        "edge_filter_bytes_total{action=\"drop\",interface=\"ext0\",reason=\"spoofed\"} 0",
        "edge_filter_packets_total{action=\"would_drop\",interface=\"int0\",reason=\"no_rule\"} 0",
        "edge_filter_rule_hits_total{rule=\"federation-in\"} 0",
        "edge_filter_events_total{event=\"drop_logged\"} 0",
        "edge_filter_flow_events_total{event=\"evicted\"} 0",
        "edge_filter_flows 0",
    ] {
        assert!(first.lines().any(|l| l == line), "missing {line:?} in the first scrape:\n{first}");
    }
    let (good, said) = promtool(&first, &t.work);
    assert!(good, "promtool check metrics on the first scrape: {said}\n{first}");

    // Traffic while scraping: an echoing connection, refused probes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut conn = ok(open_stream(&t.partner, sa(ACCESS4, 5269), T));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(echo(&mut conn));
                n += 1;
            }
            n
        })
    };
    assert_eq!(ok(connect(&t.partner, sa(ACCESS4, 22), Duration::from_millis(300))), Outcome::TimedOut);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut busy = String::new();
    while Instant::now() < deadline {
        let (ctype, body) = scrape(&t, addr, None);
        assert!(ctype.contains("version=0.0.4"), "{ctype}");
        busy = body;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(traffic.join().unwrap() > 10, "traffic flowed");
    let (good, said) = promtool(&busy, &t.work);
    assert!(good, "promtool check metrics with traffic flowing: {said}\n{busy}");
    assert!(!busy.contains("# EOF"), "no OpenMetrics terminator in text 0.0.4:\n{busy}");
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
    let drops =
        busy.lines().find(|l| l.starts_with("edge_filter_packets_total{action=\"drop\",interface=\"out0\",reason=\"no_rule\"}")).map(value).unwrap();
    assert!(drops >= 1, "{busy}");
    // Every HELP/TYPE line names a metric that has samples under that very name.
    for l in busy.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split(' ').nth(2).unwrap();
        assert!(busy.lines().any(|s| !s.starts_with('#') && (s.starts_with(&format!("{name}{{")) || s.starts_with(&format!("{name} ")))), "{l}");
    }

    // A scraper that prefers OpenMetrics gets text 0.0.4, which every Prometheus reads.
    let (ctype, text) = scrape(&t, addr, Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"));
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert!(!text.contains("# EOF") && text.lines().any(|l| l == "# TYPE edge_filter_packets_total counter"), "{text}");
    drop(d);
}
