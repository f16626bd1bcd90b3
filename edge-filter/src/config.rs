//! The configuration file: TOML in, validated domain values out.
//!
//! Contract:
//! - Every key but `[[interface]]` has a default; an empty file is the vendor table on
//!   no NIC.
//! - Nothing reaches the kernel before the whole file is valid. Each refusal is one
//!   line that names the key, the bad value and what is accepted: an unknown key (with
//!   the nearest valid one), an address or prefix that does not parse, the same
//!   address in both sets, an unknown role or mode, a port of 0 or above 65535, an
//!   interface listed twice.
//! - Whether an interface exists is the loader's question, not the parser's: a config
//!   can be checked on another machine.

use std::{collections::BTreeMap, net::SocketAddr, num::NonZeroU16, path::Path, str::FromStr};

use toml::{Table, Value};

use crate::{
    addr::{AddressSets, EdgeSet, Prefix},
    policy::{Fate, Policy, Role},
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
}

/// How the XDP program is attached to a NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Native (driver) mode when the driver has it, else generic (skb) mode.
    Auto,
    /// Native mode only.
    Native,
    /// Generic mode.
    Skb,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Native => "native",
            Mode::Skb => "skb",
        }
    }
}

impl FromStr for Mode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        [Mode::Auto, Mode::Native, Mode::Skb].into_iter().find(|m| m.name() == s).ok_or(())
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
    /// `None`: no metrics endpoint.
    pub metrics: Option<SocketAddr>,
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
            metrics: Some(DEFAULT_METRICS.parse().expect("valid default")),
        }
    }
}

