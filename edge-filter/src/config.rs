//! The configuration file: TOML in, validated domain values out.
//!
//! Contract:
//! - Every key but `[[interface]]` has a default; an empty file is the vendor's XMPP
//!   federation table on no NIC.
//! - Nothing reaches the kernel before the whole file is valid. Each refusal is one
//!   line that names the key, the bad value and what is accepted: an unknown key (with
//!   the nearest valid one), an address or prefix that does not parse, an unknown role
//!   or mode, a port of 0 or above 65535, an interface listed twice, an unknown table,
//!   port parameter or set, a row without an edge set, a duplicate row id. TOML syntax
//!   errors say the line and column.
//! - `[policy] federation-port` and `internal-port` are the older names of
//!   `[policy.ports] XmppListeningPort` and `XmppInternalPort`; giving both names of
//!   one port is refused.
//! - An interface is named by its name in errors (`interface "eth0" role = ...`); by
//!   its index only when the name itself is missing or bad (`interface[0].name`).
//! - Whether an interface exists is not the parser's question: `check` and `run` ask
//!   the host (`pins::preflight`); `check --offline` checks the file alone, as on
//!   another machine.

use std::{collections::BTreeMap, net::SocketAddr, num::NonZeroU16, path::Path};

use toml::{Table, Value};

use crate::{
    addr::{AddressSets, Prefix, SetId},
    names::named_enum,
    policy::{Fate, Policy, Role},
    rules::{PortRange, RowSpec, RuleTable, TableSpec},
};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: unknown key `{key}`{hint}")]
    UnknownKey { file: String, key: String, hint: String },
    #[error("{file}: {key} = {value}: {expected}")]
    Value { file: String, key: String, value: String, expected: String },
    #[error("{file}: interface `{name}` is listed twice")]
    DuplicateInterface { file: String, name: String },
    #[error("{file}: {message}")]
    Policy { file: String, message: String },
}

named_enum! {
    /// How the XDP program is attached to a NIC.
    pub enum Mode ("mode") {
        /// Native (driver) mode when the driver has it, else generic (skb) mode.
        Auto = "auto",
        /// Native mode only.
        Native = "native",
        /// Generic mode.
        Skb = "skb",
    }
}

/// One NIC the filter attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub role: Role,
    pub mode: Mode,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<Interface>,
    pub sets: AddressSets,
    pub policy: Policy,
    pub max_flows: u32,
    /// Handshakes in progress the embryonic table holds.
    pub max_embryos: u32,
    /// Handshakes the trusted side opened that their own table holds.
    pub max_embryos_out: u32,
    /// UDP flows the UDP table holds.
    pub max_udp_flows: u32,
    /// `None`: no metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// How often the daemon counts the state tables for `status` and `/metrics`.
    pub census_interval: std::time::Duration,
}

/// Default metrics listener.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9435";

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            sets: AddressSets::default(),
            policy: Policy::default(),
            max_flows: edge_filter_common::DEFAULT_MAX_FLOWS,
            max_embryos: edge_filter_common::DEFAULT_MAX_EMBRYOS,
            max_embryos_out: edge_filter_common::DEFAULT_MAX_EMBRYOS_OUT,
            max_udp_flows: edge_filter_common::DEFAULT_MAX_UDP_FLOWS,
            metrics: Some(DEFAULT_METRICS.parse().expect("valid default")),
            census_interval: crate::census::DEFAULT_INTERVAL,
        }
    }
}

