//! The reference model: the policy as plain Rust, written from the design and the
//! README's policy section, not from the kernel code. Differential tests run every
//! frame through both and compare verdicts; the model is kept small and obviously
//! right instead of fast.
//!
//! Given a frame, the ingress NIC's role (`None`: a NIC without one), the address
//! sets and the policy, [`Model::judge`] returns the verdict (a
//! `edge_filter_common::verdict` code, dry-run applied) and updates the model's own
//! state tables as the kernel's must change. Timeouts, the closing state and LRU
//! eviction are not modelled: differential runs keep tables larger than their traffic and timeouts
//! longer than the run.

use std::{collections::HashMap, net::IpAddr};

use edge_filter_common::{rule, verdict as v};

use crate::{
    addr::{AddressSets, EdgeSet},
    policy::{Fate, Policy, Role},
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;

/// What the model knows of a frame.
#[derive(Debug)]
enum Frame {
    Malformed,
    /// An IPv6 first fragment without its whole header chain (RFC 7112).
    IncompleteFirstFragment,
    Arp,
    NotIp,
    Ip(Ip),
}

#[derive(Debug, Clone)]
struct Ip {
    src: IpAddr,
    dst: IpAddr,
    /// The upper-layer protocol after any IPv6 extension headers.
    proto: u8,
    hop_limit: u8,
    first_fragment: bool,
    later_fragment: bool,
    /// The upper-layer header's bytes (what of them lies inside the IP packet).
    upper: Vec<u8>,
}

impl Ip {
    /// The header the policy reads is all there.
    fn upper_whole(&self) -> bool {
        match self.proto {
            TCP => self.upper.len() >= 20 && {
                let hdr_len = usize::from(self.upper[12] >> 4) * 4;
                hdr_len >= 20 && hdr_len <= self.upper.len()
            },
            UDP | ICMP | ICMPV6 => self.upper.len() >= 8,
            _ => true,
        }
    }

    fn ports(&self) -> (u16, u16) {
        (u16::from_be_bytes([self.upper[0], self.upper[1]]), u16::from_be_bytes([self.upper[2], self.upper[3]]))
    }

    fn tcp_flags(&self) -> u8 {
        self.upper[13] & 0x3f
    }

    fn seq(&self) -> u32 {
        u32::from_be_bytes([self.upper[4], self.upper[5], self.upper[6], self.upper[7]])
    }

    fn ack(&self) -> u32 {
        u32::from_be_bytes([self.upper[8], self.upper[9], self.upper[10], self.upper[11]])
    }

    /// The sequence number after this segment: its payload, and one each for SYN and
    /// FIN.
    fn seq_end(&self) -> u32 {
        let payload = self.upper.len() - usize::from(self.upper[12] >> 4) * 4;
        let f = self.tcp_flags();
        self.seq().wrapping_add(payload as u32).wrapping_add(u32::from(f & SYN != 0) + u32::from(f & FIN != 0))
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Ethernet, up to two VLAN tags, then IPv4, IPv6, ARP or something else.
fn parse(frame: &[u8]) -> Frame {
    let Some(mut ether_type) = be16(frame, 12) else { return Frame::Malformed };
    let mut off = 14;
    let is_tag = |t: u16| t == 0x8100 || t == 0x88a8;
    for _ in 0..2 {
        if !is_tag(ether_type) {
            break;
        }
        let Some(t) = be16(frame, off + 2) else { return Frame::Malformed };
        ether_type = t;
        off += 4;
    }
    match ether_type {
        t if is_tag(t) => Frame::Malformed,
        0x0800 => ipv4(frame, off),
        0x86dd => ipv6(frame, off),
        0x0806 => Frame::Arp,
        _ => Frame::NotIp,
    }
}

fn ipv4(frame: &[u8], off: usize) -> Frame {
    let Some(h) = frame.get(off..off + 20) else { return Frame::Malformed };
    let ihl = usize::from(h[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || ihl < 20 || total < ihl || off + total > frame.len() {
        return Frame::Malformed;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    let src = IpAddr::from([h[12], h[13], h[14], h[15]]);
    let dst = IpAddr::from([h[16], h[17], h[18], h[19]]);
    Frame::Ip(Ip {
        src,
        dst,
        proto: h[9],
        hop_limit: h[8],
        first_fragment: offset == 0 && more,
        later_fragment: offset != 0,
        upper: if offset != 0 { Vec::new() } else { frame[off + ihl..off + total].to_vec() },
    })
}

fn ipv6(frame: &[u8], off: usize) -> Frame {
    let Some(h) = frame.get(off..off + 40) else { return Frame::Malformed };
    let end = off + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    if h[0] >> 4 != 6 || end > frame.len() {
        return Frame::Malformed;
    }
    let addr = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
    let mut ip = Ip {
        src: addr(&h[8..24]),
        dst: addr(&h[24..40]),
        proto: h[6],
        hop_limit: h[7],
        first_fragment: false,
        later_fragment: false,
        upper: Vec::new(),
    };
    let payload = &frame[off + 40..end];
    let mut at = 0;
    let is_ext = |p: u8| matches!(p, 0 | 43 | 44 | 51 | 60);
    // Up to eight extension headers; each must lie wholly inside the packet.
    for _ in 0..8 {
        if !is_ext(ip.proto) {
            break;
        }
        let len = match (ip.proto, payload.get(at + 1)) {
            (_, None) => 0,
            (44, Some(_)) => 8,
            (51, Some(l)) => (usize::from(*l) + 2) * 4,
            (_, Some(l)) => (usize::from(*l) + 1) * 8,
        };
        if len == 0 || at + len > payload.len() {
            return if ip.first_fragment { Frame::IncompleteFirstFragment } else { Frame::Malformed };
        }
        let next = payload[at];
        if ip.proto == 44 {
            let word = u16::from_be_bytes([payload[at + 2], payload[at + 3]]);
            if word >> 3 != 0 {
                ip.proto = next;
                ip.later_fragment = true;
                return Frame::Ip(ip);
            }
            ip.first_fragment |= word & 1 == 1;
        }
        ip.proto = next;
        at += len;
    }
    if is_ext(ip.proto) {
        return Frame::Malformed;
    }
    ip.upper = payload[at..].to_vec();
    if ip.first_fragment && !ip.upper_whole() {
        return Frame::IncompleteFirstFragment;
    }
    Frame::Ip(ip)
}

/// A connection in the model's state tables, by the opener's tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    /// Roles replies may arrive on.
    reply_roles: &'static [Role],
    /// The responder's ISN once its SYN-ACK was seen.
    responder_isn: Option<u32>,
    /// Once established: the sequence number each side's next segment carries. Only
    /// an RST at exactly that number closes the connection.
    opener_next: u32,
    responder_next: u32,
}

/// `next` moved forward (modulo 2^32) past `end`.
fn advanced(next: u32, end: u32) -> u32 {
    if end.wrapping_sub(next) as i32 > 0 { end } else { next }
}

/// The policy, the sets, and the connections the model has seen.
#[derive(Debug, Default)]
pub struct Model {
    pub sets: AddressSets,
    pub policy: Policy,
    handshakes: HashMap<Tuple, Conn>,
    flows: HashMap<Tuple, Conn>,
}

const PARTNER_SIDE: &[Role] = &[Role::Outside, Role::Host];
const EDGE_SIDE: &[Role] = &[Role::Edge];

impl Model {
    pub fn new(sets: AddressSets, policy: Policy) -> Self {
        Self { sets, policy, ..Self::default() }
    }

    /// Connections whose handshake completed, and handshakes in progress.
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.flows.len(), self.handshakes.len())
    }

    /// The verdict for `frame` arriving on a NIC of `role`, dry-run applied.
    pub fn judge(&mut self, frame: &[u8], role: Option<Role>) -> u32 {
        let Some(role) = role else { return v::PASS_UNATTACHED };
        let verdict = self.judge_with_role(frame, role);
        if self.policy.dry_run && v::is_drop(verdict) { verdict + v::DRY_RUN_OFFSET } else { verdict }
    }

    fn unpoliced(&self) -> u32 {
        if self.policy.unpoliced == Fate::Drop { v::DROP_UNPOLICED } else { v::PASS_UNPOLICED }
    }

    fn judge_with_role(&mut self, frame: &[u8], role: Role) -> u32 {
        let ip = match parse(frame) {
            Frame::Malformed => return v::DROP_MALFORMED,
            Frame::IncompleteFirstFragment => return v::DROP_FRAGMENT,
            Frame::Arp => return v::PASS_ESSENTIAL,
            Frame::NotIp => return self.unpoliced(),
            Frame::Ip(ip) => ip,
        };
        let (src_set, dst_set) = (self.sets.lookup(ip.src), self.sets.lookup(ip.dst));
        if role != Role::Edge && src_set.is_some() {
            return v::DROP_SPOOFED;
        }
        if src_set.is_none() && dst_set.is_none() {
            return if self.policy.unpoliced == Fate::Drop && essential(&ip) { v::PASS_ESSENTIAL } else { self.unpoliced() };
        }
        if ip.first_fragment || ip.later_fragment {
            if self.policy.fragments == Fate::Drop {
                return v::DROP_FRAGMENT;
            }
            if ip.later_fragment {
                return v::PASS_FRAGMENT;
            }
        }
        if !ip.upper_whole() {
            return if ip.first_fragment { v::DROP_FRAGMENT } else { v::DROP_MALFORMED };
        }
        if essential(&ip) {
            return v::PASS_ESSENTIAL;
        }
        if ip.proto != TCP {
            return v::DROP_NO_RULE;
        }
        let (sport, dport) = ip.ports();
        let fed = self.policy.federation_port.get();
        let int = self.policy.internal_port.get();
        let matched = match role {
            Role::Outside | Role::Host if dst_set == Some(EdgeSet::AccessEdge) && dport == fed => Some(rule::FEDERATION_IN),
            Role::Outside | Role::Host if dst_set == Some(EdgeSet::InternalEdge) && dport == int => Some(rule::INTERNAL_MTLS),
            Role::Edge if src_set == Some(EdgeSet::AccessEdge) && dport == fed => Some(rule::FEDERATION_OUT),
            _ => None,
        };
        let tuple = Tuple { src: ip.src, dst: ip.dst, sport, dport };
        if let Some(r) = matched {
            let replies = if r == rule::FEDERATION_OUT { PARTNER_SIDE } else { EDGE_SIDE };
            self.opener(tuple, &ip, replies);
            return v::PASS_RULE;
        }
        // A reply comes from the port its connection was opened to, a rule's port.
        if sport != fed && sport != int {
            return v::DROP_NO_RULE;
        }
        let back = Tuple { src: ip.dst, dst: ip.src, sport: dport, dport: sport };
        if self.reply(back, &ip, role) { v::PASS_REPLY } else { v::DROP_NO_RULE }
    }

    /// A packet a rule allowed, from the opener.
    fn opener(&mut self, t: Tuple, ip: &Ip, reply_roles: &'static [Role]) {
        let f = ip.tcp_flags();
        let syn = f & SYN != 0 && f & ACK == 0;
        if let Some(c) = self.flows.get_mut(&t) {
            if f & RST != 0 {
                if ip.seq() == c.opener_next {
                    self.flows.remove(&t);
                }
            } else if !syn {
                c.opener_next = advanced(c.opener_next, ip.seq_end());
            }
            return;
        }
        if syn {
            let c = self.handshakes.entry(t).or_insert(Conn { reply_roles, responder_isn: None, opener_next: 0, responder_next: 0 });
            // A retransmitted SYN restarts the handshake it belongs to.
            c.responder_isn = None;
            return;
        }
        let Some(c) = self.handshakes.get(&t).copied() else { return };
        if f & RST != 0 {
            self.handshakes.remove(&t);
            return;
        }
        if let Some(isn) = c.responder_isn
            && f & ACK != 0
            && ip.ack() == isn.wrapping_add(1)
        {
            self.handshakes.remove(&t);
            self.flows.insert(t, Conn { opener_next: ip.seq_end(), responder_next: isn.wrapping_add(1), ..c });
        }
    }

    /// Whether this is a reply of connection `t`, arriving on `role`.
    fn reply(&mut self, t: Tuple, ip: &Ip, role: Role) -> bool {
        let f = ip.tcp_flags();
        if let Some(c) = self.flows.get_mut(&t) {
            if !c.reply_roles.contains(&role) {
                return false;
            }
            if f & RST != 0 {
                if ip.seq() == c.responder_next {
                    self.flows.remove(&t);
                }
            } else {
                c.responder_next = advanced(c.responder_next, ip.seq_end());
            }
            return true;
        }
        let Some(c) = self.handshakes.get_mut(&t) else { return false };
        if !c.reply_roles.contains(&role) {
            return false;
        }
        if f & RST != 0 {
            self.handshakes.remove(&t);
            return true;
        }
        if f & (SYN | ACK) != SYN | ACK {
            return false;
        }
        c.responder_isn = Some(ip.seq());
        true
    }
}

/// ARP aside, what the host cannot live without: ICMP errors (destination
/// unreachable, time exceeded, parameter problem), ICMPv6 errors (1-4), and router
/// and neighbour discovery with hop limit 255.
fn essential(ip: &Ip) -> bool {
    if ip.later_fragment || !ip.upper_whole() {
        return false;
    }
    match (ip.src.is_ipv4(), ip.proto) {
        (true, ICMP) => matches!(ip.upper[0], 3 | 11 | 12),
        (false, ICMPV6) => matches!(ip.upper[0], 1..=4) || (matches!(ip.upper[0], 133..=137) && ip.hop_limit == 255),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut sets = AddressSets::default();
        sets.insert(EdgeSet::AccessEdge, "203.0.113.10".parse().unwrap()).unwrap();
        sets.insert(EdgeSet::InternalEdge, "192.0.2.10".parse().unwrap()).unwrap();
        Model::new(sets, Policy::default())
    }

    /// Ethernet + IPv4 (20 bytes) + TCP (20 bytes).
    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[23] = TCP;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&ack.to_be_bytes());
        f[46] = 0x50;
        f[47] = flags;
        f
    }

    #[test]
    fn the_vendor_table_and_its_replies() {
        let mut m = model();
        let (p, a) = ([198, 51, 100, 20], [203, 0, 113, 10]);
        assert_eq!(m.judge(&tcp4(p, a, 40000, 5269, SYN, 1000, 0), Some(Role::Outside)), v::PASS_RULE);
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, ACK, 5001, 1001), Some(Role::Edge)), v::DROP_NO_RULE);
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, SYN | ACK, 5000, 1001), Some(Role::Edge)), v::PASS_REPLY);
        assert_eq!(m.judge(&tcp4(p, a, 40000, 5269, ACK, 1001, 7), Some(Role::Outside)), v::PASS_RULE);
        assert_eq!(m.table_sizes(), (0, 1), "a wrong acknowledgement completes nothing");
        assert_eq!(m.judge(&tcp4(p, a, 40000, 5269, ACK, 1001, 5001), Some(Role::Outside)), v::PASS_RULE);
        assert_eq!(m.table_sizes(), (1, 0));
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, ACK, 5001, 1001), Some(Role::Edge)), v::PASS_REPLY);
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, ACK, 5001, 1001), Some(Role::Outside)), v::DROP_SPOOFED);
        assert_eq!(m.judge(&tcp4(p, a, 5269, 40001, SYN, 1, 0), Some(Role::Outside)), v::DROP_NO_RULE);
        assert_eq!(m.judge(&tcp4(p, [198, 18, 0, 20], 1, 22, SYN, 1, 0), Some(Role::Outside)), v::PASS_UNPOLICED);
        assert_eq!(m.judge(&tcp4(p, a, 1, 22, SYN, 1, 0), None), v::PASS_UNATTACHED);
    }

    #[test]
    fn malformed_and_truncated() {
        let mut m = model();
        let f = tcp4([198, 51, 100, 20], [203, 0, 113, 10], 40000, 5269, SYN, 1, 0);
        for len in 14..f.len() {
            assert_eq!(m.judge(&f[..len], Some(Role::Outside)), v::DROP_MALFORMED, "cut to {len}");
        }
        let mut bad = f.clone();
        bad[14] = 0x44;
        assert_eq!(m.judge(&bad, Some(Role::Outside)), v::DROP_MALFORMED);
    }
}