/// Tables and their keys; `*` marks an array of tables.
const SCHEMA: &[(&str, &[&str])] = &[
    ("interface*", &["name", "role", "mode"]),
    ("addresses", &["access-edge", "internal-edge"]),
    ("policy", &["federation-port", "internal-port", "unpoliced", "fragments", "dry-run"]),
    ("state", &["max-flows", "max-embryonic", "syn-timeout", "established-timeout", "closing-timeout"]),
    ("metrics", &["listen"]),
    ("log", &["drops", "drops-per-second"]),
];

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Syntax { file: file.clone(), message: e.to_string() })?;
        Self::parse(&text, &file)
    }

    /// Validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.message().to_owned(),
        })?;
        let cx = Cx { file };
        cx.check_keys(&table)?;
        let mut config = Config::default();

        let mut seen = BTreeMap::new();
        for (i, iface) in cx.array_of_tables(&table, "interface")?.into_iter().enumerate() {
            let key = |k: &str| format!("interface[{i}].{k}");
            let name = cx.string(iface.get("name"), &key("name"))?.ok_or_else(|| cx.value(
                &key("name"),
                "(missing)",
                "every interface needs a name",
            ))?;
            let name = name.to_owned();
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(cx.value(&key("name"), &quote(&name), "an interface name of 1 to 15 characters"));
            }
            let role = match cx.string(iface.get("role"), &key("role"))? {
                Some(r) => r.parse::<Role>().map_err(|_| cx.value(&key("role"), &quote(r), "outside, edge or host"))?,
                None => return Err(cx.value(&key("role"), "(missing)", "outside, edge or host")),
            };
            let mode = match cx.string(iface.get("mode"), &key("mode"))? {
                Some(m) => m.parse::<Mode>().map_err(|()| cx.value(&key("mode"), &quote(m), "auto, native or skb"))?,
                None => Mode::Auto,
            };
            if seen.insert(name.clone(), ()).is_some() {
                return Err(ConfigError::DuplicateInterface { file: file.to_owned(), name });
            }
            config.interfaces.push(Interface { name, role, mode });
        }

        if let Some(addresses) = cx.table(&table, "addresses")? {
            for set in EdgeSet::ALL {
                let key = format!("addresses.{}", set.name());
                for entry in cx.string_array(addresses.get(set.name()), &key)? {
                    let prefix: Prefix = entry.parse().map_err(|e: crate::AddrError| {
                        cx.value(&key, &quote(entry), &e.to_string())
                    })?;
                    config.sets.insert(set, prefix).map_err(|e| cx.value(&key, &quote(entry), &e.to_string()))?;
                }
            }
        }

        if let Some(policy) = cx.table(&table, "policy")? {
            if let Some(p) = cx.port(policy.get("federation-port"), "policy.federation-port")? {
                config.policy.federation_port = p;
            }
            if let Some(p) = cx.port(policy.get("internal-port"), "policy.internal-port")? {
                config.policy.internal_port = p;
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
        }

        if let Some(state) = cx.table(&table, "state")? {
            if let Some(n) = cx.int(state.get("max-flows"), "state.max-flows", 1, i64::from(u32::MAX))? {
                config.max_flows = n as u32;
            }
            if let Some(n) = cx.int(state.get("max-embryonic"), "state.max-embryonic", 1, i64::from(u32::MAX))? {
                config.max_embryos = n as u32;
            }
            let t = &mut config.policy.timeouts;
            for (key, slot) in [("syn-timeout", &mut t.syn), ("established-timeout", &mut t.established), ("closing-timeout", &mut t.closing)] {
                if let Some(secs) = cx.int(state.get(key), &format!("state.{key}"), 1, 30 * 24 * 3600)? {
                    *slot = std::time::Duration::from_secs(secs as u64);
                }
            }
        }

        if let Some(log) = cx.table(&table, "log")? {
            let per_second = cx.int(log.get("drops-per-second"), "log.drops-per-second", 1, 1_000_000)?;
            if cx.bool(log.get("drops"), "log.drops")? == Some(true) {
                config.policy.drop_log =
                    Some(per_second.map_or(crate::policy::DEFAULT_DROP_LOG_PER_SEC, |n| n as u32));
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
        let hint = nearest(leaf, valid).map_or_else(
            || format!(" (valid here: {})", valid.join(", ")),
            |n| format!("; did you mean `{n}`?"),
        );
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
                        match item {
                            Value::Table(t) => check(t, format!("{key}[{i}]"))?,
                            other => return Err(self.value(&format!("{key}[{i}]"), &other.to_string(), "a table ([[interface]])")),
                        }
                    }
                }
                (false, Value::Table(t)) => check(t, key.clone())?,
                (true, other) => return Err(self.value(key, &other.to_string(), "an array of tables ([[interface]])")),
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
            Some(Value::Integer(n)) => u16::try_from(*n)
                .ok()
                .and_then(NonZeroU16::new)
                .map(Some)
                .ok_or_else(|| self.value(key, &n.to_string(), "a TCP port from 1 to 65535")),
            Some(other) => Err(self.value(key, &other.to_string(), "a TCP port from 1 to 65535")),
        }
    }

    fn fate(&self, v: Option<&Value>, key: &str) -> Result<Option<Fate>, ConfigError> {
        match self.string(v, key)? {
            None => Ok(None),
            Some("pass") => Ok(Some(Fate::Pass)),
            Some("drop") => Ok(Some(Fate::Drop)),
            Some(other) => Err(self.value(key, &quote(other), "pass or drop")),
        }
    }
}

