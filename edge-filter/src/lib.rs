//! edge-filter's userspace library: everything between the operator and the kernel
//! program.
//!
//! - [`addr`]: edge address sets and prefixes, validated;
//! - [`policy`]: NIC roles and the policy settings, and their kernel encoding;
//! - [`loader`]: loads the embedded object and reads and writes its maps;
//! - [`counters`]: counter snapshots with the names the CLI and metrics use.
//!
//! The kernel side is `edge-filter-ebpf`; the types both sides share are in
//! `edge-filter-common`.

pub mod addr;
pub mod counters;
pub mod loader;
pub mod policy;

pub use addr::{AddrError, AddressSets, EdgeSet, Prefix};
pub use counters::{Counters, Delta, Row};
pub use loader::{Error, Filter, IfaceEntry, LoadOptions, Variant};
pub use policy::{Fate, Policy, Role, Timeouts};
