//! What the operator reads: one snapshot of the pinned maps, shown as a table, as
//! JSON (`--json`) or as Prometheus text (`/metrics`).
//!
//! Contract: every view is rendered from the same [`Snapshot`], so `stats`, `stats
//! --json` and `/metrics` agree; names are the dataplane's (`pass/rule`,
//! `federation-in`, ...) unchanged. A NIC's counters are labelled with its current
//! name; counters of packets seen on NICs without a role are labelled `unattached`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    census::{Census, FlowEvents},
    loader::Maps,
};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the kernel program keeps flows' times
/// by (`bpf_ktime_get_ns`, and jiffies scaled to it: `edge-filter-ebpf/src/clock.rs`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One connection of the state tables, for `flows`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowRow {
    pub opener: String,
    pub responder: String,
    pub proto: &'static str,
    pub state: &'static str,
    /// Picked up from the trusted side rather than opened here.
    pub picked_up: bool,
    pub rule: String,
    pub age_secs: f64,
    pub idle_secs: f64,
}

impl FlowRow {
    /// A flow row; `rules` names the row slots (the kernel's rule table).
    pub fn new(k: &edge_filter_common::FlowKey, f: &edge_filter_common::Flow, rules: &[Option<String>], now_ns: u64) -> Self {
        let addr = |a: &[u8; 16]| -> std::net::IpAddr {
            if k.family == edge_filter_common::family::V4 {
                std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
            } else {
                std::net::Ipv6Addr::from(*a).into()
            }
        };
        let secs = |ns: u64| now_ns.saturating_sub(ns) as f64 / 1e9;
        Self {
            opener: std::net::SocketAddr::new(addr(&k.src), u16::from_be(k.sport_be)).to_string(),
            responder: std::net::SocketAddr::new(addr(&k.dst), u16::from_be(k.dport_be)).to_string(),
            proto: if k.proto == 17 { "udp" } else { "tcp" },
            state: edge_filter_common::flow_state::name(f.state),
            picked_up: f.origin == edge_filter_common::origin::PICKED_UP,
            rule: rules.get(usize::from(f.rule)).cloned().flatten().unwrap_or_else(|| format!("row#{}", f.rule)),
            age_secs: secs(f.created_ns),
            idle_secs: secs(f.last_seen_ns),
        }
    }
}

/// One counter row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterRow {
    pub interface: String,
    pub action: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Hits of one rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRow {
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Everything the views show, read at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub counters: Vec<CounterRow>,
    pub rules: Vec<RuleRow>,
    /// Entries per set.
    pub addresses: Vec<(String, usize)>,
    /// Live flows of the flow table (established and closing), judged by the
    /// kernel's timeouts: entries past their timeout are not counted.
    pub flows: usize,
    /// The NICs with a role, by name, in slot order: each has every counter series.
    pub interfaces: Vec<String>,
    pub dry_run: bool,
    /// `(event name, occurrences)`.
    pub events: Vec<(&'static str, u64)>,
    pub flow_events: FlowEvents,
    /// The census the live and evicted counts come from.
    pub census: CensusInfo,
}

/// When and by whom the state tables were counted ([`Census`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CensusInfo {
    /// `daemon` or `this command`.
    pub by: &'static str,
    pub taken_unix_ms: u64,
    pub age_secs: f64,
    pub took_ms: f64,
}

impl CensusInfo {
    pub fn of(c: &Census) -> Self {
        Self { by: c.taker(), taken_unix_ms: c.taken_unix_ms, age_secs: c.age().as_secs_f64(), took_ms: c.took_us as f64 / 1e3 }
    }

    /// `counted by the daemon 3.2 s ago in 12.0 ms`.
    pub fn line(&self) -> String {
        format!("counted by {} {:.1} s ago in {:.1} ms", self.by, self.age_secs, self.took_ms)
    }
}

/// `action/reason` of a verdict code, or `verdict#N` for a code this version lacks.
pub fn verdict_name(v: u32) -> String {
    edge_filter_common::verdict::name(v).map_or_else(|| format!("verdict#{v}"), |(a, r)| format!("{a}/{r}"))
}

/// The name of the NIC with this ifindex, or `if<N>` when it has gone.
pub fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

