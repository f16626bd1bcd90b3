//! The command line: `edge-filter <command>`.
//!
//! Contract: bad input is refused before anything changes, with one line naming the
//! bad value (exit status 2; `check` says 1 for an invalid config, as a verdict); failures of the system are reported with their causes
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
    config::Config,
    daemon,
    loader::Maps,
    pins::{self, Pins},
    report::Snapshot,
    statedir::{Changes, Source},
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
    /// config, SIGTERM/SIGINT exit leaving the filter attached.
    ///
    /// Example: edge-filter run --config /etc/edge-filter/edge-filter.toml
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config and print the effective policy; exit 0 if valid, 1 if not.
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
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
    /// state directory stays.
    Detach {
        /// Detach from this NIC only (repeatable).
        #[arg(long = "iface", value_name = "NAME")]
        ifaces: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AddrCommand {
    /// Add addresses or prefixes to a set: all of them, or none if one is refused.
    ///
    /// Example: edge-filter addr add access-edge 203.0.113.11 2001:db8:203::11
    Add {
        /// access-edge or internal-edge.
        set: String,
        /// ADDR or ADDR/PREFIX.
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Remove addresses or prefixes from a set.
    Del {
        set: String,
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
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-filter: {e:#}");
            let bad_nic = matches!(
                e.downcast_ref::<crate::pins::PinError>(),
                Some(
                    crate::pins::PinError::UnknownInterface { .. }
                        | crate::pins::PinError::Foreign { .. }
                        | crate::pins::PinError::IfindexTooHigh { .. }
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
        Command::Check { config, json } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("edge-filter: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            print_check(&config, json)?;
        }
        Command::Status { json } => status(&pins, json)?,
        Command::Addr(cmd) => addr(&pins, &cli.state_dir, cmd)?,
        Command::Stats { watch, json } => loop {
            need_root()?;
            let maps = open(&pins)?;
            let snap = Snapshot::read(&maps)?;
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

fn print_check(config: &Config, json: bool) -> anyhow::Result<()> {
    let rows = config.policy.rules.view(&config.sets);
    let sets = &config.sets;
    let overlaps: Vec<String> = sets
        .overlaps()
        .into_iter()
        .map(|(p, s, q, t)| format!("{p} in {} is also in {} ({q})", sets.name(s), sets.name(t)))
        .collect();
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
    if json {
        let ifaces: Vec<_> = config
            .interfaces
            .iter()
            .map(|i| serde_json::json!({"name": i.name, "role": i.role.name(), "mode": i.mode.name()}))
            .collect();
        let v = serde_json::json!({
            "rules": rows,
            "sets": members,
            "overlaps": overlaps,
            "interfaces": ifaces,
            "unpoliced": p.unpoliced.name(),
            "fragments": p.fragments.name(),
            "dry_run": p.dry_run,
            "max_flows": config.max_flows,
            "metrics": config.metrics.map(|m| m.to_string()),
        });
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
    println!(
        "unpoliced {}, fragments {}, dry-run {}, max-flows {}, metrics {}",
        p.unpoliced.name(),
        p.fragments.name(),
        p.dry_run,
        config.max_flows,
        config.metrics.map_or_else(|| "off".to_owned(), |m| m.to_string())
    );
    Ok(())
}

fn status(pins: &Pins, json: bool) -> anyhow::Result<()> {
    need_root()?;
    let maps = open(pins)?;
    let links = pins.links()?;
    let ifaces = maps.ifaces()?;
    let policy = maps.policy()?;
    let sets = maps.address_sets()?;
    let snap = Snapshot::read(&maps)?;
    let rows: Vec<_> = links
        .iter()
        .map(|l| {
            let role = pins::ifindex(&l.interface)
                .ok()
                .and_then(|ix| ifaces.iter().find(|e| e.ifindex == ix))
                .map_or("none", |e| e.role.name());
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
            "unpoliced": policy.unpoliced.name(),
            "fragments": policy.fragments.name(),
            "dry_run": policy.dry_run,
            "addresses": snap.addresses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "flows": snap.flows,
            "max_flows": maps.max_flows()?,
            "max_embryos": maps.max_embryos()?,
            "max_udp_flows": maps.max_udp_flows()?,
            "flow_events": maps.flow_events()?,
            "egress": pins.egress_links(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("pinned at {}", pins.dir().display());
    println!("{:<16} {:<8} {:<7} {:>8} {:>10}", "INTERFACE", "ROLE", "MODE", "LINK", "PROGRAM");
    for (l, role, mode) in &rows {
        println!("{:<16} {:<8} {:<7} {:>8} {:>10}", l.interface, role, mode, l.link_id, l.program_id);
    }
    print!("{}", policy.rules.render(&sets));
    println!(
        "unpoliced {}, fragments {}, dry-run {}",
        policy.unpoliced.name(),
        policy.fragments.name(),
        policy.dry_run
    );
    let sets: Vec<String> = snap.addresses.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("addresses: {}; flows {} of {}", sets.join(", "), snap.flows, maps.max_flows()?);
    let ev = maps.flow_events()?;
    for (name, t, max) in [
        ("flows", ev.flows, maps.max_flows()?),
        ("handshakes", ev.embryos, maps.max_embryos()?),
        ("udp flows", ev.udp, maps.max_udp_flows()?),
    ] {
        println!(
            "{name}: {} of {max} in use; created {}, expired {}, closed {}, evicted {}, insert failures {}",
            t.live, t.created, t.expired, t.closed, t.evicted, t.insert_failed
        );
    }
    println!(
        "handshakes not recorded because their source held its share ({} flows per source): {}",
        policy.sources.max_flows, ev.source_limited
    );
    let egress = pins.egress_links();
    if !egress.is_empty() {
        println!("host-mode egress (TCX): {}", egress.join(", "));
    }
    Ok(())
}

fn flows(pins: &Pins, json: bool) -> anyhow::Result<()> {
    need_root()?;
    let maps = open(pins)?;
    let now = crate::report::monotonic_ns();
    let names = maps.rule_names()?;
    let rows: Vec<crate::report::FlowRow> = maps
        .flows()?
        .iter()
        .chain(maps.embryos()?.iter())
        .chain(maps.udp_flows()?.iter())
        .map(|(k, f)| crate::report::FlowRow::new(&k.0, f, &names, now))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<5} {:<46} {:<46} {:<12} {:>9} {:>9}  RULE", "PROTO", "OPENER", "RESPONDER", "STATE", "AGE", "IDLE");
    for r in &rows {
        println!("{:<5} {:<46} {:<46} {:<12} {:>8.1}s {:>8.1}s  {}", r.proto, r.opener, r.responder, r.state, r.age_secs, r.idle_secs, r.rule);
    }
    let ev = maps.flow_events()?;
    println!(
        "{} established of {}, {} handshakes of {}, {} udp of {}; evicted: {} flows, {} handshakes, {} udp",
        ev.flows.live,
        maps.max_flows()?,
        ev.embryos.live,
        maps.max_embryos()?,
        ev.udp.live,
        maps.max_udp_flows()?,
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
        AddrCommand::Add { set, addrs } => change(pins, state_dir, &set, &addrs, true),
        AddrCommand::Del { set, addrs } => change(pins, state_dir, &set, &addrs, false),
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
                source: &'static str,
            }
            let entries: Vec<Entry> = sets
                .iter()
                .filter(|(_, s)| only.is_none_or(|o| o == *s))
                .map(|(p, s)| Entry {
                    set: sets.name(s).to_owned(),
                    address: p.to_string(),
                    source: if changes.is_added(sets.name(s), &p) { Source::Runtime.name() } else { Source::Config.name() },
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                println!("{:<14} {:<40} SOURCE", "SET", "ADDRESS");
                for e in &entries {
                    println!("{:<14} {:<40} {}", e.set, e.address, e.source);
                }
            }
            Ok(())
        }
    }
}

/// `addr add` / `addr del`: validate everything against the running filter's sets,
/// change the maps, then record the change in the state directory; a failure on the
/// way puts the maps back, so the change happens whole or not at all.
fn change(pins: &Pins, state_dir: &Path, set: &str, addrs: &[String], add: bool) -> anyhow::Result<()> {
    let set_name = set;
    let prefixes = parse_prefixes(addrs)?;
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
        if add {
            want.insert(set, *p).map_err(|e| BadInput(e.to_string()))?;
            changes.add(set_name, *p);
        } else if want.remove(set, p) {
            changes.remove(set_name, *p);
        }
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
