//! The state directory: address changes made at runtime, kept across reboots, and the
//! daemon's last reload outcome.
//!
//! `addr add` and `addr del` change the pinned maps at once and record the change in
//! `<state-dir>/addresses.toml`, so that the next `run` (after a reboot, when the pins
//! are gone) restores the same sets. How the changes compose with the config:
//!
//! - Every entry has one owner. An entry the config lists belongs to the config; an
//!   entry `addr add` put in that the config does not list is a *runtime addition*.
//! - `addr add` of an entry the config lists records nothing (the config owns it, and
//!   taking it out of the config takes it out of the running sets); if a runtime
//!   removal of it is recorded, the removal is cancelled.
//! - `addr del` of a runtime addition forgets the addition. `addr del` of a config
//!   entry records a *runtime removal* of that entry: it **overrides the config**,
//!   which is said at every start and reload (a warning in the log) and by `check`,
//!   `status` and `addr list` (source `removed`).
//! - A runtime removal applies only while the config keeps listing the entry it
//!   removed (same set, same prefix). When a config without that entry is applied
//!   (`run` or a reload), the removal matches nothing and is dropped (*pruned*, and
//!   logged): putting the address back in the config later enforces it.
//! - A runtime addition that the config now lists is pruned too: the config has taken
//!   the entry over. Additions to a set the config no longer has are kept, not
//!   enforced, and warned about.
//!
//! So: `effective = (config − removals of config entries) ∪ additions`.
//!
//! Contract: the files are replaced atomically (write, fsync, rename), so a crash leaves
//! the old or the new content, never a mix; a file that does not parse is an error
//! naming it, never silently ignored.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    addr::{AddrError, AddressSets, Prefix, SetId},
    names::named_enum,
};

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

named_enum! {
    /// Where an entry of the effective sets comes from.
    pub enum Source ("source") {
        /// Listed by the config.
        Config = "config",
        /// Added at runtime; the config does not list it.
        Runtime = "runtime",
        /// Listed by the config, removed at runtime: not enforced.
        Removed = "removed",
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
        let Some(text) = read_if_there(&path)? else { return Ok(Self::default()) };
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
        write_atomically(dir, FILE, &text)
    }

    /// Record that `prefix` was added to the set named `set` at runtime (an entry the
    /// running config does not list): a recorded removal of it is cancelled instead,
    /// since that puts the config's entry back.
    pub fn add(&mut self, set: &str, prefix: Prefix) {
        let key = (prefix, set.to_owned());
        if self.removed.remove(&key).is_none() {
            self.added.insert(key, ());
        }
    }

    /// Record that `prefix` was removed from the set named `set` at runtime: a runtime
    /// addition is forgotten, a config entry gets a runtime removal.
    pub fn remove(&mut self, set: &str, prefix: Prefix) {
        let key = (prefix, set.to_owned());
        if self.added.remove(&key).is_none() {
            self.removed.insert(key, ());
        }
    }

    /// Whether a runtime removal of `prefix` in the set named `set` is recorded.
    pub fn is_removed(&self, set: &str, prefix: &Prefix) -> bool {
        self.removed.contains_key(&(*prefix, set.to_owned()))
    }

    /// The recorded runtime removals: (set name, prefix).
    pub fn removals(&self) -> impl Iterator<Item = (&str, Prefix)> + '_ {
        self.removed.keys().map(|(p, s)| (s.as_str(), *p))
    }

    /// The recorded runtime additions: (set name, prefix).
    pub fn additions(&self) -> impl Iterator<Item = (&str, Prefix)> + '_ {
        self.added.keys().map(|(p, s)| (s.as_str(), *p))
    }

    /// Compose these changes with the config's sets by the rules of the module doc:
    /// the sets to enforce, each entry's source, what is pruned, what overrides the
    /// config, and the changes left after pruning (to be saved once applied).
    pub fn compose(&self, config: &AddressSets) -> Result<Composed, AddrError> {
        let mut c = Composed { sets: config.clone(), changes: Changes::default(), ..Composed::default() };
        for (p, name) in self.removed.keys() {
            match config.set_named(name).ok().filter(|s| config.contains(*s, p)) {
                Some(s) => {
                    c.sets.remove(s, p);
                    c.changes.removed.insert((*p, name.clone()), ());
                    c.overrides.push(removal_warning(name, p));
                }
                None => c.pruned.push(format!("{name} {p}: runtime removal pruned: the config no longer lists it")),
            }
        }
        for (p, name) in self.added.keys() {
            match config.set_named(name) {
                Ok(s) if config.contains(s, p) => {
                    c.pruned.push(format!("{name} {p}: runtime addition pruned: the config lists it now"));
                }
                Ok(s) => {
                    c.sets.insert(s, *p)?;
                    c.changes.added.insert((*p, name.clone()), ());
                }
                Err(_) => {
                    c.changes.added.insert((*p, name.clone()), ());
                    c.overrides.push(format!("{name} {p}: runtime addition to a set the config does not have: kept, not enforced"));
                }
            }
        }
        for (p, s) in c.sets.iter() {
            let source = if config.contains(s, &p) { Source::Config } else { Source::Runtime };
            c.entries.push((c.sets.name(s).to_owned(), p, source));
        }
        for (p, name) in c.changes.removed.keys() {
            c.entries.push((name.clone(), *p, Source::Removed));
        }
        Ok(c)
    }

    /// Whether `prefix` in the set named `set` was added at runtime.
    pub fn is_added(&self, set: &str, prefix: &Prefix) -> bool {
        self.added.contains_key(&(*prefix, set.to_owned()))
    }

    /// The sets to enforce: the config's, with these changes, each entry with its source.
    pub fn apply(&self, config: &AddressSets) -> Result<Vec<(Prefix, SetId, Source)>, AddrError> {
        let effective = self.effective(config)?;
        let mut out: Vec<_> = effective.iter().map(|(p, s)| (p, s, if config.contains(s, &p) { Source::Config } else { Source::Runtime })).collect();
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

/// The warning for a runtime removal of a config entry.
pub fn removal_warning(set: &str, p: &Prefix) -> String {
    format!("{set} {p} is in the config but removed at runtime (`edge-filter addr del`): not enforced; `edge-filter addr add {set} {p}` puts it back")
}

/// The config's sets composed with the runtime changes ([`Changes::compose`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The sets to enforce.
    pub sets: AddressSets,
    /// Every entry, enforced or not: (set name, prefix, source).
    pub entries: Vec<(String, Prefix, Source)>,
    /// Changes that no longer match the config, dropped: one line each.
    pub pruned: Vec<String>,
    /// Where the state directory overrides the config: one warning line each.
    pub overrides: Vec<String>,
    /// The changes without what was pruned.
    pub changes: Changes,
}