impl Snapshot {
    /// The maps as they are now, with the state tables as `census` counted them.
    pub fn read(maps: &Maps, census: Census) -> Result<Self, crate::loader::Error> {
        let ifaces = maps.ifaces()?;
        let counters = maps.counters()?;
        let name_of = |slot: u32| {
            ifaces
                .iter()
                .find(|e| e.slot == slot)
                .map_or_else(|| if slot == 0 { "unattached".to_owned() } else { format!("slot{slot}") }, |e| interface_name(e.ifindex))
        };
        let rows = counters
            .rows()
            .map(|r| CounterRow { interface: name_of(r.slot), action: r.action, reason: r.reason, packets: r.packets, bytes: r.bytes })
            .collect();
        let rules = counters.rule_rows().map(|(rule, c)| RuleRow { rule: rule.to_owned(), packets: c.packets, bytes: c.bytes }).collect();
        let addresses = maps.set_sizes()?;
        let events = maps.events()?;
        let flow_events = census.flow_events(&events);
        let mut slots: Vec<_> = ifaces.iter().map(|e| (e.slot, interface_name(e.ifindex))).collect();
        slots.sort();
        Ok(Self {
            counters: rows,
            rules,
            addresses,
            flows: flow_events.flows.live as usize,
            interfaces: slots.into_iter().map(|(_, n)| n).collect(),
            dry_run: maps.dry_run()?,
            events: edge_filter_common::event::NAMES[..2].iter().map(|(i, n)| (*n, events[*i as usize])).collect(),
            flow_events,
            census: CensusInfo::of(&census),
        })
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<16} {:<11} {:<11} {:>14} {:>16}", "INTERFACE", "ACTION", "REASON", "PACKETS", "BYTES");
        for r in &self.counters {
            let _ = writeln!(out, "{:<16} {:<11} {:<11} {:>14} {:>16}", r.interface, r.action, r.reason, r.packets, r.bytes);
        }
        let _ = writeln!(out, "\n{:<16} {:>14} {:>16}", "RULE", "PACKETS", "BYTES");
        for r in &self.rules {
            let _ = writeln!(out, "{:<16} {:>14} {:>16}", r.rule, r.packets, r.bytes);
        }
        let sets: Vec<String> = self.addresses.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let _ = writeln!(out, "\naddresses: {}; flows: {}; dry-run: {}", sets.join(", "), self.flows, self.dry_run);
        let events: Vec<String> = self.events.iter().map(|(e, n)| format!("{e} {n}")).collect();
        let _ = writeln!(out, "events: {}", events.join(", "));
        let _ = writeln!(out, "flows {}", self.census.line());
        out
    }

    /// Prometheus text exposition, format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn prometheus(&self) -> String {
        self.prometheus_with(None)
    }

    /// [`Snapshot::prometheus`] with the daemon's reload counter beside the maps'.
    pub fn prometheus_with(&self, reloads: Option<&Reloads>) -> String {
        let mut families = self.families();
        families.push(MetricFamily::float_gauge(
            "edge_filter_census_timestamp_seconds",
            "When the live-flow counts were taken (Unix time): the state tables are counted every state.census-interval",
            self.census.taken_unix_ms as f64 / 1e3,
        ));
        families.push(MetricFamily::float_gauge(
            "edge_filter_census_duration_seconds",
            "How long the latest count of the state tables took",
            self.census.took_ms / 1e3,
        ));
        if let Some(r) = reloads {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            families.push(MetricFamily::counter(
                "edge_filter_reloads",
                "Config reloads (SIGHUP) since the daemon started, applied or refused",
                vec![(vec![("outcome", "applied".to_owned())], n(&r.applied)), (vec![("outcome", "refused".to_owned())], n(&r.refused))],
            ));
        }
        render(&families)
    }

    /// Every metric family with every series that can exist, zeros included, so a
    /// rate or `increase()` sees the first packet of a series: each NIC with a role
    /// times each named action and reason, `unattached` (packets on NICs without a
    /// role), each row id, each event.
    fn families(&self) -> Vec<MetricFamily> {
        let mut verdicts: Vec<(String, &'static str, &'static str, u64, u64)> = Vec::new();
        for iface in &self.interfaces {
            for v in 0..edge_filter_common::verdict::SLOTS {
                if let Some((action, reason)) = edge_filter_common::verdict::name(v) {
                    verdicts.push((iface.clone(), action, reason, 0, 0));
                }
            }
        }
        if let Some((action, reason)) = edge_filter_common::verdict::name(edge_filter_common::verdict::PASS_UNATTACHED) {
            verdicts.push(("unattached".to_owned(), action, reason, 0, 0));
        }
        for r in &self.counters {
            match verdicts.iter_mut().find(|(i, a, re, ..)| *i == r.interface && *a == r.action && *re == r.reason) {
                Some(row) => (row.3, row.4) = (row.3 + r.packets, row.4 + r.bytes),
                None => verdicts.push((r.interface.clone(), r.action, r.reason, r.packets, r.bytes)),
            }
        }
        let verdict_labels =
            |(i, a, r, ..): &(String, &str, &str, u64, u64)| vec![("interface", i.clone()), ("action", (*a).to_owned()), ("reason", (*r).to_owned())];
        let (f, e, u) = (&self.flow_events.flows, &self.flow_events.embryos, &self.flow_events.udp);
        let o = &self.flow_events.embryos_out;
        let flow_events = [
            ("created", f.created),
            ("picked_up", f.picked_up),
            ("expired", f.expired),
            ("closed", f.closed),
            ("evicted", f.evicted),
            ("insert_failed", f.insert_failed),
            ("handshake_started", e.created),
            ("handshake_expired", e.expired),
            ("handshake_closed", e.closed),
            ("handshake_evicted", e.evicted),
            ("handshake_insert_failed", e.insert_failed),
            ("source_limited", self.flow_events.source_limited),
            ("handshake_out_started", o.created),
            ("handshake_out_expired", o.expired),
            ("handshake_out_closed", o.closed),
            ("handshake_out_evicted", o.evicted),
            ("handshake_out_insert_failed", o.insert_failed),
            ("udp_created", u.created),
            ("udp_picked_up", u.picked_up),
            ("udp_expired", u.expired),
            ("udp_evicted", u.evicted),
            ("udp_insert_failed", u.insert_failed),
        ];
        let one = |n: u64| vec![(Vec::new(), n)];
        vec![
            MetricFamily::counter(
                "edge_filter_packets",
                "Packets judged, per NIC, action and reason",
                verdicts.iter().map(|v| (verdict_labels(v), v.3)).collect(),
            ),
            MetricFamily::counter(
                "edge_filter_bytes",
                "Bytes judged, per NIC, action and reason",
                verdicts.iter().map(|v| (verdict_labels(v), v.4)).collect(),
            ),
            MetricFamily::counter(
                "edge_filter_rule_hits",
                "Packets that matched each rule",
                self.rules.iter().map(|r| (vec![("rule", r.rule.clone())], r.packets)).collect(),
            ),
            MetricFamily::gauge(
                "edge_filter_addresses",
                "Entries in each edge address set",
                self.addresses.iter().map(|(s, n)| (vec![("set", s.clone())], *n as u64)).collect(),
            ),
            MetricFamily::gauge("edge_filter_flows", "Live flows in the flow table (established and closing)", one(self.flows as u64)),
            MetricFamily::gauge("edge_filter_dry_run", "1 when nothing is dropped and would-be drops are counted", one(u64::from(self.dry_run))),
            MetricFamily::counter(
                "edge_filter_events",
                "Events besides verdicts: drop log lines and suppressions",
                self.events.iter().map(|(e, n)| (vec![("event", (*e).to_owned())], *n)).collect(),
            ),
            MetricFamily::gauge("edge_filter_udp_flows", "Live flows in the UDP flow table", one(u.live)),
            MetricFamily::counter(
                "edge_filter_flow_events",
                "State-table events: flows and handshakes created, expired, closed, evicted, refused",
                flow_events.iter().map(|(e, n)| (vec![("event", (*e).to_owned())], *n)).collect(),
            ),
            MetricFamily::gauge("edge_filter_handshakes", "Live entries in the embryonic (handshake) table", one(e.live)),
        ]
    }
}