/// Tables and their keys; `*` marks an array of tables.
const SCHEMA: &[(&str, &[&str])] = &[
    ("interface*", &["name", "role", "mode"]),
    ("addresses", &edge_filter_common::set::EDGE_NAMES),
    ("peers", &["*"]),
    (
        "policy",
        &["tables", "disable", "ports", "federation-port", "internal-port", "unpoliced", "fragments", "dry-run", "host-link-local", "host-dhcp"],
    ),
    ("rule*", &["id", "proto", "port", "source", "destination"]),
    (
        "state",
        &[
            "max-flows",
            "max-embryonic",
            "max-embryonic-out",
            "max-udp-flows",
            "syn-timeout",
            "established-timeout",
            "closing-timeout",
            "udp-timeout",
            "max-flows-per-source",
            "source-prefix-v4",
            "source-prefix-v6",
            "census-interval",
            "pickup",
        ],
    ),
    ("metrics", &["listen"]),
    ("log", &["drops", "drops-per-second"]),
];

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Syntax { file: file.clone(), message: e.to_string() })?;
        Self::parse(&text, &file)
    }

    /// Validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            ConfigError::Syntax { file: file.to_owned(), message: format!("{}{}", at.unwrap_or_default(), e.message().trim()) }
        })?;
        let cx = Cx { file };
        cx.check_keys(&table)?;
        let mut config = Config::default();

        let mut seen = BTreeMap::new();
        for (i, iface) in cx.array_of_tables(&table, "interface")?.into_iter().enumerate() {
            let key = |k: &str| format!("interface[{i}].{k}");
            let name =
                cx.string(iface.get("name"), &key("name"))?.ok_or_else(|| cx.value(&key("name"), "(missing)", "every interface needs a name"))?;
            let name = name.to_owned();
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(cx.value(&key("name"), &quote(&name), "an interface name of 1 to 15 characters"));
            }
            // Past its name, an interface is named by it: `interface "eth0" role`.
            let key = |k: &str| format!("interface {} {k}", quote(&name));
            let role = match cx.string(iface.get("role"), &key("role"))? {
                Some(r) => r.parse::<Role>().map_err(|_| cx.value(&key("role"), &quote(r), &Role::expected()))?,
                None => return Err(cx.value(&key("role"), "(missing)", "outside, edge or host")),
            };
            let mode = match cx.string(iface.get("mode"), &key("mode"))? {
                Some(m) => m.parse::<Mode>().map_err(|_| cx.value(&key("mode"), &quote(m), &Mode::expected()))?,
                None => Mode::Auto,
            };
            if seen.insert(name.clone(), ()).is_some() {
                return Err(ConfigError::DuplicateInterface { file: file.to_owned(), name });
            }
            config.interfaces.push(Interface { name, role, mode });
        }

        if let Some(addresses) = cx.table(&table, "addresses")? {
            for set in SetId::EDGE {
                let name = set.edge_name().expect("an edge set");
                cx.prefixes(&mut config.sets, set, addresses.get(name), &format!("addresses.{name}"))?;
            }
        }
        if let Some(peers) = cx.table(&table, "peers")? {
            for (name, value) in peers {
                let key = format!("peers.{name}");
                let set = config.sets.add_peer(name).map_err(|e| cx.value(&key, &quote(name), &e.to_string()))?;
                cx.prefixes(&mut config.sets, set, Some(value), &key)?;
            }
        }

        let mut spec = TableSpec::default();
        if let Some(policy) = cx.table(&table, "policy")? {
            if let Some(tables) = policy.get("tables") {
                spec.tables = cx.names(Some(tables), "policy.tables", "a list of table names")?;
            }
            spec.disable = cx.names(policy.get("disable"), "policy.disable", "a list of row ids")?;
            for (old, param) in [("federation-port", "XmppListeningPort"), ("internal-port", "XmppInternalPort")] {
                if let Some(p) = cx.port(policy.get(old), &format!("policy.{old}"))? {
                    spec.ports.set(param, p.get()).expect("a known parameter");
                }
            }
            if let Some(ports) = policy.get("ports") {
                let Value::Table(ports) = ports else {
                    return Err(cx.value("policy.ports", &ports.to_string(), "a table ([policy.ports])"));
                };
                for (param, value) in ports {
                    let key = format!("policy.ports.{param}");
                    let old = [("XmppListeningPort", "federation-port"), ("XmppInternalPort", "internal-port")]
                        .into_iter()
                        .find(|(p, o)| p == param && policy.contains_key(*o));
                    if let Some((_, o)) = old {
                        return Err(cx.value(&key, &value.to_string(), &format!("one name per port: policy.{o} says it too")));
                    }
                    let p = cx.port(Some(value), &key)?.expect("present");
                    spec.ports.set(param, p.get()).map_err(|e| cx.value(&key, &value.to_string(), &e.to_string()))?;
                }
            }
            if let Some(f) = cx.fate(policy.get("unpoliced"), "policy.unpoliced")? {
                config.policy.unpoliced = f;
            }
            if let Some(f) = cx.fate(policy.get("fragments"), "policy.fragments")? {
                config.policy.fragments = f;
            }
            if let Some(b) = cx.bool(policy.get("dry-run"), "policy.dry-run")? {
                config.policy.dry_run = b;
            }
            if let Some(s) = cx.string(policy.get("host-link-local"), "policy.host-link-local")? {
                config.policy.host_link_local =
                    s.parse().map_err(|_| cx.value("policy.host-link-local", &quote(s), &crate::policy::LinkScope::expected()))?;
            }
            if let Some(b) = cx.bool(policy.get("host-dhcp"), "policy.host-dhcp")? {
                config.policy.host_dhcp = b;
            }
        }
        for (i, row) in cx.array_of_tables(&table, "rule")?.into_iter().enumerate() {
            let key = |k: &str| format!("rule[{i}].{k}");
            let need = |k: &str, what: &str| -> Result<&str, ConfigError> {
                cx.string(row.get(k), &key(k))?.ok_or_else(|| cx.value(&key(k), "(missing)", what))
            };
            let id = need("id", "every row needs an id")?.to_owned();
            let key = |k: &str| format!("rule `{id}` {k}");
            let proto = need("proto", "tcp or udp")?;
            let proto = proto.parse().map_err(|_| cx.value(&key("proto"), &quote(proto), &crate::rules::Proto::expected()))?;
            let ports: PortRange = match row.get("port") {
                Some(Value::Integer(n)) => u16::try_from(*n)
                    .ok()
                    .and_then(|p| PortRange::single(p).ok())
                    .ok_or_else(|| cx.value(&key("port"), &n.to_string(), "a port from 1 to 65535, or a range such as \"50000-59999\""))?,
                Some(Value::String(r)) => r.parse().map_err(|_| {
                    cx.value(&key("port"), &quote(r), "a port from 1 to 65535, or a range such as \"50000-59999\" (first port not above the last)")
                })?,
                Some(other) => return Err(cx.value(&key("port"), &other.to_string(), "a port, or a range such as \"50000-59999\"")),
                None => return Err(cx.value(&key("port"), "(missing)", "a port, or a range such as \"50000-59999\"")),
            };
            let source = need("source", "any, or the name of a set")?.to_owned();
            let destination = need("destination", "any, or the name of a set")?.to_owned();
            spec.rows.push(RowSpec { id, proto, ports, source, destination });
        }
        config.policy.rules =
            RuleTable::build(&spec, &config.sets).map_err(|e| ConfigError::Policy { file: file.to_owned(), message: e.to_string() })?;

        if let Some(state) = cx.table(&table, "state")? {
            if let Some(n) = cx.int(state.get("max-flows"), "state.max-flows", 1, i64::from(u32::MAX))? {
                config.max_flows = n as u32;
            }
            if let Some(n) = cx.int(state.get("max-embryonic"), "state.max-embryonic", 1, i64::from(u32::MAX))? {
                config.max_embryos = n as u32;
            }
            let t = &mut config.policy.timeouts;
            if let Some(n) = cx.int(state.get("max-embryonic-out"), "state.max-embryonic-out", 1, i64::from(u32::MAX))? {
                config.max_embryos_out = n as u32;
            }
            if let Some(n) = cx.int(state.get("max-udp-flows"), "state.max-udp-flows", 1, i64::from(u32::MAX))? {
                config.max_udp_flows = n as u32;
            }
            if let Some(b) = cx.bool(state.get("pickup"), "state.pickup")? {
                config.policy.pickup = b;
            }
            if let Some(n) = cx.int(state.get("census-interval"), "state.census-interval", 1, 3600)? {
                config.census_interval = std::time::Duration::from_secs(n as u64);
            }
            let limit = &mut config.policy.sources;
            if let Some(n) = cx.int(state.get("max-flows-per-source"), "state.max-flows-per-source", 1, i64::from(u32::MAX))? {
                limit.max_flows = n as u32;
            }
            if let Some(n) = cx.int(state.get("source-prefix-v4"), "state.source-prefix-v4", 0, 32)? {
                limit.v4_len = n as u8;
            }
            if let Some(n) = cx.int(state.get("source-prefix-v6"), "state.source-prefix-v6", 0, 128)? {
                limit.v6_len = n as u8;
            }
            for (key, slot) in [
                ("syn-timeout", &mut t.syn),
                ("established-timeout", &mut t.established),
                ("closing-timeout", &mut t.closing),
                ("udp-timeout", &mut t.udp),
            ] {
                if let Some(secs) = cx.int(state.get(key), &format!("state.{key}"), 1, 30 * 24 * 3600)? {
                    *slot = std::time::Duration::from_secs(secs as u64);
                }
            }
        }

        if let Some(log) = cx.table(&table, "log")? {
            let per_second = cx.int(log.get("drops-per-second"), "log.drops-per-second", 1, 1_000_000)?;
            if cx.bool(log.get("drops"), "log.drops")? == Some(true) {
                config.policy.drop_log = Some(per_second.map_or(crate::policy::DEFAULT_DROP_LOG_PER_SEC, |n| n as u32));
            }
        }

        if let Some(metrics) = cx.table(&table, "metrics")? {
            config.metrics = match cx.string(metrics.get("listen"), "metrics.listen")? {
                Some(s) => Some(s.parse().map_err(|_| cx.value("metrics.listen", &quote(s), "an address and port such as 127.0.0.1:9435"))?),
                None => None,
            };
        }
        Ok(config)
    }
}

