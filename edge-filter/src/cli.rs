//! The command line: `edge-filter <command>`.
//!
//! Contract: bad input is refused before anything changes, with one line naming the
//! bad value (exit status 2; `check` says 1 for a config `run` would refuse, and `reload` 1 for
//! a config the daemon refused, as verdicts); failures of the system are reported with their causes
//! (`{:#}`, so a verifier log reaches the operator) and exit status 1. Commands that
//! change the pin directory hold its lock.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{
    addr::{AddressSets, Prefix, SetId},
    census::Census,
    config::Config,
    daemon,
    loader::Maps,
    pins::{self, Pins},
    report::Snapshot,
    statedir::{Changes, ReloadStatus, Source},
};

/// An XDP firewall for XMPP federation through a Lync Server 2013 Edge server.
#[derive(Parser, Debug)]
#[command(name = "edge-filter", version)]
pub struct Cli {
    /// Where maps and links are pinned (a directory on a bpffs).
    #[arg(long, global = true, env = "EDGE_FILTER_PIN_DIR", default_value = "/sys/fs/bpf/edge-filter")]
    pub pin_dir: PathBuf,
    /// Where runtime address changes are kept across reboots.
    #[arg(long, global = true, env = "EDGE_FILTER_STATE_DIR", default_value = "/var/lib/edge-filter")]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load, attach to every configured NIC, pin, serve /metrics; SIGHUP re-reads the
    /// config, SIGTERM/SIGINT exit leaving the filter attached. One daemon per pin
    /// directory: a second `run` on it is refused.
    ///
    /// Example: edge-filter run --config /etc/edge-filter/edge-filter.toml
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config as `run` would and print the effective policy, with the
    /// state directory's runtime address changes and where they override the config;
    /// exit 0 if `run` would take it, 1 if not.
    ///
    /// Besides the file: every interface exists and carries no foreign XDP program,
    /// the pin directory is on a bpffs (or one can be mounted), the state directory
    /// reads and composes with the config.
    ///
    /// Example: edge-filter check --config /etc/edge-filter/edge-filter.toml
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Check the file alone, not this host's interfaces, pin and state
        /// directories (for a config written on another machine).
        #[arg(long)]
        offline: bool,
    },
    /// Make the running daemon re-read its config (SIGHUP) and wait for the outcome:
    /// exit 0 when applied, 1 with the daemon's reason when refused.
    ///
    /// Example (systemd): ExecReload=/usr/local/bin/edge-filter reload --pid $MAINPID
    Reload {
        /// The daemon's pid; it must be the daemon that records its outcomes in
        /// --state-dir (default: the pid recorded there).
        #[arg(long)]
        pid: Option<u32>,
        /// Give up after SECONDS without an outcome.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
    },
    /// What is attached where, the settings, set sizes, flow-table use.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Change or list the edge address sets while traffic flows.
    #[command(subcommand)]
    Addr(AddrCommand),
    /// Counters per NIC and action/reason, and hits per rule.
    Stats {
        /// Print again every SECONDS.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// The state tables: each connection's tuple, state, age and the rule that opened it.
    Flows {
        #[arg(long)]
        json: bool,
    },
    /// Remove links, pins and programs (all of them when no --iface is given). The
    /// state directory stays. Refused while `run` holds the pin directory: stop it first.
    Detach {
        /// Detach from this NIC only (repeatable).
        #[arg(long = "iface", value_name = "NAME")]
        ifaces: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AddrCommand {
    /// Add addresses or prefixes to a set: all of them, or none if one is refused
    /// (an entry the set already holds is refused, exit status 2, unless
    /// --idempotent).
    ///
    /// Example: edge-filter addr add access-edge 203.0.113.11 2001:db8:203::11
    Add {
        /// Accept entries the set already holds as done, for scripts that converge on
        /// a state.
        #[arg(long)]
        idempotent: bool,
        /// access-edge or internal-edge.
        set: String,
        /// ADDR or ADDR/PREFIX.
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Remove addresses or prefixes from a set: all of them, or none if one is refused
    /// (an entry the set does not hold is refused, exit status 2, unless
    /// --idempotent).
    ///
    /// Example: edge-filter addr del access-edge 203.0.113.11
    Del {
        /// Accept entries the set does not hold as done, for scripts that converge on
        /// a state.
        #[arg(long)]
        idempotent: bool,
        /// access-edge, internal-edge, or another set of the running filter.
        set: String,
        /// ADDR or ADDR/PREFIX, as the set holds it.
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// List the sets (or one), with where each entry came from.
    List {
        set: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Input refused before anything changed: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Run the command line; the exit code says how it went.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // The Rust runtime ignores SIGPIPE, so a write to a closed pipe (`status |
        // head -1`) fails and `println!` panics. The commands that print end on it
        // quietly instead, as coreutils do; `run` keeps it ignored, so a scraper that
        // hangs up is an error on its connection, not the end of the daemon.
        // SAFETY: setting a signal's disposition to its default before any thread
        // is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-filter: {e:#}");
            let bad_nic = matches!(
                e.downcast_ref::<pins::PinError>(),
                Some(
                    pins::PinError::UnknownInterface { .. }
                        | pins::PinError::Foreign { .. }
                        | pins::PinError::IfindexTooHigh { .. }
                        | pins::PinError::DaemonRunning { .. }
                        | pins::PinError::NotBpffs { .. }
                )
            );
            if bad_nic || e.downcast_ref::<BadInput>().is_some() || e.downcast_ref::<crate::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let pins = Pins::new(&cli.pin_dir);
    match cli.command {
        Command::Run { config: path } => {
            let config = Config::load(&path)?;
            need_root()?;
            daemon::run(&path, config, pins, cli.state_dir)?;
        }
        Command::Check { config, json, offline } => return check(&pins, &cli.state_dir, &config, json, offline),
        Command::Reload { pid, timeout } => return reload(&cli.state_dir, pid, Duration::from_secs(timeout)),
        Command::Status { json } => status(&pins, &cli.state_dir, json)?,
        Command::Addr(cmd) => addr(&pins, &cli.state_dir, cmd)?,
        Command::Stats { watch, json } => loop {
            need_root()?;
            let maps = open(&pins)?;
            let snap = Snapshot::read(&maps, census(&pins, &maps)?)?;
            if json {
                println!("{}", serde_json::to_string(&snap)?);
            } else {
                print!("{}", snap.table());
            }
            match watch {
                Some(s) => std::thread::sleep(Duration::from_secs(s.max(1))),
                None => break,
            }
        },
        Command::Flows { json } => flows(&pins, json)?,
        Command::Detach { ifaces } => detach(&pins, &ifaces)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn need_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (CAP_BPF and CAP_NET_ADMIN) to load and read BPF programs and maps");
    }
    Ok(())
}

/// The pinned maps of a running filter.
pub fn open(pins: &Pins) -> anyhow::Result<Maps> {
    if !pins.exists() {
        bail!("no filter is pinned at {} (start one with `edge-filter run`)", pins.dir().display());
    }
    Maps::open_pinned(&pins.maps_dir()).context("open the pinned maps")
}

/// `check`: the file, then (unless `offline`) what `run` would refuse on this host;
/// every refusal is one line, and any makes the exit status 1.
fn check(pins: &Pins, state_dir: &Path, path: &Path, json: bool, offline: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-filter: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if offline {
        print_check(&config, json, None, &[])?;
        return Ok(ExitCode::SUCCESS);
    }
    let file = path.display();
    let mut refusals = Vec::new();
    for iface in &config.interfaces {
        if let Err(e) = pins::preflight(pins, &iface.name) {
            refusals.push(format!("{file}: {e}"));
        }
    }
    if let Err(e) = pins.check_bpffs() {
        refusals.push(e.to_string());
    }
    let composed = match Changes::load(state_dir) {
        Ok(changes) => match changes.compose(&config.sets) {
            Ok(c) => Some(c),
            Err(e) => {
                refusals.push(format!("{file} with the runtime changes in {}: {e}", state_dir.display()));
                None
            }
        },
        Err(e) => {
            refusals.push(e.to_string());
            None
        }
    };
    if !refusals.is_empty() {
        for r in &refusals {
            eprintln!("edge-filter: {r}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let composed = composed.expect("no refusal");
    let open = open_host_addresses(&config, &composed.sets);
    let state = serde_json::json!({
        "state_dir": state_dir,
        "entries": composed.entries.iter().map(|(set, p, src)| serde_json::json!({
            "set": set, "address": p.to_string(), "source": src.name(), "enforced": *src != Source::Removed,
        })).collect::<Vec<_>>(),
        "pruned": composed.pruned,
        "overrides": composed.overrides,
    });
    print_check(&config, json, Some(state), &open)?;
    if !json {
        let changed: Vec<_> = composed.entries.iter().filter(|(_, _, src)| *src != Source::Config).collect();
        if !changed.is_empty() {
            println!("\nruntime address changes in {} (`run` applies them over the config):", state_dir.display());
            for (set, p, src) in changed {
                let what = if *src == Source::Removed { "removed at runtime: not enforced" } else { "added at runtime" };
                println!("  {set} {p}: {what}");
            }
        }
        for p in &composed.pruned {
            println!("`run` would prune: {p}");
        }
    }
    for o in &composed.overrides {
        eprintln!("edge-filter: warning: the state directory overrides the config: {o}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `reload`: SIGHUP to the daemon recorded in the state directory, then wait for its
/// next recorded outcome.
fn reload(state_dir: &Path, pid: Option<u32>, timeout: Duration) -> anyhow::Result<ExitCode> {
    let path = ReloadStatus::path(state_dir);
    let before = ReloadStatus::load(state_dir)?
        .with_context(|| format!("no daemon has recorded a start in {} (is `edge-filter run` running with this --state-dir?)", path.display()))?;
    if let Some(pid) = pid.filter(|p| *p != before.pid) {
        bail!("pid {pid} is not the daemon that records its outcomes in {} (pid {})", path.display(), before.pid);
    }
    let alive = |s: &ReloadStatus| crate::statedir::process_start_time(s.pid).is_some_and(|t| s.start_time == 0 || t == s.start_time);
    if !alive(&before) {
        bail!("the daemon that wrote {} (pid {}) is not running", path.display(), before.pid);
    }
    // SAFETY: kill with a pid checked above to be the daemon's (same start time).
    if unsafe { libc::kill(before.pid as libc::pid_t, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("signal the daemon (pid {})", before.pid));
    }
    let deadline = std::time::Instant::now() + timeout;
    let after = loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(s) = ReloadStatus::load(state_dir)?
            && (s.pid != before.pid || s.seq > before.seq)
        {
            break s;
        }
        if !alive(&before) {
            bail!("the daemon (pid {}) exited before recording the outcome of the reload", before.pid);
        }
        if std::time::Instant::now() > deadline {
            bail!("no outcome from the daemon (pid {}) within {} s; see its log", before.pid, timeout.as_secs());
        }
    };
    for o in &after.overrides {
        eprintln!("edge-filter: warning: the state directory overrides the config: {o}");
    }
    match (after.outcome.as_str(), after.reason) {
        ("refused", reason) => {
            eprintln!("edge-filter: reload refused: {}; the running config stays", reason.unwrap_or_default());
            Ok(ExitCode::FAILURE)
        }
        (outcome, _) => {
            println!("{outcome} {} (reload {})", after.config, after.seq);
            for p in &after.pruned {
                println!("pruned: {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Under `unpoliced = "pass"`, a `host` NIC's own addresses that are in no edge set
/// (link-local ones aside: `host-link-local` polices those) let everything addressed
/// to them through unjudged, the machine's SSH included: one warning each.
fn open_host_addresses(config: &Config, sets: &AddressSets) -> Vec<String> {
    if config.policy.unpoliced != crate::policy::Fate::Pass {
        return Vec::new();
    }
    let mut out = Vec::new();
    for i in config.interfaces.iter().filter(|i| i.role == crate::policy::Role::Host) {
        let addrs = match pins::addresses(&i.name) {
            Ok(a) => a,
            Err(e) => {
                out.push(format!("interface {}: cannot read its addresses to tell which are in no edge set: {e}", i.name));
                continue;
            }
        };
        for addr in addrs {
            let link_local = match addr {
                std::net::IpAddr::V4(a) => a.is_link_local(),
                std::net::IpAddr::V6(a) => a.is_unicast_link_local(),
            };
            if !link_local && sets.lookup(addr) & edge_filter_common::set::EDGE_BITS == 0 {
                out.push(format!(
                    "interface {} has role host and the address {addr}, in no edge set: with policy.unpoliced = \"pass\" everything addressed to it passes unjudged (SSH included); put it in a set or set unpoliced = \"drop\"",
                    i.name
                ));
            }
        }
    }
    out
}

fn print_check(config: &Config, json: bool, state: Option<serde_json::Value>, open: &[String]) -> anyhow::Result<()> {
    let rows = config.policy.rules.view(&config.sets);
    let sets = &config.sets;
    let overlaps: Vec<String> =
        sets.overlaps().into_iter().map(|(p, s, q, t)| format!("{p} in {} is also in {} ({q})", sets.name(s), sets.name(t))).collect();
    let members: Vec<serde_json::Value> = sets
        .sets()
        .map(|s| {
            serde_json::json!({
                "set": sets.name(s),
                "kind": if s.is_edge() { "edge" } else { "peer" },
                "addresses": sets.of(s).map(|p| p.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let p = &config.policy;
    // A host NIC polices the machine's link-local, broadcast and multicast addresses:
    // whoever manages it over them (or over its edge addresses) needs a row.
    let lockout: Vec<String> = config
        .interfaces
        .iter()
        .filter(|i| i.role == crate::policy::Role::Host && p.host_link_local == crate::policy::LinkScope::Police)
        .map(|i| {
            let dhcp = if p.host_dhcp { ", DHCP answers" } else { "" };
            let no_dhcp = if p.host_dhcp { "" } else { "; a host that takes its address by DHCP needs policy.host-dhcp = true" };
            format!(
                "interface {} has role host: only rows, ARP{dhcp} and neighbour discovery reach this machine through it, link-local, broadcast and multicast destinations included; SSH or other management through it needs a [[rule]] (or policy.host-link-local = \"pass\" for the link-local ones){no_dhcp}",
                i.name
            )
        })
        .chain(open.iter().cloned())
        .collect();
    if json {
        let ifaces: Vec<_> =
            config.interfaces.iter().map(|i| serde_json::json!({"name": i.name, "role": i.role.name(), "mode": i.mode.name()})).collect();
        let v = serde_json::json!({
            "rules": rows,
            "sets": members,
            "overlaps": overlaps,
            "interfaces": ifaces,
            "warnings": lockout,
            "max_flows": config.max_flows,
            "metrics": config.metrics.map(|m| m.to_string()),
        });
        let mut v = v;
        p.switches_json(&mut v);
        if let Some(state) = state {
            v["state"] = state;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", config.policy.rules.render(sets));
    println!();
    for s in sets.sets() {
        let v: Vec<String> = sets.of(s).map(|p| p.to_string()).collect();
        let kind = if s.is_edge() { "edge set" } else { "peer set" };
        println!("{kind} {}: {}", sets.name(s), if v.is_empty() { "(empty)".to_owned() } else { v.join(", ") });
    }
    for o in &overlaps {
        println!("overlap: {o}");
    }
    println!();
    for i in &config.interfaces {
        println!("interface {} role {} mode {}", i.name, i.role, i.mode.name());
    }
    if config.interfaces.is_empty() {
        println!("no interfaces: `run` would attach nowhere");
    }
    for w in &lockout {
        println!("warning: {w}");
    }
    println!("{}, max-flows {}, metrics {}", p.switches(), config.max_flows, config.metrics.map_or_else(|| "off".to_owned(), |m| m.to_string()));
    Ok(())
}

/// What `status` and `addr list` say about the state directory: where it overrides
/// the config now, and the daemon's last start or reload (with what it pruned).
fn state_report(state_dir: &Path) -> anyhow::Result<(Vec<String>, Option<ReloadStatus>)> {
    let changes = Changes::load(state_dir)?;
    let last = ReloadStatus::load(state_dir)?;
    let mut overrides: Vec<String> = changes.removals().map(|(set, p)| crate::statedir::removal_warning(set, &p)).collect();
    // Additions to a set the config lacks: only the daemon, which has the config, knows.
    overrides.extend(last.iter().flat_map(|l| l.overrides.iter().filter(|o| o.contains("runtime addition")).cloned()));
    Ok((overrides, last))
}

/// The text lines of [`state_report`].
fn print_state_report(state_dir: &Path, overrides: &[String], last: Option<&ReloadStatus>) {
    for o in overrides {
        println!("warning: the state directory ({}) overrides the config: {o}", state_dir.display());
    }
    if let Some(l) = last {
        let what = if l.seq == 0 { "start".to_owned() } else { format!("reload {}", l.seq) };
        match &l.reason {
            Some(r) => println!("last {what} of {}: {}: {r}", l.config, l.outcome),
            None => println!("last {what} of {}: {}", l.config, l.outcome),
        }
        for p in &l.pruned {
            println!("pruned at the last {what}: {p}");
        }
    }
}

fn status(pins: &Pins, state_dir: &Path, json: bool) -> anyhow::Result<()> {
    need_root()?;
    let maps = open(pins)?;
    let links = pins.links()?;
    let ifaces = maps.ifaces()?;
    let policy = maps.policy()?;
    let sets = maps.address_sets()?;
    let snap = Snapshot::read(&maps, census(pins, &maps)?)?;
    let rows: Vec<_> = links
        .iter()
        .map(|l| {
            let role = pins::ifindex(&l.interface).ok().and_then(|ix| ifaces.iter().find(|e| e.ifindex == ix)).map_or("none", |e| e.role.name());
            let mode = pins::xdp_mode(&l.interface).unwrap_or("unknown");
            (l, role, mode)
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "pin_dir": pins.dir(),
            "interfaces": rows.iter().map(|(l, role, mode)| serde_json::json!({
                "name": l.interface, "role": role, "mode": mode, "link_id": l.link_id, "program_id": l.program_id,
            })).collect::<Vec<_>>(),
            "rules": policy.rules.view(&sets),
            "addresses": snap.addresses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "flows": snap.flows,
            "max_flows": maps.max_flows()?,
            "max_embryos": maps.max_embryos()?,
            "max_embryos_out": maps.max_embryos_out()?,
            "max_udp_flows": maps.max_udp_flows()?,
            "flow_events": snap.flow_events,
            "census": snap.census,
            "egress": pins.egress_links(),
        });
        let mut v = v;
        policy.switches_json(&mut v);
        let (overrides, last) = state_report(state_dir)?;
        v["overrides"] = serde_json::json!(overrides);
        v["last_reload"] = serde_json::json!(last);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("pinned at {}", pins.dir().display());
    println!("{:<16} {:<8} {:<7} {:>8} {:>10}", "INTERFACE", "ROLE", "MODE", "LINK", "PROGRAM");
    for (l, role, mode) in &rows {
        println!("{:<16} {:<8} {:<7} {:>8} {:>10}", l.interface, role, mode, l.link_id, l.program_id);
    }
    print!("{}", policy.rules.render(&sets));
    println!("{}", policy.switches());
    let sets: Vec<String> = snap.addresses.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("addresses: {}", sets.join(", "));
    // Live: within the idle timeout of its state, as the kernel judges it. Entries past
    // it stay in the tables until a packet of theirs or the daemon's recount removes
    // them; they are shown apart, never as live.
    let ev = snap.flow_events;
    println!(
        "live: established {}, closing {}, handshakes {}, udp {} ({})",
        ev.live.established,
        ev.live.closing,
        ev.live.handshakes,
        ev.live.udp,
        snap.census.line()
    );
    for (name, t, max) in [
        ("flows", ev.flows, maps.max_flows()?),
        ("handshakes from outside", ev.embryos, maps.max_embryos()?),
        ("handshakes from the trusted side", ev.embryos_out, maps.max_embryos_out()?),
        ("udp flows", ev.udp, maps.max_udp_flows()?),
    ] {
        println!(
            "{name}: {} live of {max}, {} past their timeout; created {}, picked up {}, expired {}, closed {}, evicted {}, insert failures {}",
            t.live, t.stale, t.created, t.picked_up, t.expired, t.closed, t.evicted, t.insert_failed
        );
    }
    println!("handshakes not recorded because their source held its share ({} flows per source): {}", policy.sources.max_flows, ev.source_limited);
    let egress = pins.egress_links();
    if !egress.is_empty() {
        println!("host-mode egress (TCX): {}", egress.join(", "));
    }
    let (overrides, last) = state_report(state_dir)?;
    print_state_report(state_dir, &overrides, last.as_ref());
    Ok(())
}

/// The state tables' census: the one the daemon of `pins` published, or, with no
/// daemon running, one taken now (a pass over the tables).
fn census(pins: &Pins, maps: &Maps) -> anyhow::Result<Census> {
    match Census::published(&pins.census_path()) {
        Some(c) => Ok(c),
        None => Ok(Census::take(maps, None)?),
    }
}

fn flows(pins: &Pins, json: bool) -> anyhow::Result<()> {
    need_root()?;
    let maps = open(pins)?;
    let now = crate::report::monotonic_ns();
    let names = maps.rule_names()?;
    // The footer counts what is listed: one pass over the tables, in the census's order.
    let mut tally = crate::census::Tally::new(&maps)?;
    let mut rows = Vec::new();
    for (i, table) in [maps.flows()?, maps.embryos()?, maps.embryos_out()?, maps.udp_flows()?].iter().enumerate() {
        for (k, f) in table {
            tally.add(i, f);
            rows.push(crate::report::FlowRow::new(&k.0, f, &names, now));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<5} {:<46} {:<46} {:<12} {:>9} {:>9}  RULE", "PROTO", "OPENER", "RESPONDER", "STATE", "AGE", "IDLE");
    for r in &rows {
        let state = if r.picked_up { format!("{}*", r.state) } else { r.state.to_owned() };
        println!("{:<5} {:<46} {:<46} {:<12} {:>8.1}s {:>8.1}s  {}", r.proto, r.opener, r.responder, state, r.age_secs, r.idle_secs, r.rule);
    }
    if rows.iter().any(|r| r.picked_up) {
        println!("* picked up from the Edge's side: opened through another node");
    }
    let ev = tally.finish(None).flow_events(&maps.events()?);
    println!(
        "{} established, {} closing of {}, {} handshakes of {}, {} udp of {} live; past their timeout: {} flows, {} handshakes, {} udp; evicted: {} flows, {} handshakes, {} udp",
        ev.live.established,
        ev.live.closing,
        maps.max_flows()?,
        ev.live.handshakes,
        maps.max_embryos()?,
        ev.live.udp,
        maps.max_udp_flows()?,
        ev.flows.stale,
        ev.embryos.stale,
        ev.udp.stale,
        ev.flows.evicted,
        ev.embryos.evicted,
        ev.udp.evicted
    );
    Ok(())
}

/// The set named `s` among `sets` (the running filter's: edge sets and its peers).
fn parse_set(sets: &AddressSets, s: &str) -> anyhow::Result<SetId> {
    sets.set_named(s).map_err(|e| BadInput(e.to_string()).into())
}

fn parse_prefixes(addrs: &[String]) -> anyhow::Result<Vec<Prefix>> {
    addrs.iter().map(|a| a.parse::<Prefix>().map_err(|e| BadInput(e.to_string()).into())).collect()
}

fn addr(pins: &Pins, state_dir: &Path, cmd: AddrCommand) -> anyhow::Result<()> {
    match cmd {
        AddrCommand::Add { idempotent, set, addrs } => change(pins, state_dir, &set, &addrs, true, idempotent),
        AddrCommand::Del { idempotent, set, addrs } => change(pins, state_dir, &set, &addrs, false, idempotent),
        AddrCommand::List { set, json } => {
            need_root()?;
            let maps = open(pins)?;
            let sets = maps.address_sets()?;
            let only = set.as_deref().map(|s| parse_set(&sets, s)).transpose()?;
            let changes = Changes::load(state_dir)?;
            #[derive(Serialize)]
            struct Entry {
                set: String,
                address: String,
                /// `config`, `runtime` (added at runtime) or `removed` (a config
                /// entry removed at runtime).
                source: &'static str,
                enforced: bool,
            }
            let mut entries: Vec<Entry> = sets
                .iter()
                .filter(|(_, s)| only.is_none_or(|o| o == *s))
                .map(|(p, s)| Entry {
                    set: sets.name(s).to_owned(),
                    address: p.to_string(),
                    source: if changes.is_added(sets.name(s), &p) { Source::Runtime.name() } else { Source::Config.name() },
                    enforced: true,
                })
                .collect();
            entries.extend(changes.removals().filter(|(set, _)| only.is_none_or(|o| sets.name(o) == *set)).map(|(set, p)| Entry {
                set: set.to_owned(),
                address: p.to_string(),
                source: Source::Removed.name(),
                enforced: false,
            }));
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                println!("{:<14} {:<40} SOURCE", "SET", "ADDRESS");
                for e in &entries {
                    let note = if e.enforced { "" } else { " (a config entry removed at runtime: not enforced)" };
                    println!("{:<14} {:<40} {}{note}", e.set, e.address, e.source);
                }
                let (overrides, last) = state_report(state_dir)?;
                print_state_report(state_dir, &overrides, last.as_ref());
            }
            Ok(())
        }
    }
}

/// `addr add` / `addr del`: validate everything against the running filter's sets,
/// change the maps, then record the change in the state directory; a failure on the
/// way puts the maps back, so the change happens whole or not at all. An entry that
/// would change nothing (added but already there, removed but not there) is refused
/// before anything changes, unless `idempotent`; then it is skipped and not recorded.
fn change(pins: &Pins, state_dir: &Path, set: &str, addrs: &[String], add: bool, idempotent: bool) -> anyhow::Result<()> {
    let set_name = set;
    let prefixes = parse_prefixes(addrs)?;
    if let Some((_, p)) = prefixes.iter().enumerate().find(|(i, p)| prefixes[..*i].contains(p)) {
        return Err(BadInput(format!("{p} is listed twice; nothing changed")).into());
    }
    need_root()?;
    if !pins.exists() {
        // Without the running filter's sets, overlaps with the config cannot be
        // checked; a change recorded unchecked could stop the next `run`.
        bail!("no filter is pinned at {} (start one with `edge-filter run`); nothing changed", pins.dir().display());
    }
    let _state_lock = lock_dir(state_dir)?;
    let _pin_lock = pins.lock()?;
    let mut maps = open(pins)?;
    let mut changes = Changes::load(state_dir)?;
    let have = maps.address_sets()?;
    let set = parse_set(&have, set_name)?;
    let mut want = have.clone();
    for p in &prefixes {
        if have.contains(set, p) == add {
            if idempotent {
                continue;
            }
            let what = if add { "is already in" } else { "is not in" };
            return Err(BadInput(format!("{p} {what} {set_name}; nothing changed (--idempotent accepts this)")).into());
        }
        if add {
            want.insert(set, *p).map_err(|e| BadInput(e.to_string()))?;
            changes.add(set_name, *p);
        } else {
            want.remove(set, p);
            changes.remove(set_name, *p);
        }
    }
    if want == have {
        // Nothing to do (every entry was a no-op under --idempotent): no write at all.
        return Ok(());
    }
    let written = maps.set_address_sets(&want).map_err(anyhow::Error::from).and_then(|()| Ok(changes.save(state_dir)?));
    if let Err(e) = written {
        let restored = maps.set_address_sets(&have);
        return Err(e).context(if restored.is_ok() { "nothing changed" } else { "and restoring the previous sets failed too" });
    }
    Ok(())
}

/// An exclusive lock on a directory (created if missing), held until dropped.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    pins::lock_dir(dir).with_context(|| format!("lock {}", dir.display()))
}

fn detach(pins: &Pins, ifaces: &[String]) -> anyhow::Result<()> {
    need_root()?;
    // A running daemon holds the links (removing a pin would not detach anything) and
    // would put back what is removed: refuse, naming it. Held while detaching, so no
    // `run` starts half-way.
    let _daemon = pins.daemon_lock()?;
    if !pins.dir().exists() {
        bail!("no filter is pinned at {}", pins.dir().display());
    }
    let _lock = pins.lock()?;
    let attached: Vec<String> = pins.links()?.into_iter().map(|l| l.interface).collect();
    if let Some(name) = ifaces.iter().find(|n| !attached.contains(n)) {
        return Err(BadInput(format!("edge-filter is not attached to `{name}` (attached: {}); nothing changed", attached.join(", "))).into());
    }
    if ifaces.is_empty() || attached.iter().all(|a| ifaces.contains(a)) {
        pins.remove_all()?;
        println!("detached from every interface; removed {}", pins.dir().display());
        return Ok(());
    }
    let mut maps = open(pins)?;
    for name in ifaces {
        pins.detach(name)?;
        pins.detach_egress(name)?;
        if let Ok(ix) = pins::ifindex(name) {
            maps.remove_iface(ix)?;
        }
        println!("detached from {name}");
    }
    Ok(())
}
