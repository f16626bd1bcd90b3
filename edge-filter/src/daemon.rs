//! `edge-filter run`: keep the configured filter in place.
//!
//! Contract:
//! - One daemon per pin directory: the daemon lock ([`Pins::daemon_lock`]) is taken
//!   before anything is touched and held until the process ends; a second `run` and
//!   `detach` refuse while it is held, naming this process's pid.
//! - Start: every configured NIC is checked (exists, carries no foreign XDP program)
//!   before the kernel is touched. Maps pinned by an earlier run are adopted (counters,
//!   flows and sets carry on); links pinned by an earlier run get the new program
//!   atomically; other NICs are attached in the configured mode (`auto`: native, else
//!   generic, and the log says which).
//! - The address sets are the config's with the state directory's runtime changes.
//! - The address sets are composed as `statedir` documents; every start and reload
//!   logs a warning for each place the state directory overrides the config, and logs
//!   the runtime changes it prunes.
//! - SIGHUP re-reads the config; an invalid one is logged and changes nothing; a valid
//!   one is applied: settings and sets rewritten, NICs attached or detached. If the
//!   kernel refuses a step, the running config is applied again. Each outcome
//!   (`applied` or `refused`, with the reason) is logged, counted
//!   (`edge_filter_reloads_total{outcome}`) and written to `<state-dir>/reload.json`
//!   with a sequence number, which `edge-filter reload` waits for.
//! - SIGTERM and SIGINT end the process and leave the filter attached and pinned, so
//!   enforcement never lapses; the next `run` adopts it.
//! - `/metrics` serves Prometheus text read from the pinned maps at each scrape, with
//!   the live-flow counts of the latest census (`crate::census`): a scrape reads a
//!   fixed number of entries, whatever the size of the state tables.
//! - A thread of its own, with its own handle on the pinned maps, takes a census every
//!   `state.census-interval` and publishes it (to `/metrics` and to `status`); every
//!   [`RECOUNT`] it also removes the flows that expired unseen and recounts the
//!   per-source flow counts (`Maps::recount_sources`). A reload that is applied
//!   counts at once. Nothing that walks a table runs on the thread that handles
//!   signals. The thread runs at the lowest priority (nice 19): a census of a
//!   million flows takes a third of a second of CPU, and a scrape or a reload that
//!   arrives meanwhile goes first.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use log::{error, info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    census::Census,
    config::Config,
    loader::{Filter, LoadOptions, Maps},
    pins::{self, Pins},
    report::{Reloads, Snapshot},
    statedir::{Changes, Composed, ReloadStatus},
};

/// How often the per-source counts are put right.
const RECOUNT: Duration = Duration::from_secs(60);

pub fn run(config_path: &Path, config: Config, pins: Pins, state_dir: PathBuf) -> anyhow::Result<()> {
    // One daemon per pin directory, held until the process ends and taken before
    // anything is touched: a second `run` (and `detach`) refuses, naming this pid.
    let _daemon = pins.daemon_lock()?;
    pins.check_bpffs()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the runtime")?;
    rt.block_on(serve(config_path, config, pins, state_dir))
}