fn quote(s: &str) -> String {
    format!("\"{s}\"")
}

/// Error context: the file name.
struct Cx<'a> {
    file: &'a str,
}

impl Cx<'_> {
    fn value(&self, key: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::Value { file: self.file.to_owned(), key: key.to_owned(), value: value.to_owned(), expected: expected.to_owned() }
    }

    fn unknown(&self, key: String, valid: &[&str], leaf: &str) -> ConfigError {
        let hint = nearest(leaf, valid).map_or_else(|| format!(" (valid here: {})", valid.join(", ")), |n| format!("; did you mean `{n}`?"));
        ConfigError::UnknownKey { file: self.file.to_owned(), key, hint }
    }

    /// Every key must be in [`SCHEMA`].
    fn check_keys(&self, table: &Table) -> Result<(), ConfigError> {
        let tables: Vec<&str> = SCHEMA.iter().map(|(t, _)| t.trim_end_matches('*')).collect();
        for (key, value) in table {
            let Some((name, keys)) = SCHEMA.iter().find(|(t, _)| t.trim_end_matches('*') == key) else {
                return Err(self.unknown(key.clone(), &tables, key));
            };
            let check = |t: &Table, prefix: String| -> Result<(), ConfigError> {
                if keys == &["*"] {
                    return Ok(());
                }
                for k in t.keys() {
                    if !keys.contains(&k.as_str()) {
                        return Err(self.unknown(format!("{prefix}.{k}"), keys, k));
                    }
                }
                Ok(())
            };
            match (name.ends_with('*'), value) {
                (true, Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        // An interface with a usable name is named by it.
                        let named = match item.get("name").and_then(Value::as_str) {
                            Some(n) if key == "interface" && !n.is_empty() && n.len() <= 15 && !n.contains(['/', ' ']) => {
                                format!("{key} {}", quote(n))
                            }
                            _ => format!("{key}[{i}]"),
                        };
                        match item {
                            Value::Table(t) => check(t, named)?,
                            other => return Err(self.value(&format!("{key}[{i}]"), &other.to_string(), &format!("a table ([[{key}]])"))),
                        }
                    }
                }
                (false, Value::Table(t)) => check(t, key.clone())?,
                (true, other) => return Err(self.value(key, &other.to_string(), &format!("an array of tables ([[{key}]])"))),
                (false, other) => return Err(self.value(key, &other.to_string(), &format!("a table ([{key}])"))),
            }
        }
        Ok(())
    }

    fn table<'t>(&self, t: &'t Table, key: &str) -> Result<Option<&'t Table>, ConfigError> {
        Ok(t.get(key).and_then(Value::as_table))
    }

    fn array_of_tables<'t>(&self, t: &'t Table, key: &str) -> Result<Vec<&'t Table>, ConfigError> {
        Ok(t.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_table).collect()).unwrap_or_default())
    }

    fn string<'v>(&self, v: Option<&'v Value>, key: &str) -> Result<Option<&'v str>, ConfigError> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.value(key, &other.to_string(), "a string")),
        }
    }

    fn string_array<'v>(&self, v: Option<&'v Value>, key: &str) -> Result<Vec<&'v str>, ConfigError> {
        match v {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().ok_or_else(|| self.value(key, &i.to_string(), "a list of addresses or prefixes as strings")))
                .collect(),
            Some(other) => Err(self.value(key, &other.to_string(), "a list of addresses or prefixes as strings")),
        }
    }

    /// A list of prefixes into `set`.
    fn prefixes(&self, sets: &mut AddressSets, set: SetId, v: Option<&Value>, key: &str) -> Result<(), ConfigError> {
        for entry in self.string_array(v, key)? {
            let prefix: Prefix = entry.parse().map_err(|e: crate::AddrError| self.value(key, &quote(entry), &e.to_string()))?;
            sets.insert(set, prefix).map_err(|e| self.value(key, &quote(entry), &e.to_string()))?;
        }
        Ok(())
    }

    /// A list of names.
    fn names(&self, v: Option<&Value>, key: &str, what: &str) -> Result<Vec<String>, ConfigError> {
        match v {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().map(|i| i.as_str().map(str::to_owned).ok_or_else(|| self.value(key, &i.to_string(), what))).collect()
            }
            Some(other) => Err(self.value(key, &other.to_string(), what)),
        }
    }

    fn bool(&self, v: Option<&Value>, key: &str) -> Result<Option<bool>, ConfigError> {
        match v {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(self.value(key, &other.to_string(), "true or false")),
        }
    }

    fn int(&self, v: Option<&Value>, key: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        match v {
            None => Ok(None),
            Some(Value::Integer(n)) if (min..=max).contains(n) => Ok(Some(*n)),
            Some(other) => Err(self.value(key, &other.to_string(), &format!("an integer from {min} to {max}"))),
        }
    }

    fn port(&self, v: Option<&Value>, key: &str) -> Result<Option<NonZeroU16>, ConfigError> {
        match v {
            None => Ok(None),
            Some(Value::Integer(n)) => {
                u16::try_from(*n).ok().and_then(NonZeroU16::new).map(Some).ok_or_else(|| self.value(key, &n.to_string(), "a port from 1 to 65535"))
            }
            Some(other) => Err(self.value(key, &other.to_string(), "a port from 1 to 65535")),
        }
    }

    fn fate(&self, v: Option<&Value>, key: &str) -> Result<Option<Fate>, ConfigError> {
        self.string(v, key)?.map(|s| s.parse().map_err(|_| self.value(key, &quote(s), &Fate::expected()))).transpose()
    }
}