/// The content type of [`Snapshot::prometheus`]: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// One metric family: its samples with their labels.
struct MetricFamily {
    /// Without `_total`.
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
    /// A gauge with one unlabelled sample that is not a whole number.
    float: Option<f64>,
}

impl MetricFamily {
    fn counter(name: &'static str, help: &'static str, samples: Vec<(Vec<(&'static str, String)>, u64)>) -> Self {
        Self { name, help, counter: true, samples, float: None }
    }

    fn gauge(name: &'static str, help: &'static str, samples: Vec<(Vec<(&'static str, String)>, u64)>) -> Self {
        Self { name, help, counter: false, samples, float: None }
    }

    fn float_gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self { name, help, counter: false, samples: Vec::new(), float: Some(value) }
    }
}

/// Text format 0.0.4 of `families`, by the `prometheus` crate's encoder: a counter's
/// HELP and TYPE name its `_total` samples, as Prometheus's own parser and `promtool`
/// expect.
fn render(families: &[MetricFamily]) -> String {
    use prometheus::{Encoder as _, Gauge, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
    let registry = Registry::new();
    for f in families {
        if let Some(value) = f.float {
            let registered = Gauge::with_opts(Opts::new(f.name, f.help)).and_then(|g| {
                g.set(value);
                registry.register(Box::new(g))
            });
            registered.unwrap_or_else(|e| panic!("metric family {}: {e}", f.name));
            continue;
        }
        let names: Vec<&str> = f.samples.first().map(|(l, _)| l.iter().map(|(k, _)| *k).collect()).unwrap_or_default();
        let values = |labels: &[(&str, String)]| labels.iter().map(|(_, v)| v.clone()).collect::<Vec<String>>();
        let registered = if f.counter {
            let vec = IntCounterVec::new(Opts::new(format!("{}_total", f.name), f.help), &names);
            vec.and_then(|c| {
                for (labels, n) in &f.samples {
                    c.get_metric_with_label_values(&values(labels))?.inc_by(*n);
                }
                registry.register(Box::new(c))
            })
        } else {
            let vec = IntGaugeVec::new(Opts::new(f.name, f.help), &names);
            vec.and_then(|g| {
                for (labels, n) in &f.samples {
                    g.get_metric_with_label_values(&values(labels))?.set(i64::try_from(*n).unwrap_or(i64::MAX));
                }
                registry.register(Box::new(g))
            })
        };
        // Names, help and label names are this module's constants: a refusal is a bug.
        registered.unwrap_or_else(|e| panic!("metric family {}: {e}", f.name));
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("encoding to memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Reloads (SIGHUP) the daemon handled since it started, by outcome: a counter the
/// daemon keeps (not in the maps), added to what `/metrics` serves.
#[derive(Debug, Default)]
pub struct Reloads {
    pub applied: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_outcomes_join_the_exposition() {
        let r = Reloads::default();
        r.refused.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let s = Snapshot {
            counters: vec![],
            rules: vec![],
            addresses: vec![],
            flows: 4,
            interfaces: vec![],
            dry_run: false,
            events: vec![],
            flow_events: FlowEvents::default(),
            census: CensusInfo::of(&Census::default()),
        };
        let text = s.prometheus_with(Some(&r));
        assert!(text.lines().any(|l| l == "edge_filter_reloads_total{outcome=\"refused\"} 2"), "{text}");
        assert!(text.lines().any(|l| l == "edge_filter_reloads_total{outcome=\"applied\"} 0"), "{text}");
        assert!(text.contains("# TYPE edge_filter_reloads_total counter"), "{text}");
        assert!(text.lines().any(|l| l == "edge_filter_flows 4"), "{text}");
    }

    #[test]
    fn prometheus_text_carries_every_family_with_the_dataplane_names() {
        let s = Snapshot {
            counters: vec![CounterRow { interface: "eth0".into(), action: "drop", reason: "no_rule", packets: 3, bytes: 180 }],
            rules: vec![RuleRow { rule: "federation-in".into(), packets: 2, bytes: 120 }],
            addresses: vec![("access-edge".into(), 2), ("internal-edge".into(), 1)],
            flows: 4,
            interfaces: vec!["eth0".into(), "eth1".into()],
            dry_run: false,
            events: vec![("drop_log_suppressed", 7)],
            flow_events: FlowEvents::default(),
            census: CensusInfo::of(&Census::default()),
        };
        let text = s.prometheus();
        for line in [
            "edge_filter_packets_total{action=\"drop\",interface=\"eth0\",reason=\"no_rule\"} 3",
            "edge_filter_bytes_total{action=\"drop\",interface=\"eth0\",reason=\"no_rule\"} 180",
            "edge_filter_rule_hits_total{rule=\"federation-in\"} 2",
            "edge_filter_addresses{set=\"access-edge\"} 2",
            "edge_filter_flows 4",
            "edge_filter_dry_run 0",
            "edge_filter_events_total{event=\"drop_log_suppressed\"} 7",
            "edge_filter_flow_events_total{event=\"evicted\"} 0",
            "edge_filter_handshakes 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(s.table().contains("eth0             drop        no_rule"));
        // Every series that can exist, at 0 until it moves.
        for line in [
            "edge_filter_packets_total{action=\"drop\",interface=\"eth1\",reason=\"no_rule\"} 0",
            "edge_filter_bytes_total{action=\"would_drop\",interface=\"eth0\",reason=\"unpoliced\"} 0",
            "edge_filter_packets_total{action=\"pass\",interface=\"unattached\",reason=\"unattached\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // One sample per NIC x named verdict, no duplicate for the one that moved.
        let named = (0..edge_filter_common::verdict::SLOTS).filter(|v| edge_filter_common::verdict::name(*v).is_some()).count();
        assert_eq!(text.lines().filter(|l| l.starts_with("edge_filter_packets_total{")).count(), 2 * named + 1, "{text}");
    }

    #[test]
    fn text_0_0_4_names_samples_in_help_and_type() {
        let s = Snapshot {
            counters: vec![],
            rules: vec![RuleRow { rule: "a\"b".into(), packets: 1, bytes: 60 }],
            addresses: vec![],
            flows: 0,
            interfaces: vec![],
            dry_run: true,
            events: vec![],
            flow_events: FlowEvents::default(),
            census: CensusInfo::of(&Census::default()),
        };
        let text = s.prometheus();
        assert!(text.lines().any(|l| l == "# TYPE edge_filter_packets_total counter"), "{text}");
        assert!(text.lines().any(|l| l == "# TYPE edge_filter_flows gauge"), "{text}");
        assert!(text.lines().any(|l| l == "edge_filter_rule_hits_total{rule=\"a\\\"b\"} 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // Every TYPE line names samples that follow it.
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split(' ').nth(2).unwrap();
            assert!(!text.contains(&format!("{name}_total")), "{name}: a sample name differs from its TYPE");
        }
    }

    #[test]
    fn a_flow_is_live_by_the_kernels_timeout_for_its_state_and_table() {
        use crate::census::flow_is_live;
        use edge_filter_common::{Flow, flow_state as st};
        let settings = crate::Policy::default().to_settings(0);
        let s = 1_000_000_000u64;
        let now = 100_000 * s;
        let flow = |state, idle_s: u64| Flow { state, last_seen_ns: now - idle_s * s, ..Flow::default() };
        let cases = [
            (st::SYN_SENT, false, settings.syn_timeout_ns),
            (st::SYN_RECV, false, settings.syn_timeout_ns),
            (st::ESTABLISHED, false, settings.established_timeout_ns),
            (st::CLOSING, false, settings.closing_timeout_ns),
            (st::RESET, false, settings.closing_timeout_ns),
            (st::ESTABLISHED, true, settings.udp_timeout_ns),
        ];
        for (state, udp, timeout) in cases {
            let t = timeout / s;
            assert!(flow_is_live(&flow(state, t), &settings, udp, now), "{state} udp {udp} at its timeout");
            assert!(!flow_is_live(&flow(state, t + 1), &settings, udp, now), "{state} udp {udp} past its timeout");
        }
        // A packet stamped after `now` was read (another CPU): live.
        assert!(flow_is_live(&Flow { last_seen_ns: now + 5, ..Flow::default() }, &settings, false, now));
    }
}
