//! Described packets, built into frames with etherparse.
//!
//! A [`Pkt`] is a description a test reads like a sentence ("TCP SYN from the partner
//! to the Access Edge on 5269, with two VLAN tags") and [`Pkt::build`] turns it into
//! the bytes on the wire. Malformed frames are made from well-formed ones by the
//! mutation helpers at the end ([`set_byte`], [`truncate`]), so each says exactly
//! what is wrong with it.

use std::net::IpAddr;

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader,
    UdpHeader, VlanId,
};

/// TCP flag bits, as in the header.
pub mod flags {
    pub use edge_filter_common::tcp_flags::{ACK, FIN, PSH, RST, SYN};
    pub const SYN_ACK: u8 = SYN | ACK;
    pub const FIN_ACK: u8 = FIN | ACK;
    pub const RST_ACK: u8 = RST | ACK;
}

/// EtherType of 802.1Q and 802.1ad tags.
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;

/// The upper layer of a packet.
#[derive(Clone, Debug)]
pub enum L4 {
    /// TCP; `seq` and `ack` are the sequence and acknowledgement numbers, `window` the
    /// window field, `options` the raw option bytes (padded to a multiple of four).
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (by the address family): type and code, 8-byte header.
    Icmp {
        kind: u8,
        code: u8,
    },
    /// An ICMP or ICMPv6 error quoting an IP packet (its bytes from the IP header on).
    IcmpQuote {
        kind: u8,
        code: u8,
        quote: Vec<u8>,
    },
    /// Any protocol number with raw bytes.
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } | L4::IcmpQuote { .. } => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }
}

/// An IPv6 extension header to put before the upper layer.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop (0), routing (43) or destination options (60) with this many bytes in all.
    Raw { kind: u8, len: usize },
    /// Fragment header: offset in 8-byte units, more-fragments flag.
    Fragment { offset: u16, more: bool },
}

/// A packet described field by field.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub tags: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: usize,
    pub ttl: u8,
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment: offset in 8-byte units and more-fragments flag.
    pub ipv4_frag: Option<(u16, bool)>,
    pub ipv6_exts: Vec<Ext>,
    /// Keep only this many bytes of the upper layer, with IP lengths that agree.
    pub l4_cut: Option<usize>,
}

/// A TCP packet with the given flags (sequence 1000, acknowledging 2000).
pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Pkt {
    Pkt::new(src, dst, L4::Tcp { sport, dport, flags, seq: 1000, ack: 2000, window: 64240, options: Vec::new() })
}

/// An ICMP (IPv4) or ICMPv6 error of `kind` and `code` quoting `quoted` as a router
/// would: its IP header and what follows (the first 64 bytes of it).
pub fn icmp_error(src: IpAddr, dst: IpAddr, kind: u8, code: u8, quoted: &Pkt) -> Pkt {
    let mut quote = quoted.build();
    let eth = 14 + 4 * quoted.tags.len();
    quote.drain(..eth);
    quote.truncate(64);
    Pkt::new(src, dst, L4::IcmpQuote { kind, code, quote })
}

pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Pkt {
    Pkt::new(src, dst, L4::Udp { sport, dport })
}

/// ICMP for IPv4 addresses, ICMPv6 for IPv6 ones.
pub fn icmp(src: IpAddr, dst: IpAddr, kind: u8, code: u8) -> Pkt {
    Pkt::new(src, dst, L4::Icmp { kind, code })
}

