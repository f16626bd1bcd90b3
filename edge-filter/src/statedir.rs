//! The state directory: address changes made at runtime, kept across reboots.
//!
//! `addr add` and `addr del` change the pinned maps at once and record the change in
//! `<state-dir>/addresses.toml` as additions and removals relative to the config, so
//! that the next `run` (after a reboot, when the pins are gone) restores the same sets:
//! `effective = (config ∪ added) − removed`.
//!
//! Contract: the file is replaced atomically (write, fsync, rename), so a crash leaves
//! the old or the new content, never a mix; a file that does not parse is an error
//! naming it, never silently ignored.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::addr::{AddrError, AddressSets, Prefix, SetId};

const FILE: &str = "addresses.toml";

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Addr {
        path: PathBuf,
        #[source]
        source: AddrError,
    },
}

/// Where an entry of the effective sets comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Config,
    Runtime,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Runtime => "runtime",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetChanges {
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

/// Runtime changes of the address sets, by set name (a peer set is known by the name
/// the config gives it; changes to a set the config no longer has are left aside).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    added: BTreeMap<(Prefix, String), ()>,
    removed: BTreeMap<(Prefix, String), ()>,
}

impl Changes {
    /// Read the changes in `dir` (none when the file does not exist).
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let raw: BTreeMap<String, SetChanges> =
            toml::from_str(&text).map_err(|e| StateError::Parse { path: path.clone(), message: e.message().to_owned() })?;
        let mut changes = Self::default();
        for (set, c) in raw {
            for (list, target) in [(&c.added, &mut changes.added), (&c.removed, &mut changes.removed)] {
                for p in list {
                    let prefix: Prefix = p.parse().map_err(|source| StateError::Addr { path: path.clone(), source })?;
                    target.insert((prefix, set.clone()), ());
                }
            }
        }
        Ok(changes)
    }

    /// Write the changes to `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut raw: BTreeMap<String, SetChanges> = BTreeMap::new();
        for ((p, s), ()) in &self.added {
            raw.entry(s.clone()).or_default().added.push(p.to_string());
        }
        for ((p, s), ()) in &self.removed {
            raw.entry(s.clone()).or_default().removed.push(p.to_string());
        }
        let text = format!(
            "# Address changes made with `edge-filter addr`, applied over the config at every start.\n{}",
            toml::to_string(&raw).map_err(|e| StateError::Parse { path: dir.join(FILE), message: e.to_string() })?
        );
        let tmp = dir.join(format!(".{FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let path = dir.join(FILE);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Record that `prefix` was added to the set named `set` at runtime.
    pub fn add(&mut self, set: &str, prefix: Prefix) {
        let key = (prefix, set.to_owned());
        self.removed.remove(&key);
        self.added.insert(key, ());
    }

    /// Record that `prefix` was removed from the set named `set` at runtime.
    pub fn remove(&mut self, set: &str, prefix: Prefix) {
        let key = (prefix, set.to_owned());
        self.added.remove(&key);
        self.removed.insert(key, ());
    }

    /// Whether `prefix` in the set named `set` was added at runtime.
    pub fn is_added(&self, set: &str, prefix: &Prefix) -> bool {
        self.added.contains_key(&(*prefix, set.to_owned()))
    }

    /// The sets to enforce: the config's, with these changes, each entry with its source.
    pub fn apply(&self, config: &AddressSets) -> Result<Vec<(Prefix, SetId, Source)>, AddrError> {
        let effective = self.effective(config)?;
        let mut out: Vec<_> = effective
            .iter()
            .map(|(p, s)| (p, s, if config.contains(s, &p) { Source::Config } else { Source::Runtime }))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The effective sets: the config's, less what was removed, with what was added.
    pub fn effective(&self, config: &AddressSets) -> Result<AddressSets, AddrError> {
        let mut sets = config.clone();
        for (p, name) in self.removed.keys() {
            if let Ok(s) = config.set_named(name) {
                sets.remove(s, p);
            }
        }
        for (p, name) in self.added.keys() {
            if let Ok(s) = config.set_named(name) {
                sets.insert(s, *p)?;
            }
        }
        Ok(sets)
    }
}

impl PartialOrd for Source {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Source {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn changes_apply_over_the_config_and_survive_a_round_trip() {
        let dir = std::env::temp_dir().join(format!("edge-filter-state-test-{}", std::process::id()));
        let mut config = AddressSets::default();
        config.insert(SetId::ACCESS_EDGE, p("203.0.113.10")).unwrap();
        config.insert(SetId::INTERNAL_EDGE, p("192.0.2.10")).unwrap();
        let mut c = Changes::default();
        c.add("access-edge", p("203.0.113.11"));
        c.add("access-edge", p("203.0.113.10")); // already in the config
        c.remove("internal-edge", p("192.0.2.10"));
        c.save(&dir).unwrap();
        let back = Changes::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, c);
        let eff = back.apply(&config).unwrap();
        assert_eq!(
            eff,
            vec![
                (p("203.0.113.10"), SetId::ACCESS_EDGE, Source::Config),
                (p("203.0.113.11"), SetId::ACCESS_EDGE, Source::Runtime),
            ]
        );
        // The last change wins: removing the runtime addition and adding back the
        // config entry leaves the config's sets.
        let mut c = back;
        c.remove("access-edge", p("203.0.113.11"));
        c.add("internal-edge", p("192.0.2.10"));
        assert_eq!(c.effective(&config).unwrap(), config);
        assert!(!c.is_added("access-edge", &p("203.0.113.11")));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("edge-filter-state-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), "[access-edge]\nadded = [\"203.0.113.999\"]\n").unwrap();
        let e = Changes::load(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("addresses.toml") && e.contains("203.0.113.999"), "{e}");
    }
}
