//! The policy's settings as typed values, and their encoding for the kernel.
//!
//! Contract: a [`Policy`] that exists is valid (its rule table checked, timeouts
//! non-zero by construction), so writing it to the kernel cannot fail on content. The
//! defaults are the vendor's XMPP federation table on ports 5269 and 23456,
//! unpoliced traffic passes, policed fragments are dropped, enforcing.

use std::time::Duration;

use edge_filter_common::{Settings, flags, role};

use crate::{addr::AddressSets, names::named_enum, rules::RuleTable};

named_enum! {
    /// What a NIC faces; decides which rules may open flows from it.
    #[derive(PartialOrd, Ord, Hash)]
    pub enum Role ("role") {
        /// Partners or the corporate network. Untrusted: edge sources are spoofed here.
        Outside = "outside",
        /// The Edge server's interfaces.
        Edge = "edge",
        /// Edge addresses are local to this machine.
        Host = "host",
    }
}

impl Role {
    /// The value the kernel stores.
    pub fn to_kernel(self) -> u32 {
        match self {
            Role::Outside => role::OUTSIDE,
            Role::Edge => role::EDGE,
            Role::Host => role::HOST,
        }
    }

    pub fn from_kernel(value: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.to_kernel() == value)
    }
}

named_enum! {
    /// What a `host` NIC does with what is addressed to the machine on its link only
    /// (broadcast and multicast frames, link-local destinations).
    #[derive(Default)]
    pub enum LinkScope ("host-link-local") {
        /// Policed like the edge addresses: only rows and essentials reach the host.
        #[default]
        Police = "police",
        /// Judged as traffic of no edge address (`unpoliced`).
        Pass = "pass",
    }
}

named_enum! {
    /// What happens to a class of packets the rules do not decide.
    #[derive(Default)]
    pub enum Fate ("fate") {
        #[default]
        Pass = "pass",
        Drop = "drop",
    }
}

/// Idle timeouts of the flow table, per flow state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A SYN not yet answered.
    pub syn: Duration,
    /// Both sides have spoken.
    pub established: Duration,
    /// After a FIN or an RST.
    pub closing: Duration,
    /// A UDP flow.
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let d = Settings::DEFAULT;
        Self {
            syn: Duration::from_nanos(d.syn_timeout_ns),
            established: Duration::from_nanos(d.established_timeout_ns),
            closing: Duration::from_nanos(d.closing_timeout_ns),
            udp: Duration::from_nanos(d.udp_timeout_ns),
        }
    }
}

/// Everything the kernel program needs to know besides NICs and address sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The rows, resolved against the address sets.
    pub rules: RuleTable,
    /// Traffic that involves no edge address.
    pub unpoliced: Fate,
    /// Policed IP fragments.
    pub fragments: Fate,
    /// Count would-be drops, drop nothing.
    pub dry_run: bool,
    pub timeouts: Timeouts,
    /// Report drops through the kernel log ring: `None` off, else lines per second
    /// and CPU.
    pub drop_log: Option<u32>,
    /// How much of the flow table one source prefix may hold.
    pub sources: SourceLimit,
    /// Link-local, broadcast and multicast destinations on `host` NICs.
    pub host_link_local: LinkScope,
    /// The Edge's packets for which this node holds no flow pick one up (a firewall
    /// pair's failover; `state.pickup`).
    pub pickup: bool,
    /// DHCP servers' answers on `host` NICs are essential (`policy.host-dhcp`).
    pub host_dhcp: bool,
}

/// Fair tables: established flows one source prefix may hold, and what a source
/// prefix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimit {
    pub max_flows: u32,
    /// Prefix length of an IPv4 source.
    pub v4_len: u8,
    /// Prefix length of an IPv6 source.
    pub v6_len: u8,
}

impl Default for SourceLimit {
    fn default() -> Self {
        let d = Settings::DEFAULT;
        Self { max_flows: d.max_flows_per_source, v4_len: d.source_len4, v6_len: d.source_len6 }
    }
}

/// Default drop log rate, lines per second and CPU.
pub const DEFAULT_DROP_LOG_PER_SEC: u32 = 10;

impl Default for Policy {
    fn default() -> Self {
        Self {
            rules: RuleTable::xmpp_federation(&AddressSets::default()),
            unpoliced: Fate::Pass,
            fragments: Fate::Drop,
            dry_run: false,
            timeouts: Timeouts::default(),
            drop_log: None,
            sources: SourceLimit::default(),
            host_link_local: LinkScope::Police,
            pickup: true,
            host_dhcp: false,
        }
    }
}