impl Pkt {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one family per packet");
        Self { tags: Vec::new(), src, dst, l4, payload: 0, ttl: 64, ipv4_options: Vec::new(), ipv4_frag: None, ipv6_exts: Vec::new(), l4_cut: None }
    }

    /// TCP sequence and acknowledgement numbers.
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        if let L4::Tcp { seq: s, ack: a, .. } = &mut self.l4 {
            (*s, *a) = (seq, ack);
        }
        self
    }

    /// The TCP window field.
    pub fn window(mut self, window: u16) -> Self {
        if let L4::Tcp { window: w, .. } = &mut self.l4 {
            *w = window;
        }
        self
    }

    /// TCP options, as raw bytes (padded with end-of-list to a multiple of four).
    pub fn tcp_options(mut self, mut opts: Vec<u8>) -> Self {
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        if let L4::Tcp { options, .. } = &mut self.l4 {
            *options = opts;
        }
        self
    }

    /// Add a VLAN tag (outermost first).
    pub fn tag(mut self, tpid: u16, vid: u16) -> Self {
        self.tags.push((tpid, vid));
        self
    }

    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload = bytes;
        self
    }

    /// TTL or hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// IPv4 options (padded with end-of-list to a multiple of four).
    pub fn options(mut self, mut opts: Vec<u8>) -> Self {
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        self.ipv4_options = opts;
        self
    }

    /// A fragment: IPv4 header fields or an IPv6 fragment header (after other
    /// extension headers added so far).
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        if self.src.is_ipv4() {
            self.ipv4_frag = Some((offset, more));
        } else {
            self.ipv6_exts.push(Ext::Fragment { offset, more });
        }
        self
    }

    /// An IPv6 extension header of `len` bytes (a multiple of 8, at least 8): hop-by-hop
    /// (0), routing (43), destination options (60) or authentication (51).
    pub fn ext(mut self, kind: u8, len: usize) -> Self {
        self.ipv6_exts.push(Ext::Raw { kind, len });
        self
    }

    /// Cut the upper layer to `len` bytes; the IP header says so (a truncated
    /// header, not a frame shorter than its IP length).
    pub fn cut_l4(mut self, len: usize) -> Self {
        self.l4_cut = Some(len);
        self
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.l4 {
            L4::Tcp { sport, dport, flags: f, seq, ack, window, options } => {
                let mut h = TcpHeader::new(*sport, *dport, *seq, *window);
                h.set_options_raw(options).expect("at most 40 bytes of options");
                h.fin = f & flags::FIN != 0;
                h.syn = f & flags::SYN != 0;
                h.rst = f & flags::RST != 0;
                h.psh = f & flags::PSH != 0;
                h.ack = f & flags::ACK != 0;
                if h.ack {
                    h.acknowledgment_number = *ack;
                }
                h.write(&mut out).expect("write to Vec");
            }
            L4::Udp { sport, dport } => {
                let len = (UdpHeader::LEN + self.payload) as u16;
                let h = UdpHeader { source_port: *sport, destination_port: *dport, length: len, checksum: 0 };
                h.write(&mut out).expect("write to Vec");
            }
            L4::Icmp { kind, code } => out.extend_from_slice(&[*kind, *code, 0, 0, 0, 0, 0, 0]),
            L4::IcmpQuote { kind, code, quote } => {
                out.extend_from_slice(&[*kind, *code, 0, 0, 0, 0, 0, 0]);
                out.extend_from_slice(quote);
            }
            L4::Raw { bytes, .. } => out.extend_from_slice(bytes),
        }
        out.resize(out.len() + self.payload, 0xab);
        if let Some(len) = self.l4_cut {
            out.truncate(len);
        }
        out
    }

    /// The frame, Ethernet header first.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let (ether_type, l3) = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => (EtherType::IPV4, self.ipv4(src.octets(), dst.octets(), &l4)),
            (IpAddr::V6(src), IpAddr::V6(dst)) => (EtherType::IPV6, self.ipv6(src.octets(), dst.octets(), &l4)),
            _ => unreachable!("checked in Pkt::new"),
        };
        let mut frame = ethernet(&self.tags, ether_type);
        frame.extend_from_slice(&l3);
        frame.extend_from_slice(&l4);
        frame
    }

    fn ipv4(&self, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let proto = IpNumber(self.l4.proto(false));
        let mut h = Ipv4Header::new(l4.len() as u16, self.ttl, proto, src, dst).expect("small payload");
        h.options = Ipv4Options::try_from(self.ipv4_options.as_slice()).expect("options fit");
        if let Some((offset, more)) = self.ipv4_frag {
            h.fragment_offset = IpFragOffset::try_new(offset).expect("13-bit offset");
            h.more_fragments = more;
        }
        h.total_len = (h.header_len() + l4.len()) as u16;
        h.header_checksum = h.calc_header_checksum();
        h.to_bytes().to_vec()
    }

    fn ipv6(&self, src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
        let mut exts = Vec::new();
        let kinds: Vec<u8> = self
            .ipv6_exts
            .iter()
            .map(|e| match e {
                Ext::Raw { kind, .. } => *kind,
                Ext::Fragment { .. } => 44,
            })
            .chain(std::iter::once(self.l4.proto(true)))
            .collect();
        for (i, e) in self.ipv6_exts.iter().enumerate() {
            let next = IpNumber(kinds[i + 1]);
            match e {
                Ext::Raw { kind: 51, len } => {
                    // AH counts its length in 4-byte units, minus 2 (RFC 4302).
                    let mut h = vec![0u8; *len];
                    h[0] = next.0;
                    h[1] = u8::try_from(len / 4 - 2).expect("AH length");
                    exts.extend_from_slice(&h);
                }
                Ext::Raw { len, .. } => {
                    // Pad1/PadN options are zero bytes and type-1 TLVs; zeros are Pad1s.
                    let h = Ipv6RawExtHeader::new_raw(next, &vec![0u8; len - 2]).expect("ext length");
                    exts.extend_from_slice(&h.to_bytes());
                }
                Ext::Fragment { offset, more } => exts.extend_from_slice(&ipv6_fragment_header(next.0, *offset, *more)),
            }
        }
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: (exts.len() + l4.len()) as u16,
            next_header: IpNumber(kinds[0]),
            hop_limit: self.ttl,
            source: src,
            destination: dst,
        };
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&exts);
        out
    }
}