/// The valid key closest to `key` by edit distance, if it is plausibly a typo.
fn nearest<'a>(key: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::damerau_levenshtein(&key.to_lowercase(), v), *v))
        .filter(|(d, v)| *d <= 3.max(v.len() / 3))
        .min()
        .map(|(_, v)| v)
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
        assert_eq!(c.policy.federation_port.get(), 5269);
        assert_eq!(c.policy.internal_port.get(), 23456);
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

            [state]
            max-flows = 1024
            max-embryonic = 256
            syn-timeout = 5
            established-timeout = 3600
            closing-timeout = 30

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
        assert_eq!(c.sets.lookup("192.0.2.10".parse().unwrap()), Some(EdgeSet::InternalEdge));
        assert_eq!(c.policy.federation_port.get(), 5270);
        assert_eq!(c.policy.unpoliced, Fate::Drop);
        assert_eq!(c.policy.fragments, Fate::Pass);
        assert!(c.policy.dry_run);
        assert_eq!(c.max_flows, 1024);
        assert_eq!(c.max_embryos, 256);
        assert_eq!(c.policy.timeouts.syn.as_secs(), 5);
        assert_eq!(c.policy.timeouts.established.as_secs(), 3600);
        assert_eq!(c.policy.timeouts.closing.as_secs(), 30);
        assert_eq!(c.metrics, None, "an empty [metrics] table disables the endpoint");
        assert_eq!(c.policy.drop_log, Some(5));
        let quiet = Config::parse("[log]\ndrops = false\ndrops-per-second = 5\n", "edge.toml").unwrap();
        assert_eq!(quiet.policy.drop_log, None);
    }

    #[test]
    fn each_bad_input_is_one_line_naming_the_value() {
        for (text, want) in [
            ("[policy]\nfederation_port = 5269", "edge.toml: unknown key `policy.federation_port`; did you mean `federation-port`?"),
            ("[polcy]\ndry-run = true", "edge.toml: unknown key `polcy`; did you mean `policy`?"),
            ("[[interface]]\nname = \"eth0\"\nrole = \"outside\"\nmod = \"skb\"", "edge.toml: unknown key `interface[0].mod`; did you mean `mode`?"),
            ("[policy]\nfederation-port = 0", "edge.toml: policy.federation-port = 0: a TCP port from 1 to 65535"),
            ("[policy]\ninternal-port = 65536", "edge.toml: policy.internal-port = 65536: a TCP port from 1 to 65535"),
            ("[policy]\nunpoliced = \"reject\"", "edge.toml: policy.unpoliced = \"reject\": pass or drop"),
            ("[log]\ndrops = \"yes\"", "edge.toml: log.drops = \"yes\": true or false"),
            ("[log]\ndrops-per-second = 0", "edge.toml: log.drops-per-second = 0: an integer from 1 to 1000000"),
            ("[[interface]]\nname = \"eth0\"\nrole = \"inside\"", "edge.toml: interface[0].role = \"inside\": outside, edge or host"),
            ("[[interface]]\nname = \"eth0\"\nrole = \"edge\"\nmode = \"fast\"", "edge.toml: interface[0].mode = \"fast\": auto, native or skb"),
            ("[[interface]]\nname = \"eth0\"\nrole = \"edge\"\n[[interface]]\nname = \"eth0\"\nrole = \"outside\"", "edge.toml: interface `eth0` is listed twice"),
            ("[addresses]\naccess-edge = [\"203.0.113.300\"]", "edge.toml: addresses.access-edge = \"203.0.113.300\": `203.0.113.300` is not an IP address or prefix"),
            ("[addresses]\naccess-edge = [\"203.0.113.0/24\"]\ninternal-edge = [\"203.0.113.10\"]", "edge.toml: addresses.internal-edge = \"203.0.113.10\": 203.0.113.10 in internal-edge overlaps 203.0.113.0/24 in access-edge"),
            ("[state]\nmax-flows = 0", "edge.toml: state.max-flows = 0: an integer from 1 to 4294967295"),
            ("[state]\nsyn-timeout = 0", "edge.toml: state.syn-timeout = 0: an integer from 1 to 2592000"),
            ("[metrics]\nlisten = \"localhost\"", "edge.toml: metrics.listen = \"localhost\": an address and port such as 127.0.0.1:9435"),
            ("policy = 3", "edge.toml: policy = 3: a table ([policy])"),
            ("[policy", "edge.toml: "),
        ] {
            let e = err(text);
            assert!(e.starts_with(want), "{text:?}\n got: {e}\nwant: {want}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
}
