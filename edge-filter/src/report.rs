//! What the operator reads: one snapshot of the pinned maps, shown as a table, as
//! JSON (`--json`) or as Prometheus text (`/metrics`).
//!
//! Contract: every view is rendered from the same [`Snapshot`], so `stats`, `stats
//! --json` and `/metrics` agree; names are the dataplane's (`pass/rule`,
//! `federation-in`, ...) unchanged. A NIC's counters are labelled with its current
//! name; counters of packets seen on NICs without a role are labelled `unattached`.

use std::fmt::Write as _;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter as PromCounter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

use crate::loader::{FlowEvents, Maps};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub counters: Vec<CounterRow>,
    pub rules: Vec<RuleRow>,
    /// Entries per set.
    pub addresses: Vec<(String, usize)>,
    pub flows: usize,
    pub dry_run: bool,
    /// `(event name, occurrences)`.
    pub events: Vec<(&'static str, u64)>,
    pub flow_events: FlowEvents,
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
    pub fn read(maps: &Maps) -> Result<Self, crate::loader::Error> {
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
        let rules = counters
            .rule_rows()
            .map(|(rule, c)| RuleRow { rule: rule.to_owned(), packets: c.packets, bytes: c.bytes })
            .collect();
        let sets = maps.address_sets()?;
        Ok(Self {
            counters: rows,
            rules,
            addresses: sets.sets().map(|s| (sets.name(s).to_owned(), sets.of(s).count())).collect(),
            flows: maps.flows()?.len(),
            dry_run: maps.policy()?.dry_run,
            events: {
                let counts = maps.events()?;
                edge_filter_common::event::NAMES[..2].iter().map(|(i, n)| (*n, counts[*i as usize])).collect()
            },
            flow_events: maps.flow_events()?,
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
        out
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Verdict {
            interface: String,
            action: String,
            reason: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Rule {
            rule: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Set {
            set: String,
        }
        let mut reg = Registry::default();
        let packets = Family::<Verdict, PromCounter>::default();
        let bytes = Family::<Verdict, PromCounter>::default();
        for r in &self.counters {
            let l = Verdict { interface: r.interface.clone(), action: r.action.into(), reason: r.reason.into() };
            packets.get_or_create(&l).inc_by(r.packets);
            bytes.get_or_create(&l).inc_by(r.bytes);
        }
        let hits = Family::<Rule, PromCounter>::default();
        for r in &self.rules {
            hits.get_or_create(&Rule { rule: r.rule.clone() }).inc_by(r.packets);
        }
        let addresses = Family::<Set, Gauge>::default();
        for (s, n) in &self.addresses {
            addresses.get_or_create(&Set { set: s.clone() }).set(*n as i64);
        }
        let flows = Gauge::<i64>::default();
        flows.set(self.flows as i64);
        let dry = Gauge::<i64>::default();
        dry.set(i64::from(self.dry_run));
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Event {
            event: String,
        }
        let events = Family::<Event, PromCounter>::default();
        for (e, n) in &self.events {
            events.get_or_create(&Event { event: (*e).into() }).inc_by(*n);
        }
        reg.register("edge_filter_packets", "Packets judged, per NIC, action and reason", packets);
        reg.register("edge_filter_bytes", "Bytes judged, per NIC, action and reason", bytes);
        reg.register("edge_filter_rule_hits", "Packets that matched each rule", hits);
        reg.register("edge_filter_addresses", "Entries in each edge address set", addresses);
        reg.register("edge_filter_flows", "Entries in the flow table", flows);
        reg.register("edge_filter_dry_run", "1 when nothing is dropped and would-be drops are counted", dry);
        reg.register("edge_filter_events", "Events besides verdicts: drop log lines and suppressions", events);
        let flow_events = Family::<Event, PromCounter>::default();
        let embryos = Gauge::<i64>::default();
        let (f, e) = (&self.flow_events.flows, &self.flow_events.embryos);
        for (name, n) in [
            ("created", f.created),
            ("expired", f.expired),
            ("closed", f.closed),
            ("evicted", f.evicted),
            ("insert_failed", f.insert_failed),
            ("handshake_started", e.created),
            ("handshake_expired", e.expired),
            ("handshake_closed", e.closed),
            ("handshake_evicted", e.evicted),
            ("handshake_insert_failed", e.insert_failed),
        ] {
            flow_events.get_or_create(&Event { event: name.into() }).inc_by(n);
        }
        flow_events.get_or_create(&Event { event: "source_limited".into() }).inc_by(self.flow_events.source_limited);
        let u = &self.flow_events.udp;
        for (name, n) in [
            ("udp_created", u.created),
            ("udp_expired", u.expired),
            ("udp_evicted", u.evicted),
            ("udp_insert_failed", u.insert_failed),
        ] {
            flow_events.get_or_create(&Event { event: name.into() }).inc_by(n);
        }
        let udp = Gauge::<i64>::default();
        udp.set(u.live as i64);
        reg.register("edge_filter_udp_flows", "Entries in the UDP flow table", udp);
        embryos.set(e.live as i64);
        reg.register("edge_filter_flow_events", "State-table events: flows and handshakes created, expired, closed, evicted, refused", flow_events);
        reg.register("edge_filter_handshakes", "Entries in the embryonic (handshake) table", embryos);
        let mut out = String::new();
        encode(&mut out, &reg).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_carries_every_family_with_the_dataplane_names() {
        let s = Snapshot {
            counters: vec![CounterRow { interface: "eth0".into(), action: "drop", reason: "no_rule", packets: 3, bytes: 180 }],
            rules: vec![RuleRow { rule: "federation-in".into(), packets: 2, bytes: 120 }],
            addresses: vec![("access-edge".into(), 2), ("internal-edge".into(), 1)],
            flows: 4,
            dry_run: false,
            events: vec![("drop_log_suppressed", 7)],
            flow_events: FlowEvents::default(),
        };
        let text = s.prometheus();
        for line in [
            "edge_filter_packets_total{interface=\"eth0\",action=\"drop\",reason=\"no_rule\"} 3",
            "edge_filter_bytes_total{interface=\"eth0\",action=\"drop\",reason=\"no_rule\"} 180",
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
    }
}