impl Composed {
    /// Whether applying this drops anything from the state file.
    pub fn prunes(&self) -> bool {
        !self.pruned.is_empty()
    }
}

/// The daemon's last start or reload, in `<state-dir>/reload.json`: written
/// atomically after each, read by `edge-filter reload` (which waits for `seq` to move
/// on), `status` and `addr list`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's start time (field 22 of `/proc/PID/stat`), so a reused pid is
    /// never taken for the daemon.
    pub start_time: u64,
    /// 0 at start, one more at each SIGHUP handled.
    pub seq: u64,
    /// `started`, `applied` or `refused`.
    pub outcome: String,
    /// Why a reload was refused.
    pub reason: Option<String>,
    /// The config file.
    pub config: String,
    /// Runtime changes pruned by this apply.
    #[serde(default)]
    pub pruned: Vec<String>,
    /// Where the state directory overrides the config.
    #[serde(default)]
    pub overrides: Vec<String>,
}

const RELOAD_FILE: &str = "reload.json";

impl ReloadStatus {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(RELOAD_FILE)
    }

    /// The last status written in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>, StateError> {
        let path = Self::path(dir);
        let Some(text) = read_if_there(&path)? else { return Ok(None) };
        serde_json::from_str(&text).map(Some).map_err(|e| StateError::Parse { path, message: e.to_string() })
    }

    /// Write it to `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Parse { path: Self::path(dir), message: e.to_string() })?;
        write_atomically(dir, RELOAD_FILE, &text)
    }
}

/// The start time of process `pid` (clock ticks since boot), from `/proc`.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// The text of the file at `path`, or `None` when there is no such file.
fn read_if_there(path: &Path) -> Result<Option<String>, StateError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path: path.to_owned(), source }),
    }
}