async fn serve(config_path: &Path, mut config: Config, pins: Pins, state_dir: PathBuf) -> anyhow::Result<()> {
    // Signals first: a SIGTERM during start-up must not kill the process half-way.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    for iface in &config.interfaces {
        pins::preflight(&pins, &iface.name)?;
    }
    pins.create()?;
    let mut filter = {
        let _lock = pins.lock()?;
        let adopted = pins.exists() && pins.maps_dir().join(edge_filter_common::map::CONFIG).exists();
        let mut filter = Filter::load(&LoadOptions {
            max_flows: config.max_flows,
            max_embryos: config.max_embryos,
            max_embryos_out: config.max_embryos_out,
            max_udp_flows: config.max_udp_flows,
            variant: None,
            map_pin_dir: Some(pins.maps_dir()),
        })
        .context("load the XDP program")?;
        if adopted {
            info!("adopting the maps pinned at {}", pins.maps_dir().display());
            for (what, have, want) in [
                ("flow table", filter.maps().max_flows()?, config.max_flows),
                ("handshake table", filter.maps().max_embryos()?, config.max_embryos),
                ("trusted-side handshake table", filter.maps().max_embryos_out()?, config.max_embryos_out),
                ("UDP flow table", filter.maps().max_udp_flows()?, config.max_udp_flows),
            ] {
                if have != want {
                    warn!("the pinned {what} has {have} entries, the config asks for {want}; detach to resize");
                }
            }
        }
        let composed = apply(&mut filter, &pins, &config, &state_dir)?;
        publish(&state_dir, config_path, 0, "started", None, &composed);
        filter
    };
    let reloads = Arc::new(Reloads::default());
    let mut seq = 0;

    // Drop log lines from the kernel, named and passed to this process's logger.
    match aya_log::EbpfLogger::init_with_logger(filter.ebpf_mut(), DropLogNames) {
        Ok(logger) => {
            tokio::spawn(drop_log(logger));
        }
        Err(e) => warn!("no drop log reader: {e}"),
    }

    let census = Censuses::start(pins.maps_dir(), pins.census_path(), config.census_interval)?;
    if let Some(addr) = config.metrics {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics listener {addr}"))?;
        info!("metrics on http://{addr}/metrics");
        tokio::spawn(metrics(listener, pins.maps_dir(), reloads.clone(), census.latest.clone()));
    }
    info!("enforcing; SIGHUP re-reads {}, SIGTERM leaves the filter attached", config_path.display());

    loop {
        tokio::select! {
            _ = hup.recv() => {
                seq += 1;
                let outcome = match Config::load(config_path) {
                    Err(e) => Err(e.to_string()),
                    Ok(new) => {
                        let _lock = pins.lock()?;
                        if new.max_flows != config.max_flows
                            || new.max_embryos != config.max_embryos
                            || new.max_embryos_out != config.max_embryos_out
                            || new.max_udp_flows != config.max_udp_flows
                        {
                            warn!("state.max-flows, max-embryonic and max-udp-flows change only when the filter is detached and run again");
                        }
                        if let Some(old) = config.metrics.filter(|m| Some(*m) != new.metrics) {
                            warn!("metrics.listen changes at the next start (still {old})");
                        }
                        match apply(&mut filter, &pins, &new, &state_dir) {
                            Err(e) => {
                                let mut why = format!("applying {}: {e:#}; the running config was restored", config_path.display());
                                if let Err(e) = apply(&mut filter, &pins, &config, &state_dir) {
                                    error!("restoring the running config: {e:#}");
                                    why = format!("applying {}: and restoring the running config failed too: {e:#}", config_path.display());
                                }
                                Err(why)
                            }
                            Ok(composed) => {
                                census.set_interval(new.census_interval);
                                config = Config {
                                    metrics: config.metrics,
                                    max_flows: config.max_flows,
                                    max_embryos: config.max_embryos,
                                    max_embryos_out: config.max_embryos_out,
                                    max_udp_flows: config.max_udp_flows,
                                    ..new
                                };
                                Ok(composed)
                            }
                        }
                    }
                };
                match outcome {
                    Ok(composed) => {
                        reloads.applied.fetch_add(1, Ordering::Relaxed);
                        info!("reload {seq} applied {}", config_path.display());
                        publish(&state_dir, config_path, seq, "applied", None, &composed);
                    }
                    Err(why) => {
                        reloads.refused.fetch_add(1, Ordering::Relaxed);
                        error!("reload {seq} refused: {why}; keeping the running config");
                        publish(&state_dir, config_path, seq, "refused", Some(why), &Composed::default());
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    census.stop();
    // Say what the kernel keeps, as it is now (a SIGHUP may have removed every NIC).
    match pins.links() {
        Ok(links) if links.is_empty() => info!("exiting; no NIC has the filter attached; maps stay pinned at {}", pins.dir().display()),
        Ok(links) => {
            let names: Vec<&str> = links.iter().map(|l| l.interface.as_str()).collect();
            info!("exiting; the filter stays attached to {} and pinned at {}", names.join(", "), pins.dir().display());
        }
        Err(e) => warn!("exiting; cannot read the links pinned at {}: {e:#}", pins.dir().display()),
    }
    Ok(())
}

/// The census thread ([`crate::census`]) and what it shares: the latest census for
/// `/metrics`, the interval SIGHUP may change, the stop flag.
struct Censuses {
    latest: Arc<Mutex<Option<Census>>>,
    interval_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Censuses {
    /// Open the pinned maps for the thread and start it. The first census is taken
    /// and published before this returns, so that once the daemon says it enforces,
    /// `status` and `/metrics` show its count.
    fn start(maps_dir: PathBuf, path: PathBuf, interval: Duration) -> anyhow::Result<Self> {
        let maps = Maps::open_pinned(&maps_dir).context("open the pinned maps for the census")?;
        let latest = Arc::new(Mutex::new(None));
        let interval_ms = Arc::new(AtomicU64::new(interval.as_millis() as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let count = {
            let (latest, interval_ms) = (latest.clone(), interval_ms.clone());
            move |maps: &Maps, previous: &mut Option<Census>| match Census::take(maps, previous.as_ref()) {
                Ok(mut c) => {
                    c.interval_ms = interval_ms.load(Ordering::Relaxed);
                    if let Err(e) = c.publish(&path) {
                        warn!("publishing the census at {}: {e}", path.display());
                    }
                    *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                    *previous = Some(c);
                }
                Err(e) => warn!("counting the state tables: {e:#}"),
            }
        };
        let mut previous: Option<Census> = None;
        count(&maps, &mut previous);
        let thread = std::thread::Builder::new().name("census".into()).spawn({
            let (interval_ms, stop) = (interval_ms.clone(), stop.clone());
            move || {
                // SAFETY: setpriority on this thread's own id (a Linux thread is a
                // task of its own), with a constant priority.
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0 {
                    warn!("lowering the census thread's priority: {}", std::io::Error::last_os_error());
                }
                let mut maps = maps;
                let mut recounted = Instant::now();
                loop {
                    std::thread::park_timeout(Duration::from_millis(interval_ms.load(Ordering::Relaxed)));
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    count(&maps, &mut previous);
                    if recounted.elapsed() >= RECOUNT {
                        recounted = Instant::now();
                        match maps.recount_sources(crate::report::monotonic_ns()) {
                            Ok((0, _)) => {}
                            Ok((stale, sources)) => info!("removed {stale} expired flows; {sources} sources hold flows"),
                            Err(e) => warn!("recounting the flows per source: {e:#}"),
                        }
                    }
                }
            }
        })?;
        Ok(Self { latest, interval_ms, stop, thread })
    }

    fn set_interval(&self, interval: Duration) {
        self.interval_ms.store(interval.as_millis() as u64, Ordering::Relaxed);
        self.thread.thread().unpark();
    }

    /// End the thread and wait for it, so that no census is published after the
    /// daemon lock (which removes it) is let go.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

/// Write the outcome of a start or reload for `edge-filter reload`, `status` and
/// `addr list`; a failure to write is logged, never fatal.
fn publish(state_dir: &Path, config_path: &Path, seq: u64, outcome: &str, reason: Option<String>, composed: &Composed) {
    let pid = std::process::id();
    let status = ReloadStatus {
        pid,
        start_time: crate::statedir::process_start_time(pid).unwrap_or(0),
        seq,
        outcome: outcome.to_owned(),
        reason,
        config: config_path.display().to_string(),
        pruned: composed.pruned.clone(),
        overrides: composed.overrides.clone(),
    };
    if let Err(e) = status.save(state_dir) {
        warn!("recording the reload outcome: {e}");
    }
}

/// Make the kernel enforce `config`: settings, sets, roles, attachments. The runtime
/// changes the config has made moot are pruned from the state directory once the
/// whole config is applied.
fn apply(filter: &mut Filter, pins: &Pins, config: &Config, state_dir: &Path) -> anyhow::Result<Composed> {
    // What can be checked without the kernel is checked before the first write: the
    // NICs exist and carry no foreign program, the sets are consistent. The kernel can
    // still refuse later steps (a counter slot, an attach mode); the SIGHUP path then
    // applies the running config again.
    let mut want = Vec::new();
    for iface in &config.interfaces {
        want.push((pins::preflight(pins, &iface.name)?, iface));
    }
    let composed = Changes::load(state_dir)?.compose(&config.sets).context("the config's sets with the runtime changes")?;
    let sets = &composed.sets;

    // Sets before rows: a new peer set's addresses carry its bit before any row names
    // it, so no row ever matches on a set that is still being filled.
    filter.maps_mut().set_address_sets(sets)?;
    filter.maps_mut().set_policy(&config.policy)?;
    for (ifindex, iface) in &want {
        filter.maps_mut().set_iface(*ifindex, iface.role)?;
    }
    for (_, iface) in &want {
        let attached = pins.attach(filter, &iface.name, iface.mode)?;
        match (attached.replaced, attached.mode, &attached.native_refused) {
            (true, ..) => info!("{}: {} (program replaced in the pinned link)", iface.name, iface.role),
            (false, "skb", Some(why)) => {
                warn!("{}: {} in generic (skb) mode: native mode was refused: {why}", iface.name, iface.role)
            }
            (false, mode, _) => info!("{}: {} in {mode} mode", iface.name, iface.role),
        }
        if iface.role == crate::policy::Role::Host {
            let how = pins::EgressAttach::for_kernel();
            let replaced = pins.attach_egress(filter, &iface.name, how)?;
            info!("{}: egress flows recorded by TC ({how:?}{})", iface.name, if replaced { ", program replaced" } else { "" });
        } else {
            pins.detach_egress(&iface.name)?;
        }
    }
    // NICs the config no longer names.
    for link in pins.links()? {
        if !config.interfaces.iter().any(|i| i.name == link.interface) {
            pins.detach(&link.interface)?;
            pins.detach_egress(&link.interface)?;
            info!("{}: detached (no longer in the config)", link.interface);
        }
    }
    for entry in filter.maps().ifaces()? {
        if !want.iter().any(|(ix, _)| *ix == entry.ifindex) {
            filter.maps_mut().remove_iface(entry.ifindex)?;
        }
    }
    if composed.prunes() {
        composed.changes.save(state_dir).context("pruning the state directory")?;
        for p in &composed.pruned {
            info!("{p}");
        }
    }
    for o in &composed.overrides {
        warn!("the state directory overrides the config: {o}");
    }
    Ok(composed)
}

/// Names what the kernel's drop log records carry as numbers: `verdict 8 ifindex 3`
/// becomes `drop/no_rule out0`; then hands the line to the process's logger.
struct DropLogNames;

impl DropLogNames {
    fn rewrite(message: &str) -> String {
        let mut words = message.split(' ').peekable();
        let mut out = Vec::new();
        while let Some(w) = words.next() {
            let next = words.peek().and_then(|n| n.parse::<u32>().ok());
            match (w, next) {
                ("verdict", Some(v)) => {
                    words.next();
                    out.push(crate::report::verdict_name(v));
                }
                ("ifindex", Some(ix)) => {
                    words.next();
                    out.push(crate::report::interface_name(ix));
                }
                _ => out.push(w.to_owned()),
            }
        }
        out.join(" ")
    }
}

impl log::Log for DropLogNames {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = Self::rewrite(&record.args().to_string());
        log::logger().log(&log::Record::builder().args(format_args!("{line}")).level(record.level()).target("edge_filter::drop").build());
    }

    fn flush(&self) {}
}

async fn drop_log(logger: aya_log::EbpfLogger<DropLogNames>) {
    // SAFETY: the logger owns its ring buffer's descriptor for as long as it lives,
    // and the AsyncFd owns the logger: the descriptor stays open and the same.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            error!("drop log reader: {e}");
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                error!("drop log reader: {e}");
                return;
            }
        }
    }
}

async fn metrics(listener: tokio::net::TcpListener, maps_dir: PathBuf, reloads: Arc<Reloads>, census: Arc<Mutex<Option<Census>>>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let maps_dir = maps_dir.clone();
            let reloads = reloads.clone();
            let census = census.clone();
            async move {
                // A fixed number of system calls (counters, interface and rule
                // tables, address sets) and the latest census: off the runtime's
                // thread all the same, so signals never wait for a scrape.
                let text = tokio::task::spawn_blocking(move || {
                    let maps = Maps::open_pinned(&maps_dir)?;
                    let latest = census.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let census = match latest {
                        Some(c) => c,
                        None => Census::take(&maps, None)?,
                    };
                    Snapshot::read(&maps, census).map_err(anyhow::Error::from)
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
                match text {
                    Ok(s) => (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, crate::report::CONTENT_TYPE)],
                        s.prometheus_with(Some(&reloads)),
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("{e:#}\n"),
                    ),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        error!("metrics server: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::DropLogNames;

    #[test]
    fn drop_log_records_get_their_names() {
        assert_eq!(
            DropLogNames::rewrite("verdict 8 ifindex 1 proto 6 198.51.100.20:40000 -> 203.0.113.10:22"),
            "drop/no_rule lo proto 6 198.51.100.20:40000 -> 203.0.113.10:22"
        );
        assert_eq!(DropLogNames::rewrite("verdict 17 ifindex 999999"), "would_drop/spoofed if999999");
    }
}
