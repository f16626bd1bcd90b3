//! The NICs the program serves: ifindex -> role and counter slot.
//!
//! Contract: each NIC gets its own counter slot, zeroed when it is handed out, so a
//! NIC never inherits the counts of one that left; a NIC keeps its slot while it keeps
//! a role.

use aya::{maps::PerCpuValues, util::nr_cpus};
use edge_filter_common::{Config, Counter, Iface, MAX_IFACES, MAX_IFINDEX, counter_index, map, verdict};

use super::{Error, Maps, map_err};
use crate::policy::Role;

/// A NIC the program serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceEntry {
    pub ifindex: u32,
    pub role: Role,
    /// Counter slot.
    pub slot: u32,
}

impl Maps {
    /// The NICs with a role, by ifindex.
    pub fn ifaces(&self) -> Result<Vec<IfaceEntry>, Error> {
        entries(&self.config()?)
    }

    /// Give the NIC a role; it keeps its counter slot if it had one. Returns the slot.
    pub fn set_iface(&mut self, ifindex: u32, role: Role) -> Result<u32, Error> {
        if ifindex >= MAX_IFINDEX {
            return Err(Error::IfindexTooHigh { ifindex });
        }
        let mut config = self.config()?;
        let current = entries(&config)?;
        let slot = match current.iter().find(|e| e.ifindex == ifindex) {
            Some(e) => e.slot,
            None => {
                let slot = (1..MAX_IFACES).find(|s| current.iter().all(|e| e.slot != *s)).ok_or(Error::NoFreeSlot)?;
                self.zero_slot(slot)?;
                slot
            }
        };
        config.ifaces[ifindex as usize] = Iface { role: role.to_kernel(), slot };
        self.write_config(&config)?;
        Ok(slot)
    }

    /// Take the role away: the NIC's packets pass as `pass/unattached`.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), Error> {
        if ifindex >= MAX_IFINDEX {
            return Ok(());
        }
        let mut config = self.config()?;
        config.ifaces[ifindex as usize] = Iface::default();
        self.write_config(&config)
    }

    fn zero_slot(&mut self, slot: u32) -> Result<(), Error> {
        let cpus = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
        for v in 0..verdict::SLOTS {
            let zero = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(Error::Cpus)?;
            self.counters.set(counter_index(slot, v), zero, 0).map_err(map_err(map::COUNTERS))?;
        }
        Ok(())
    }
}

/// The NICs with a role in `config`, by ifindex.
fn entries(config: &Config) -> Result<Vec<IfaceEntry>, Error> {
    let mut out = Vec::new();
    for (ifindex, iface) in config.ifaces.iter().enumerate() {
        if iface.role == 0 {
            continue;
        }
        let ifindex = ifindex as u32;
        let role = Role::from_kernel(iface.role)
            .ok_or_else(|| Error::Corrupt { name: map::CONFIG, what: format!("role {} of ifindex {ifindex}", iface.role) })?;
        out.push(IfaceEntry { ifindex, role, slot: iface.slot });
    }
    Ok(out)
}