/// Write `text` to `dir/name` by the module's contract: a temporary file, fsynced,
/// renamed over the old one.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), StateError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(io(&path))
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
    use crate::addr::tests::p;

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
        assert_eq!(eff, vec![(p("203.0.113.10"), SetId::ACCESS_EDGE, Source::Config), (p("203.0.113.11"), SetId::ACCESS_EDGE, Source::Runtime),]);
        // The last change wins: removing the runtime addition and adding back the
        // config entry leaves the config's sets.
        let mut c = back;
        c.remove("access-edge", p("203.0.113.11"));
        c.add("internal-edge", p("192.0.2.10"));
        assert_eq!(c.effective(&config).unwrap(), config);
        assert!(!c.is_added("access-edge", &p("203.0.113.11")));
    }

    #[test]
    fn runtime_changes_compose_with_the_config_by_the_documented_rules() {
        let mut config = AddressSets::default();
        config.insert(SetId::ACCESS_EDGE, p("203.0.113.10")).unwrap();
        config.insert(SetId::ACCESS_EDGE, p("2001:db8:203::10")).unwrap();
        let mut c = Changes::default();
        // A removal of a config entry overrides the config, and says so.
        c.remove("access-edge", p("203.0.113.10"));
        let k = c.compose(&config).unwrap();
        assert!(!k.sets.contains(SetId::ACCESS_EDGE, &p("203.0.113.10")));
        assert!(k.entries.contains(&("access-edge".into(), p("203.0.113.10"), Source::Removed)));
        assert_eq!(k.overrides.len(), 1);
        assert!(k.overrides[0].contains("203.0.113.10") && k.overrides[0].contains("removed at runtime"), "{:?}", k.overrides);
        assert!(!k.prunes());
        // `addr add` of it cancels the removal: no runtime addition is recorded.
        let mut undo = c.clone();
        undo.add("access-edge", p("203.0.113.10"));
        assert_eq!(undo, Changes::default());
        // The config drops the entry: the removal is pruned; putting it back enforces it.
        let mut without = config.clone();
        without.remove(SetId::ACCESS_EDGE, &p("203.0.113.10"));
        let k = c.compose(&without).unwrap();
        assert_eq!(k.pruned.len(), 1, "{:?}", k.pruned);
        assert!(k.overrides.is_empty());
        assert_eq!(k.changes, Changes::default());
        assert!(k.changes.compose(&config).unwrap().sets.contains(SetId::ACCESS_EDGE, &p("203.0.113.10")));
        // A runtime addition the config lists later is pruned: the config owns it.
        let mut c = Changes::default();
        c.add("access-edge", p("203.0.113.11"));
        let k = c.compose(&config).unwrap();
        assert!(k.entries.contains(&("access-edge".into(), p("203.0.113.11"), Source::Runtime)));
        let mut with = config.clone();
        with.insert(SetId::ACCESS_EDGE, p("203.0.113.11")).unwrap();
        let k = c.compose(&with).unwrap();
        assert_eq!(k.pruned.len(), 1);
        assert!(k.entries.contains(&("access-edge".into(), p("203.0.113.11"), Source::Config)));
        assert_eq!(k.changes, Changes::default());
        // `addr del` of a runtime addition forgets it; it never becomes a removal.
        let mut c = Changes::default();
        c.add("access-edge", p("203.0.113.11"));
        c.remove("access-edge", p("203.0.113.11"));
        assert_eq!(c, Changes::default());
        // Additions to a set the config lacks are kept, not enforced, warned about.
        let mut c = Changes::default();
        c.add("partners", p("198.51.100.0/24"));
        let k = c.compose(&config).unwrap();
        assert_eq!(k.changes, c);
        assert_eq!(k.overrides.len(), 1);
        assert_eq!(k.sets, config);
    }

    #[test]
    fn the_reload_status_round_trips_and_names_this_process() {
        let dir = std::env::temp_dir().join(format!("edge-filter-reload-test-{}", std::process::id()));
        assert_eq!(ReloadStatus::load(&dir).unwrap(), None);
        let s = ReloadStatus {
            pid: std::process::id(),
            start_time: process_start_time(std::process::id()).unwrap(),
            seq: 3,
            outcome: "refused".into(),
            reason: Some("edge.toml: policy.federation-port = 0: a port from 1 to 65535".into()),
            config: "edge.toml".into(),
            ..ReloadStatus::default()
        };
        s.save(&dir).unwrap();
        let back = ReloadStatus::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, Some(s));
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