/// The valid key closest to `key` by edit distance, if it is plausibly a typo.
fn nearest<'a>(key: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid.iter().map(|v| (strsim::damerau_levenshtein(&key.to_lowercase(), v), *v)).filter(|(d, v)| *d <= 3.max(v.len() / 3)).min().map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "edge.toml").unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_the_vendor_table() {
        let c = Config::parse("", "edge.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.policy.rules, RuleTable::xmpp_federation(&c.sets));
        assert_eq!(c.metrics, Some("127.0.0.1:9435".parse().unwrap()));
    }

    #[test]
    fn full_file_parses_into_typed_values() {
        let c = Config::parse(
            r#"
            [[interface]]
            name = "eth0"
            role = "outside"
            [[interface]]
            name = "eth1"
            role = "edge"
            mode = "skb"

            [addresses]
            access-edge = ["203.0.113.10", "2001:db8:203::10"]
            internal-edge = ["192.0.2.10/32"]

            [policy]
            federation-port = 5270
            internal-port = 5061
            unpoliced = "drop"
            fragments = "pass"
            dry-run = true
            host-dhcp = true

            [state]
            max-flows = 1024
            max-embryonic = 256
            syn-timeout = 5
            established-timeout = 3600
            closing-timeout = 30
            pickup = false

            [metrics]

            [log]
            drops = true
            drops-per-second = 5
            "#,
            "edge.toml",
        )
        .unwrap();
        assert_eq!(c.interfaces[1], Interface { name: "eth1".into(), role: Role::Edge, mode: Mode::Skb });
        assert_eq!(c.interfaces[0].mode, Mode::Auto);
        assert_eq!(c.sets.len(), 3);
        assert_eq!(c.sets.lookup("192.0.2.10".parse().unwrap()), SetId::INTERNAL_EDGE.bit());
        let ports: Vec<String> = c.policy.rules.rows().iter().map(|r| format!("{} {}", r.id, r.ports)).collect();
        assert_eq!(ports, ["federation-in 5270", "federation-out 5270", "internal-mtls 5061"]);
        assert_eq!(c.policy.unpoliced, Fate::Drop);
        assert_eq!(c.policy.fragments, Fate::Pass);
        assert!(c.policy.dry_run);
        assert_eq!(c.max_flows, 1024);
        assert_eq!(c.max_embryos, 256);
        assert_eq!(c.policy.timeouts.syn.as_secs(), 5);
        assert_eq!(c.policy.timeouts.established.as_secs(), 3600);
        assert_eq!(c.policy.timeouts.closing.as_secs(), 30);
        assert!(!c.policy.pickup);
        assert!(c.policy.host_dhcp);
        assert!(!Config::default().policy.host_dhcp, "DHCP is not essential unless the host uses it");
        assert!(Config::default().policy.pickup, "pickup is on by default");
        assert_eq!(c.metrics, None, "an empty [metrics] table disables the endpoint");
        assert_eq!(c.policy.drop_log, Some(5));
        let quiet = Config::parse("[log]\ndrops = false\ndrops-per-second = 5\n", "edge.toml").unwrap();
        assert_eq!(quiet.policy.drop_log, None);
    }

    /// The whole-Edge configuration of the README, as written.
    #[test]
    fn the_whole_edge_configuration_works_as_written() {
        let c = Config::parse(
            r#"
            [policy]
            tables = ["lync-edge-external", "lync-edge-internal"]
            disable = ["federation-in"]

            [policy.ports]
            XmppListeningPort = 5269
            MediaCommunicationPortStart = 50000
            MediaCommunicationPortCount = 10000

            [addresses]
            access-edge = ["203.0.113.10"]
            webconf-edge = ["203.0.113.10"]
            av-edge = ["203.0.113.11"]
            internal-edge = ["192.0.2.10"]

            [peers]
            partners = ["198.51.100.0/24", "2001:db8:5100::/48"]

            [[rule]]
            id = "federation-in-partners"
            proto = "tcp"
            port = 5269
            source = "partners"
            destination = "access-edge"

            [[rule]]
            id = "ntp-out"
            proto = "udp"
            port = "123"
            source = "access-edge"
            destination = "any"

            [state]
            udp-timeout = 30
            max-flows-per-source = 100
            source-prefix-v6 = 56
            "#,
            "edge.toml",
        )
        .unwrap();
        let view = c.policy.rules.view(&c.sets);
        assert_eq!(view.len(), 16 + 9 + 2);
        assert!(view.iter().all(|r| r.id != "federation-in"));
        let partners = view.iter().find(|r| r.id == "federation-in-partners").unwrap();
        assert_eq!((partners.source.as_str(), partners.destination.as_str(), partners.opens_from), ("partners", "access-edge", "outside, host"));
        let rtp = view.iter().find(|r| r.id == "rtp-udp-in").unwrap();
        assert_eq!((rtp.proto, rtp.port.as_str()), ("udp", "50000-59999"));
        assert_eq!(view.last().unwrap().opens_from, "edge");
        assert_eq!(c.sets.lookup("203.0.113.10".parse().unwrap()), SetId::ACCESS_EDGE.bit() | SetId::WEBCONF_EDGE.bit());
        assert_eq!(c.sets.lookup("198.51.100.7".parse().unwrap()), 1 << 4);
        assert_eq!(c.policy.timeouts.udp.as_secs(), 30);
        assert_eq!(c.policy.sources, crate::SourceLimit { max_flows: 100, v4_len: 24, v6_len: 56 });
        assert_eq!(c.sets.overlaps().len(), 1, "access-edge and webconf-edge share an address");
    }

    #[test]
    fn each_bad_input_is_one_line_naming_the_value() {
        for (text, want) in [
            ("[policy]\nfederation_port = 5269", "edge.toml: unknown key `policy.federation_port`; did you mean `federation-port`?"),
            ("[polcy]\ndry-run = true", "edge.toml: unknown key `polcy`; did you mean `policy`?"),
            (
                "[[interface]]\nname = \"eth0\"\nrole = \"outside\"\nmod = \"skb\"",
                "edge.toml: unknown key `interface \"eth0\".mod`; did you mean `mode`?",
            ),
            ("[[interface]]\nname = \"a/b\"\nrole = \"outside\"\nmod = \"skb\"", "edge.toml: unknown key `interface[0].mod`; did you mean `mode`?"),
            ("[[interface]]\nrole = \"outside\"", "edge.toml: interface[0].name = (missing): every interface needs a name"),
            ("[[interface]]\nname = \"a/b\"\nrole = \"outside\"", "edge.toml: interface[0].name = \"a/b\": an interface name of 1 to 15 characters"),
            ("[policy]\nfederation-port = 0", "edge.toml: policy.federation-port = 0: a port from 1 to 65535"),
            ("[policy]\ninternal-port = 65536", "edge.toml: policy.internal-port = 65536: a port from 1 to 65535"),
            ("[policy]\nunpoliced = \"reject\"", "edge.toml: policy.unpoliced = \"reject\": pass or drop"),
            ("[log]\ndrops = \"yes\"", "edge.toml: log.drops = \"yes\": true or false"),
            ("[log]\ndrops-per-second = 0", "edge.toml: log.drops-per-second = 0: an integer from 1 to 1000000"),
            ("[[interface]]\nname = \"eth0\"\nrole = \"inside\"", "edge.toml: interface \"eth0\" role = \"inside\": outside, edge or host"),
            (
                "[[interface]]\nname = \"eth0\"\nrole = \"edge\"\nmode = \"fast\"",
                "edge.toml: interface \"eth0\" mode = \"fast\": auto, native or skb",
            ),
            (
                "[[interface]]\nname = \"eth0\"\nrole = \"edge\"\n[[interface]]\nname = \"eth0\"\nrole = \"outside\"",
                "edge.toml: interface `eth0` is listed twice",
            ),
            (
                "[addresses]\naccess-edge = [\"203.0.113.300\"]",
                "edge.toml: addresses.access-edge = \"203.0.113.300\": `203.0.113.300` is not an IP address or prefix",
            ),
            (
                "[policy]\ntables = [\"lync-edge\"]",
                "edge.toml: unknown table `lync-edge` (expected xmpp-federation, lync-edge-external or lync-edge-internal)",
            ),
            (
                "[policy.ports]\nXmppPort = 5269",
                "edge.toml: policy.ports.XmppPort = 5269: unknown port parameter `XmppPort` (expected one of XmppListeningPort, ",
            ),
            ("[policy.ports]\nXmppListeningPort = 0", "edge.toml: policy.ports.XmppListeningPort = 0: a port from 1 to 65535"),
            (
                "[policy]\nfederation-port = 5270\n[policy.ports]\nXmppListeningPort = 5271",
                "edge.toml: policy.ports.XmppListeningPort = 5271: one name per port: policy.federation-port says it too",
            ),
            ("[policy]\ndisable = [\"federation\"]", "edge.toml: disable = `federation`: no row of the table has this id"),
            (
                "[[rule]]\nid = \"x\"\nproto = \"tcp\"\nport = 22\nsource = \"any\"\ndestination = \"edge\"",
                "edge.toml: row `x`: unknown set `edge` (expected any, access-edge, webconf-edge, av-edge, internal-edge)",
            ),
            (
                "[peers]\npartners = [\"198.51.100.0/24\"]\n[[rule]]\nid = \"x\"\nproto = \"tcp\"\nport = 22\nsource = \"any\"\ndestination = \"partners\"",
                "edge.toml: row `x`: names no edge set",
            ),
            (
                "[[rule]]\nid = \"federation-in\"\nproto = \"tcp\"\nport = 22\nsource = \"any\"\ndestination = \"access-edge\"",
                "edge.toml: row `federation-in` is defined twice",
            ),
            (
                "[[rule]]\nid = \"x\"\nproto = \"tcp\"\nport = \"60000-50000\"\nsource = \"any\"\ndestination = \"access-edge\"",
                "edge.toml: rule `x` port = \"60000-50000\": a port from 1 to 65535, or a range",
            ),
            (
                "[[rule]]\nid = \"x\"\nproto = \"tcp\"\nport = 70000\nsource = \"any\"\ndestination = \"access-edge\"",
                "edge.toml: rule `x` port = 70000: a port from 1 to 65535",
            ),
            (
                "[[rule]]\nid = \"x\"\nproto = \"sctp\"\nport = 1\nsource = \"any\"\ndestination = \"access-edge\"",
                "edge.toml: rule `x` proto = \"sctp\": tcp or udp",
            ),
            (
                "[[rule]]\nid = \"x\"\nproto = \"tcp\"\nport = 1\nsource = \"any\"\ndestination = \"access-edge\"\nsorce = \"any\"",
                "edge.toml: unknown key `rule[0].sorce`; did you mean `source`?",
            ),
            ("[peers]\naccess-edge = []", "edge.toml: peers.access-edge = \"access-edge\": set `access-edge`: the name is taken"),
            ("[polcy", "edge.toml: line 1, column 7: "),
            ("[state]\nmax-flows = 0", "edge.toml: state.max-flows = 0: an integer from 1 to 4294967295"),
            ("[state]\nsyn-timeout = 0", "edge.toml: state.syn-timeout = 0: an integer from 1 to 2592000"),
            ("[state]\npickup = \"yes\"", "edge.toml: state.pickup = \"yes\": true or false"),
            ("[metrics]\nlisten = \"localhost\"", "edge.toml: metrics.listen = \"localhost\": an address and port such as 127.0.0.1:9435"),
            ("policy = 3", "edge.toml: policy = 3: a table ([policy])"),
        ] {
            let e = err(text);
            assert!(e.starts_with(want), "{text:?}\n got: {e}\nwant: {want}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
}
