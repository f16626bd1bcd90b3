//! The packet generator of the differential tests: seeded, so a run replays.
//!
//! Three kinds of frames, mixed:
//! - well-formed traffic of every kind the policy tells apart: both families, 0-3
//!   VLAN tags, IPv4 options, IPv6 extension chains (up to nine headers), first and
//!   later fragments, TCP/UDP/ICMP/other, the rules' ports and their neighbours, set
//!   members, prefix members and strangers, on every NIC role;
//! - connections: handshakes, data, FIN and RST in both directions, right and wrong
//!   acknowledgement numbers, replies on the wrong NIC, from a bounded pool of tuples
//!   (so the state tables never fill and LRU eviction stays out of the comparison);
//! - mutations of either: truncation at any offset, a flipped byte, a length field
//!   rewritten, random bytes after the Ethernet header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

use crate::{
    Nic,
    packet::{self, Pkt, TPID_8021AD, TPID_8021Q, flags::*},
    plan::*,
};

/// One generated frame and the NIC it arrives on.
#[derive(Clone, Debug)]
pub struct Sample {
    pub frame: Vec<u8>,
    pub nic: Nic,
    /// What it is, for reports.
    pub what: &'static str,
}

/// An open connection of the pool.
#[derive(Clone, Copy, Debug)]
struct Conn {
    /// Opener and responder addresses and ports.
    client: (IpAddr, u16),
    server: (IpAddr, u16),
    opener_nic: Nic,
    responder_nic: Nic,
    client_isn: u32,
    server_isn: u32,
    step: u8,
}

pub struct Generator {
    rng: SmallRng,
    conns: Vec<Conn>,
}