/// The IPv6 fragment header (RFC 8200 §4.5): next header, reserved, then a 16-bit
/// word of offset (13 bits, 8-byte units), two reserved bits and the M flag, then the
/// identification. Written by hand: etherparse 0.19's `Ipv6FragmentHeader::to_bytes`
/// puts the M flag in bit 7 of the fourth byte and shifts the offset accordingly.
pub fn ipv6_fragment_header(next: u8, offset: u16, more: bool) -> [u8; 8] {
    assert!(offset < 1 << 13, "13-bit offset");
    let word = (offset << 3) | u16::from(more);
    let [hi, lo] = word.to_be_bytes();
    [next, 0, hi, lo, 0, 0, 0, 7]
}

/// Ethernet header and VLAN tags, ending in `ether_type`.
pub fn ethernet(tags: &[(u16, u16)], ether_type: EtherType) -> Vec<u8> {
    let first = tags.first().map_or(ether_type, |(tpid, _)| EtherType(*tpid));
    let eth = Ethernet2Header { source: [0x02, 0, 0, 0, 0, 0x01], destination: [0x02, 0, 0, 0, 0, 0x02], ether_type: first };
    let mut out = eth.to_bytes().to_vec();
    for (i, (_, vid)) in tags.iter().enumerate() {
        let inner = tags.get(i + 1).map_or(ether_type, |(tpid, _)| EtherType(*tpid));
        let tag = SingleVlanHeader {
            pcp: Default::default(),
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(*vid).expect("12-bit VLAN id"),
            ether_type: inner,
        };
        out.extend_from_slice(&tag.to_bytes());
    }
    out
}

/// An ARP request for `target` from `sender` (IPv4).
pub fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let packet = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        etherparse::ArpOperation::REQUEST,
        &[0x02, 0, 0, 0, 0, 0x01],
        &sender,
        &[0; 6],
        &target,
    )
    .expect("valid ARP");
    let mut out = ethernet(&[], EtherType::ARP);
    out.extend_from_slice(&packet.to_bytes());
    out
}

/// A frame of `len` bytes with an EtherType the policy does not judge (LLDP).
pub fn non_ip(len: usize) -> Vec<u8> {
    let mut out = ethernet(&[], EtherType(0x88cc));
    out.resize(len, 0);
    out
}

/// The frame with one byte replaced.
pub fn set_byte(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame
}

/// The first `len` bytes of the frame.
pub fn truncate(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}
