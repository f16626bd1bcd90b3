//! TCP connections of the address plan, as cases for the harness: each row of the
//! built-in table with the sequence numbers of a real connection, and its segments
//! from either side on the NIC of the caller's choosing.

use std::net::IpAddr;

use edge_filter_common::verdict::PASS_REPLY;

use crate::{
    Case,
    Nic::{self, *},
    packet::{flags::*, tcp},
    plan::*,
};

/// Row slots of the built-in table on a fresh load.
pub const FEDERATION_IN: u32 = 0;
pub const FEDERATION_OUT: u32 = 1;
pub const INTERNAL_MTLS: u32 = 2;

/// A TCP connection of the address plan with the sequence numbers of a real one: the
/// opener's ISN is 1000, the responder's 5000; both advertise 64240 bytes, no scaling.
#[derive(Clone, Copy)]
pub struct Flow {
    pub tag: &'static str,
    pub opener: (IpAddr, u16),
    pub responder: (IpAddr, u16),
    pub opener_nic: Nic,
    pub responder_nic: Nic,
    pub row: u32,
}

impl Flow {
    pub fn federation_in(v6: bool, port: u16) -> Self {
        let (p, a) = if v6 { (PARTNER6, ACCESS6) } else { (PARTNER4, ACCESS4) };
        Self { tag: tag(v6, "federation-in"), opener: (p, port), responder: (a, 5269), opener_nic: Outside, responder_nic: Edge, row: FEDERATION_IN }
    }

    pub fn federation_out(v6: bool, port: u16) -> Self {
        let (p, a) = if v6 { (PARTNER6, ACCESS6) } else { (PARTNER4, ACCESS4) };
        Self {
            tag: tag(v6, "federation-out"),
            opener: (a, port),
            responder: (p, 5269),
            opener_nic: Edge,
            responder_nic: Outside,
            row: FEDERATION_OUT,
        }
    }

    pub fn internal_mtls(v6: bool, port: u16) -> Self {
        let (f, i) = if v6 { (FRONTEND6, INTERNAL6) } else { (FRONTEND4, INTERNAL4) };
        Self { tag: tag(v6, "internal-mtls"), opener: (f, port), responder: (i, 23456), opener_nic: Outside, responder_nic: Edge, row: INTERNAL_MTLS }
    }

    /// A segment from the opener, on `nic`.
    pub fn opener_on(&self, nic: Nic, what: &str, flags: u8, seq: u32, ack: u32, payload: usize) -> Case {
        let frame = tcp(self.opener.0, self.responder.0, self.opener.1, self.responder.1, flags).seq_ack(seq, ack).payload(payload).build();
        Case::rule(format!("{} {what}", self.tag), nic, frame, self.row)
    }

    /// A segment from the opener on its own NIC: every one matches the row.
    pub fn opener(&self, what: &str, flags: u8, seq: u32, ack: u32, payload: usize) -> Case {
        self.opener_on(self.opener_nic, what, flags, seq, ack, payload)
    }

    /// A segment from the responder, with the verdict it must get.
    pub fn responder(&self, what: &str, flags: u8, seq: u32, ack: u32, payload: usize, verdict: u32) -> Case {
        let frame = tcp(self.responder.0, self.opener.0, self.responder.1, self.opener.1, flags).seq_ack(seq, ack).payload(payload).build();
        Case::new(format!("{} {what}", self.tag), self.responder_nic, frame, verdict)
    }

    /// The handshake and 100 bytes each way: afterwards the opener is at 1101 and has
    /// acknowledged 5101, the responder at 5101 and has acknowledged 1101.
    pub fn established(&self) -> Vec<Case> {
        vec![
            self.opener("SYN", SYN, 1000, 0, 0),
            self.responder("SYN-ACK", SYN_ACK, 5000, 1001, 0, PASS_REPLY),
            self.opener("ACK", ACK, 1001, 5001, 0),
            self.opener("data", ACK | PSH, 1001, 5001, 100),
            self.responder("data", ACK | PSH, 5001, 1101, 100, PASS_REPLY),
            self.opener("ACK of the data", ACK, 1101, 5101, 0),
        ]
    }

    /// The end of a handshake the responder answered at its ISN: the opener's ACK of
    /// it (named `ack`), then the responder's first 10 bytes, which pass as a reply.
    pub fn completed(&self, ack: &str) -> [Case; 2] {
        [self.opener(ack, ACK, 1001, 5001, 0), self.responder("data", ACK | PSH, 5001, 1001, 10, PASS_REPLY)]
    }

    /// The next genuine packets of both sides after an attack: the flow is there.
    pub fn still_there(&self) -> Vec<Case> {
        vec![
            self.responder("data after the attack", ACK | PSH, 5101, 1101, 10, PASS_REPLY),
            self.opener("ACK after the attack", ACK, 1101, 5111, 0),
            self.responder("more data after the attack", ACK | PSH, 5111, 1101, 10, PASS_REPLY),
        ]
    }

    /// Which side an outsider can impersonate: the one that is not the Edge's.
    pub fn outsider_is_opener(&self) -> bool {
        self.opener_nic != Edge
    }
}

pub fn tag(v6: bool, row: &str) -> &'static str {
    Box::leak(format!("{} {row}", if v6 { "v6" } else { "v4" }).into_boxed_str())
}

/// The three rows' connections in both families, on client ports from `port`.
pub fn flows(port: u16) -> Vec<Flow> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        out.extend([Flow::federation_in(v6, port), Flow::federation_out(v6, port + 1), Flow::internal_mtls(v6, port + 2)]);
    }
    out
}