const PORTS: [u16; 10] = [5269, 5268, 5270, 23456, 23455, 23457, 22, 443, 40000, 0];
const FLAGS: [u8; 8] = [SYN, SYN_ACK, ACK, RST, RST_ACK, FIN_ACK, ACK | PSH, SYN | FIN];
const ICMP4: [u8; 7] = [3, 11, 12, 0, 8, 5, 13];
const ICMP6: [u8; 11] = [1, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137];

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self { rng: SmallRng::seed_from_u64(seed), conns: Vec::new() }
    }

    fn addr(&mut self, v6: bool) -> IpAddr {
        let pool4 = [PARTNER4, FRONTEND4, ACCESS4, ACCESS_NET4, INTERNAL4];
        let pool6 = [PARTNER6, FRONTEND6, ACCESS6, ACCESS_NET6, INTERNAL6];
        if self.rng.random_ratio(1, 6) {
            // A stranger from the documentation ranges.
            let n: u8 = self.rng.random();
            return if v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, u16::from(n)))
            } else {
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
            };
        }
        *(if v6 { &pool6[..] } else { &pool4[..] }).choose(&mut self.rng).expect("non-empty")
    }

    fn port(&mut self) -> u16 {
        match *PORTS.choose(&mut self.rng).expect("non-empty") {
            0 => self.rng.random(),
            p => p,
        }
    }

    fn nic(&mut self) -> Nic {
        match self.rng.random_range(0..10) {
            0..4 => Nic::Outside,
            4..7 => Nic::Edge,
            7..9 => Nic::Host,
            _ => Nic::Unattached,
        }
    }

    /// A well-formed packet of any kind.
    fn packet(&mut self) -> Pkt {
        let v6 = self.rng.random_bool(0.5);
        let (src, dst) = (self.addr(v6), self.addr(v6));
        let mut p = match self.rng.random_range(0..20) {
            0..12 => {
                let flags = if self.rng.random_ratio(1, 8) { self.rng.random::<u8>() & 0x3f } else { *FLAGS.choose(&mut self.rng).unwrap() };
                let (sport, dport) = (self.port(), self.port());
                packet::tcp(src, dst, sport, dport, flags).seq_ack(self.rng.random(), self.rng.random())
            }
            12..15 => {
                let (sport, dport) = (self.port(), self.port());
                packet::udp(src, dst, sport, dport)
            }
            15..19 => {
                let kind = if v6 { *ICMP6.choose(&mut self.rng).unwrap() } else { *ICMP4.choose(&mut self.rng).unwrap() };
                packet::icmp(src, dst, kind, self.rng.random_range(0..5)).ttl(if self.rng.random_bool(0.7) { 255 } else { 64 })
            }
            _ => Pkt::new(src, dst, packet::L4::Raw { proto: *[47u8, 50, 132, 255].choose(&mut self.rng).unwrap(), bytes: vec![0; 8] }),
        };
        p = p.payload(self.rng.random_range(0..64));
        for _ in 0..self.rng.random_range(0..4).min(if self.rng.random_bool(0.7) { 0 } else { 3 }) {
            let tpid = if self.rng.random_bool(0.5) { TPID_8021Q } else { TPID_8021AD };
            p = p.tag(tpid, self.rng.random_range(1..4095));
        }
        if v6 {
            let n = if self.rng.random_bool(0.6) { 0 } else { self.rng.random_range(0..10) };
            for _ in 0..n {
                p = match self.rng.random_range(0..5) {
                    0 => p.fragment(if self.rng.random_bool(0.5) { 0 } else { self.rng.random_range(1..8191) }, self.rng.random_bool(0.5)),
                    k => p.ext(*[0u8, 43, 60, 51].get(k - 1).unwrap(), 8 * self.rng.random_range(1..4)),
                };
            }
        } else {
            if self.rng.random_ratio(1, 4) {
                let len = 4 * self.rng.random_range(1..11);
                p = p.options(vec![1; len]);
            }
            if self.rng.random_ratio(1, 6) {
                p = p.fragment(if self.rng.random_bool(0.5) { 0 } else { self.rng.random_range(1..8191) }, self.rng.random_bool(0.5));
            }
        }
        if self.rng.random_ratio(1, 10) {
            p = p.cut_l4(self.rng.random_range(0..24));
        }
        p
    }

    /// The next step of a connection from the pool (opening one when needed).
    fn connection(&mut self) -> Sample {
        if self.conns.len() < 32 || self.rng.random_ratio(1, 20) {
            let v6 = self.rng.random_bool(0.5);
            let (access, internal, partner, frontend) = if v6 { (ACCESS6, INTERNAL6, PARTNER6, FRONTEND6) } else { (ACCESS4, INTERNAL4, PARTNER4, FRONTEND4) };
            // A bounded pool of client ports keeps the tables far from full.
            let cport = 30000 + self.rng.random_range(0..512);
            let c = match self.rng.random_range(0..3) {
                0 => Conn { client: (partner, cport), server: (access, 5269), opener_nic: Nic::Outside, responder_nic: Nic::Edge, client_isn: 0, server_isn: 0, step: 0 },
                1 => Conn { client: (access, cport), server: (partner, 5269), opener_nic: Nic::Edge, responder_nic: Nic::Outside, client_isn: 0, server_isn: 0, step: 0 },
                _ => Conn { client: (frontend, cport), server: (internal, 23456), opener_nic: Nic::Host, responder_nic: Nic::Edge, client_isn: 0, server_isn: 0, step: 0 },
            };
            let c = Conn { client_isn: self.rng.random(), server_isn: self.rng.random(), ..c };
            if self.conns.len() >= 64 {
                let i = self.rng.random_range(0..self.conns.len());
                self.conns[i] = c;
            } else {
                self.conns.push(c);
            }
        }
        let i = self.rng.random_range(0..self.conns.len());
        let c = self.conns[i];
        let wrong_nic = self.rng.random_ratio(1, 12);
        let (flags, from_client, seq, ack) = match (c.step, self.rng.random_range(0..10)) {
            (0, _) => (SYN, true, c.client_isn, 0),
            (1, _) => (SYN_ACK, false, c.server_isn, c.client_isn.wrapping_add(1)),
            (2, 0) => (ACK, true, c.client_isn.wrapping_add(1), self.rng.random()),
            (2, _) => (ACK, true, c.client_isn.wrapping_add(1), c.server_isn.wrapping_add(1)),
            (_, 0) => (RST, self.rng.random_bool(0.5), 0, 0),
            (_, 1) => (FIN_ACK, self.rng.random_bool(0.5), 0, 0),
            (_, 2) => (SYN, true, c.client_isn, 0),
            (_, _) => (ACK | PSH, self.rng.random_bool(0.5), c.client_isn.wrapping_add(1), c.server_isn.wrapping_add(1)),
        };
        self.conns[i].step = (c.step + 1).min(3);
        if flags & RST != 0 {
            self.conns[i].step = 0;
        }
        let ((sa, sp), (da, dp), nic) = if from_client { (c.client, c.server, c.opener_nic) } else { (c.server, c.client, c.responder_nic) };
        let nic = if wrong_nic { self.nic() } else { nic };
        let frame = packet::tcp(sa, da, sp, dp, flags).seq_ack(seq, ack).payload(if flags & PSH != 0 { 20 } else { 0 }).build();
        Sample { frame, nic, what: "connection" }
    }

    fn mutate(&mut self, mut frame: Vec<u8>) -> Vec<u8> {
        let len = frame.len();
        match self.rng.random_range(0..10) {
            0..4 => frame.truncate(self.rng.random_range(14..len.max(15))),
            4..7 => {
                let at = self.rng.random_range(12..len);
                frame[at] ^= 1 << self.rng.random_range(0..8);
            }
            7..9 => {
                // A length field: IPv4 IHL and total length, IPv6 payload length, a
                // TCP data offset, wherever the first IP header sits.
                let ip = 14 + 4 * (0..3).take_while(|i| matches!(frame.get(12 + 4 * i..14 + 4 * i), Some([0x81, 0x00] | [0x88, 0xa8]))).count();
                let at = *[ip, ip + 2, ip + 3, ip + 4, ip + 5, ip + 32].choose(&mut self.rng).unwrap();
                if at < len {
                    frame[at] = self.rng.random();
                }
            }
            _ => {
                for b in frame.iter_mut().skip(14) {
                    *b = self.rng.random();
                }
            }
        }
        frame
    }

    /// The next frame.
    pub fn sample(&mut self) -> Sample {
        let mut s = if self.rng.random_bool(0.35) {
            self.connection()
        } else {
            Sample { frame: self.packet().build(), nic: self.nic(), what: "packet" }
        };
        if self.rng.random_bool(0.35) {
            s.frame = self.mutate(s.frame);
            s.what = if s.what == "connection" { "mutated connection" } else { "mutated packet" };
        }
        s
    }
}
