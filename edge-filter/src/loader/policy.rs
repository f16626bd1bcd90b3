//! The policy in the maps: the settings and the rule table, two generations of it.
//!
//! Contract: a new rule table is written whole into the generation no packet reads,
//! then the settings are written with that generation made current, in one map
//! write; an id keeps its row slot (and its hit counter), a slot handed to a new id
//! starts from zero.

use aya::maps::PerCpuValues;
use aya::util::nr_cpus;
use edge_filter_common::{Counter, MAX_RULES, NAME_LEN, Rule, Settings, flags, map};

use super::{Error, Maps, map_err};
use crate::{
    policy::Policy,
    rules::{self, RuleTable},
};

/// A NUL-padded name, `None` when empty or not UTF-8.
pub(super) fn name_str(bytes: &[u8; NAME_LEN]) -> Option<String> {
    edge_filter_common::name_of(bytes).map(str::to_owned)
}

/// The id of a row slot, `None` when unused.
fn rule_id(r: &Rule) -> Option<String> {
    name_str(&r.id)
}

impl Maps {
    /// The settings the program reads.
    pub(crate) fn settings(&self) -> Result<Settings, Error> {
        Ok(self.config()?.settings)
    }

    /// The row slots of one generation of the rule table.
    fn rule_slots(&self, generation: u32) -> Result<Vec<Rule>, Error> {
        let mut rules = self.array_values::<Rule>(map::RULES)?;
        let at = (generation * MAX_RULES) as usize;
        if rules.len() < at + MAX_RULES as usize {
            return Err(Error::Corrupt { name: map::RULES, what: format!("{} entries", rules.len()) });
        }
        Ok(rules.drain(at..at + MAX_RULES as usize).collect())
    }

    /// The id of each row slot of the current table (`None`: unused).
    pub fn rule_names(&self) -> Result<Vec<Option<String>>, Error> {
        let generation = self.settings()?.rules_at & 1;
        Ok(self.rule_slots(generation)?.iter().map(rule_id).collect())
    }

    /// Replace the policy (see the module's contract).
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), Error> {
        let mut config = self.config()?;
        let mut s = config.settings;
        let current = s.rules_at & 1;
        let next = current ^ 1;
        let names: Vec<Option<String>> = self.rule_slots(current)?.iter().map(rule_id).collect();
        let (slots, fresh) = rules::place(&names, &policy.rules);
        let compiled = policy.rules.compile(&slots);
        // The next generation whole, in one write: no packet reads it until the switch.
        // By reference: the value is a megabyte, too much for a thread's stack.
        let tables = compiled.tables();
        self.rule_tables.set(next, tables.as_ref(), 0).map_err(map_err(map::RULE_TABLES))?;
        for (i, r) in compiled.rules.iter().enumerate() {
            self.rules.set(next * MAX_RULES + i as u32, *r, 0).map_err(map_err(map::RULES))?;
        }
        self.zero_rule_hits(&fresh)?;
        // The next generation's rulesets beside the current ones, which packets read;
        // then the switch, with everything else the policy says. (`config` is still what
        // the kernel holds: the pin directory's lock keeps every other writer out.)
        s.rulesets[next as usize] = compiled.ruleset;
        config.settings = s;
        self.write_config(&config)?;
        config.settings = Settings { lens_at: s.lens_at, rulesets: s.rulesets, ..policy.to_settings(next) };
        self.write_config(&config)
    }

    fn zero_rule_hits(&mut self, slots: &[usize]) -> Result<(), Error> {
        let cpus = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
        for slot in slots {
            let zero = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(Error::Cpus)?;
            self.rule_hits.set(*slot as u32, zero, 0).map_err(map_err(map::RULE_HITS))?;
        }
        Ok(())
    }

    /// The policy the kernel holds, its rule table in the order it was written.
    pub fn policy(&self) -> Result<Policy, Error> {
        let s = self.settings()?;
        let corrupt = || Error::Corrupt { name: map::CONFIG, what: format!("{s:?}") };
        let rows = RuleTable::from_kernel(&self.rule_slots(s.rules_at & 1)?)
            .ok_or_else(|| Error::Corrupt { name: map::RULES, what: "a row this version does not write".into() })?;
        let table = RuleTable::from_rows(rows.into_iter().map(|(_, r)| r).collect());
        Policy::from_settings(&s, table).ok_or_else(corrupt)
    }

    /// Whether the policy counts would-be drops and passes them (dry run): the
    /// settings alone, without reading the rule table.
    pub fn dry_run(&self) -> Result<bool, Error> {
        Ok(self.settings()?.flags & flags::DRY_RUN != 0)
    }
}
