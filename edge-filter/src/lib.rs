//! edge-filter's userspace library: everything between the operator and the kernel
//! program.
//!
//! - [`addr`]: address sets (edge and peer) and prefixes, validated;
//! - [`rules`]: the rule table: the vendor's tables, port settings, the operator's
//!   rows, and their kernel encoding;
//! - [`policy`]: NIC roles and the policy settings, and their kernel encoding;
//! - [`loader`]: loads the embedded object and reads and writes its maps;
//! - [`census`]: the count of live flows the daemon keeps, so views cost O(1);
//! - [`counters`]: counter snapshots with the names the CLI and metrics use;
//! - [`config`]: the TOML configuration, validated;
//! - [`names`]: the enums with names (roles, fates, modes, ...), declared once;
//! - [`pins`]: the pin directory that keeps the filter attached without a process;
//! - [`statedir`]: runtime address changes kept across reboots;
//! - [`report`]: the snapshot `stats`, `status` and `/metrics` show;
//! - [`cli`] and [`daemon`]: the `edge-filter` command and its `run` loop.
//!
//! The kernel side is `edge-filter-ebpf`; the types both sides share are in
//! `edge-filter-common`.

pub mod addr;
pub mod census;
pub mod cli;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod loader;
pub mod names;
pub mod pins;
pub mod policy;
pub mod report;
pub mod rules;
pub mod statedir;

pub use addr::{AddrError, AddressSets, Prefix, SetId};
pub use config::Config;
pub use counters::{Counters, Delta, Row};
pub use loader::{Error, Filter, IfaceEntry, LoadOptions, Maps, Variant};
pub use policy::{Fate, LinkScope, Policy, Role, SourceLimit, Timeouts};
pub use rules::{Proto, RuleTable};