impl Policy {
    /// The settings beside the rules, by their config keys: the one list `check` and
    /// `status` print ([`Policy::switches`]) and report ([`Policy::switches_json`]).
    fn switch_list(&self) -> [(&'static str, serde_json::Value); 6] {
        [
            ("unpoliced", self.unpoliced.name().into()),
            ("fragments", self.fragments.name().into()),
            ("dry-run", self.dry_run.into()),
            ("host-link-local", self.host_link_local.name().into()),
            ("host-dhcp", self.host_dhcp.into()),
            ("pickup", self.pickup.into()),
        ]
    }

    /// The settings beside the rules, as `check` and `status` print them.
    pub fn switches(&self) -> String {
        let shown = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        self.switch_list().iter().map(|(k, v)| format!("{k} {}", shown(v))).collect::<Vec<_>>().join(", ")
    }

    /// The same settings as keys of a `--json` document `doc` (an object), named as
    /// JSON keys are (`dry_run`).
    pub fn switches_json(&self, doc: &mut serde_json::Value) {
        if let Some(doc) = doc.as_object_mut() {
            doc.extend(self.switch_list().into_iter().map(|(k, v)| (k.replace('-', "_"), v)));
        }
    }

    /// The kernel's encoding of everything but the rules: flag bits, nanoseconds, and
    /// the rule generation `rules_at`. The rulesets and `lens_at` are the loader's to
    /// fill (zero here).
    pub fn to_settings(&self, rules_at: u32) -> Settings {
        let mut bits = 0;
        if self.unpoliced == Fate::Drop {
            bits |= flags::UNPOLICED_DROP;
        }
        if self.fragments == Fate::Pass {
            bits |= flags::FRAGMENTS_PASS;
        }
        if self.dry_run {
            bits |= flags::DRY_RUN;
        }
        if self.drop_log.is_some() {
            bits |= flags::DROP_LOG;
        }
        if self.host_link_local == LinkScope::Pass {
            bits |= flags::HOST_LINK_PASS;
        }
        if !self.pickup {
            bits |= flags::NO_PICKUP;
        }
        if self.host_dhcp {
            bits |= flags::HOST_DHCP;
        }
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Settings {
            flags: bits,
            rules_at,
            syn_timeout_ns: ns(self.timeouts.syn),
            established_timeout_ns: ns(self.timeouts.established),
            closing_timeout_ns: ns(self.timeouts.closing),
            udp_timeout_ns: ns(self.timeouts.udp),
            drop_log_per_sec: self.drop_log.unwrap_or(DEFAULT_DROP_LOG_PER_SEC),
            max_flows_per_source: self.sources.max_flows,
            source_len4: self.sources.v4_len,
            source_len6: self.sources.v6_len,
            ..Settings::DEFAULT
        }
    }

    /// The policy the kernel holds, with the rule table read beside it, if the
    /// encoding is one this version writes.
    pub fn from_settings(s: &Settings, rules: RuleTable) -> Option<Self> {
        if s.flags & !flags::ALL != 0 || s.rules_at > 1 || s.lens_at > 1 {
            return None;
        }
        let fate = |bit, when_set| if s.flags & bit != 0 { when_set } else { other(when_set) };
        Some(Self {
            rules,
            unpoliced: fate(flags::UNPOLICED_DROP, Fate::Drop),
            fragments: fate(flags::FRAGMENTS_PASS, Fate::Pass),
            dry_run: s.flags & flags::DRY_RUN != 0,
            timeouts: Timeouts {
                syn: Duration::from_nanos(s.syn_timeout_ns),
                established: Duration::from_nanos(s.established_timeout_ns),
                closing: Duration::from_nanos(s.closing_timeout_ns),
                udp: Duration::from_nanos(s.udp_timeout_ns),
            },
            drop_log: (s.flags & flags::DROP_LOG != 0).then_some(s.drop_log_per_sec),
            sources: SourceLimit { max_flows: s.max_flows_per_source, v4_len: s.source_len4, v6_len: s.source_len6 },
            host_link_local: if s.flags & flags::HOST_LINK_PASS != 0 { LinkScope::Pass } else { LinkScope::Police },
            pickup: s.flags & flags::NO_PICKUP == 0,
            host_dhcp: s.flags & flags::HOST_DHCP != 0,
        })
    }
}

fn other(f: Fate) -> Fate {
    match f {
        Fate::Pass => Fate::Drop,
        Fate::Drop => Fate::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_the_kernel_default() {
        assert_eq!(Policy::default().to_settings(0), Settings::DEFAULT);
        assert_eq!(Policy::default().rules.rows().len(), 3);
    }

    #[test]
    fn switches_print_and_report_the_same_settings() {
        let p = Policy { dry_run: true, host_dhcp: true, ..Policy::default() };
        assert_eq!(p.switches(), "unpoliced pass, fragments drop, dry-run true, host-link-local police, host-dhcp true, pickup true");
        let mut doc = serde_json::json!({"rules": []});
        p.switches_json(&mut doc);
        assert_eq!(
            doc,
            serde_json::json!({"rules": [], "unpoliced": "pass", "fragments": "drop", "dry_run": true, "host_link_local": "police", "host_dhcp": true, "pickup": true})
        );
    }

    #[test]
    fn settings_round_trip() {
        let p = Policy {
            rules: RuleTable::xmpp_federation(&AddressSets::default()),
            unpoliced: Fate::Drop,
            fragments: Fate::Pass,
            dry_run: true,
            timeouts: Timeouts {
                syn: Duration::from_secs(1),
                established: Duration::from_secs(2),
                closing: Duration::from_millis(3),
                udp: Duration::from_secs(4),
            },
            drop_log: Some(5),
            sources: SourceLimit { max_flows: 7, v4_len: 16, v6_len: 48 },
            host_link_local: LinkScope::Pass,
            pickup: false,
            host_dhcp: true,
        };
        let s = p.to_settings(1);
        assert_eq!((s.flags, s.rules_at), (flags::ALL, 1));
        assert_eq!(Policy::from_settings(&s, p.rules.clone()), Some(p.clone()));
        assert_eq!(Policy::from_settings(&Settings { flags: 1 << 7, ..s }, p.rules.clone()), None);
        assert_eq!(Policy::from_settings(&Settings { rules_at: 2, ..s }, p.rules.clone()), None);
    }

    #[test]
    fn roles_parse_and_name() {
        for &r in Role::ALL {
            assert_eq!(r.name().parse::<Role>(), Ok(r));
            assert_eq!(Role::from_kernel(r.to_kernel()), Some(r));
        }
        assert_eq!("inside".parse::<Role>().unwrap_err().to_string(), "unknown role `inside` (expected outside, edge or host)");
        assert_eq!(Role::from_kernel(0), None);
    }
}
