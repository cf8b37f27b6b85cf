//! What differs between two frames, field by field.
//!
//! [`fields`] reads a frame the way a person reads a capture: Ethernet,
//! VLAN tags, IPv4 (with options) or IPv6 (with extension headers), IP in
//! IP, TCP, UDP, ICMP/ICMPv6 and the packet an ICMP error quotes, then the
//! payload. It is lenient: a frame cut short, or garbage, yields the fields
//! that are there and the rest as bytes. [`diff`] compares two frames field
//! by field; its [`Display`](std::fmt::Display) is what fixture reports
//! print.
//!
//! ```
//! use xdpguard::testing::diff::diff;
//! use xdpguard::testing::frame::Frame;
//!
//! let a = Frame::builder().ipv4([192, 0, 2, 1].into(), [192, 0, 2, 2].into()).ttl(64).udp(1, 2).build();
//! let b = Frame::builder().ipv4([192, 0, 2, 1].into(), [192, 0, 2, 2].into()).ttl(63).udp(1, 2).build();
//! let d = diff(&a, &b);
//! assert!(d.to_string().contains("ipv4.ttl: want 64, got 63"), "{d}");
//! ```

use std::fmt;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One field of a frame: a dotted name ("ipv4.ttl", "inner-ipv4.src",
/// "tcp.flags", "quoted-ipv4.checksum", "payload"), where it is, and its
/// value as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: String,
    /// Offset of its first byte in the frame.
    pub offset: usize,
    /// Its value, as printed.
    pub value: String,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// A long value shortened around `at` (a character index) for printing.
fn shorten(v: &str, at: usize) -> String {
    const KEEP: usize = 64;
    if v.len() <= KEEP {
        return v.to_string();
    }
    let start = at.saturating_sub(16) & !1;
    let end = (start + KEEP).min(v.len());
    format!(
        "{}{}{} ({} bytes)",
        if start > 0 { "..." } else { "" },
        &v[start..end],
        if end < v.len() { "..." } else { "" },
        v.len() / 2
    )
}

struct Reader<'a> {
    frame: &'a [u8],
    out: Vec<Field>,
}

impl Reader<'_> {
    fn push(&mut self, name: String, offset: usize, value: String) {
        self.out.push(Field { name, offset, value });
    }

    /// The rest of the frame from `at`, as one field.
    fn rest(&mut self, name: &str, at: usize) {
        if at < self.frame.len() {
            let v = hex(&self.frame[at..]);
            self.push(name.into(), at, v);
        }
    }

    fn ethernet(&mut self) {
        let f = self.frame;
        if f.len() < 14 {
            self.rest("truncated-ethernet", 0);
            return;
        }
        self.push("eth.dst".into(), 0, mac(&f[0..6]));
        self.push("eth.src".into(), 6, mac(&f[6..12]));
        let mut et = be16(f, 12);
        self.push("eth.type".into(), 12, format!("{et:#06x}"));
        let mut at = 14;
        let mut i = 0;
        while (et == 0x8100 || et == 0x88A8) && i < 8 {
            if f.len() < at + 4 {
                self.rest(&format!("truncated-vlan{i}"), at);
                return;
            }
            self.push(format!("vlan{i}.id"), at, format!("{}", be16(f, at) & 0x0FFF));
            self.push(format!("vlan{i}.pcp-dei"), at, format!("{}", be16(f, at) >> 12));
            et = be16(f, at + 2);
            self.push(format!("vlan{i}.type"), at + 2, format!("{et:#06x}"));
            at += 4;
            i += 1;
        }
        match et {
            0x0800 | 0x86DD => self.ip(at, f.len(), ""),
            _ => self.rest("ether-payload", at),
        }
    }

    /// An IP packet at `at` whose bytes end at `end` (its own length
    /// fields decide where its payload ends, within `end`).
    fn ip(&mut self, at: usize, end: usize, prefix: &str) {
        let f = self.frame;
        if at >= end {
            return;
        }
        match f[at] >> 4 {
            4 if end - at >= 20 => self.ipv4(at, end, prefix),
            6 if end - at >= 40 => self.ipv6(at, end, prefix),
            _ => {
                let v = hex(&f[at..end]);
                self.push(format!("{prefix}ip-bytes"), at, v);
            }
        }
    }

    fn ipv4(&mut self, at: usize, end: usize, p: &str) {
        let f = self.frame;
        let ihl = usize::from(f[at] & 0xF) * 4;
        let n = |s: &str| format!("{p}ipv4.{s}");
        self.push(n("version-ihl"), at, format!("{:#04x}", f[at]));
        self.push(n("tos"), at + 1, format!("{:#04x}", f[at + 1]));
        let total = usize::from(be16(f, at + 2));
        self.push(n("total-length"), at + 2, total.to_string());
        self.push(n("id"), at + 4, format!("{:#06x}", be16(f, at + 4)));
        let frag = be16(f, at + 6);
        self.push(
            n("flags"),
            at + 6,
            format!("{}{}", if frag & 0x4000 != 0 { "DF" } else { "-" }, if frag & 0x2000 != 0 { "MF" } else { "-" }),
        );
        self.push(n("fragment-offset"), at + 6, (frag & 0x1FFF).to_string());
        self.push(n("ttl"), at + 8, f[at + 8].to_string());
        let proto = f[at + 9];
        self.push(n("protocol"), at + 9, proto.to_string());
        self.push(n("checksum"), at + 10, format!("{:#06x}", be16(f, at + 10)));
        self.push(n("src"), at + 12, Ipv4Addr::new(f[at + 12], f[at + 13], f[at + 14], f[at + 15]).to_string());
        self.push(n("dst"), at + 16, Ipv4Addr::new(f[at + 16], f[at + 17], f[at + 18], f[at + 19]).to_string());
        if ihl < 20 || at + ihl > end {
            self.rest_until(&n("rest"), at + 20, end);
            return;
        }
        if ihl > 20 {
            let v = hex(&f[at + 20..at + ihl]);
            self.push(n("options"), at + 20, v);
        }
        let pend = if total >= ihl && at + total <= end { at + total } else { end };
        let l4 = at + ihl;
        if frag & 0x1FFF != 0 {
            self.rest_until(&format!("{p}fragment-data"), l4, pend);
        } else {
            self.transport(proto, l4, pend, p, false);
        }
        if p.is_empty() {
            self.rest_until("trailer", pend, end);
        }
    }

    fn ipv6(&mut self, at: usize, end: usize, p: &str) {
        let f = self.frame;
        let n = |s: &str| format!("{p}ipv6.{s}");
        let w = be32(f, at);
        self.push(n("version"), at, (w >> 28).to_string());
        self.push(n("traffic-class"), at, format!("{:#04x}", (w >> 20) & 0xFF));
        self.push(n("flow-label"), at + 1, format!("{:#07x}", w & 0xFFFFF));
        let plen = usize::from(be16(f, at + 4));
        self.push(n("payload-length"), at + 4, plen.to_string());
        let mut next = f[at + 6];
        self.push(n("next-header"), at + 6, next.to_string());
        self.push(n("hop-limit"), at + 7, f[at + 7].to_string());
        let addr = |o: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&f[o..o + 16]);
            Ipv6Addr::from(a).to_string()
        };
        self.push(n("src"), at + 8, addr(at + 8));
        self.push(n("dst"), at + 24, addr(at + 24));
        let pend = if at + 40 + plen <= end { at + 40 + plen } else { end };
        let mut off = at + 40;
        let mut later = false;
        for i in 0..16 {
            match next {
                0 | 43 | 60 | 44 => {
                    let len = if next == 44 {
                        8
                    } else if off + 2 <= pend {
                        (usize::from(f[off + 1]) + 1) * 8
                    } else {
                        8
                    };
                    if off + len > pend {
                        self.rest_until(&format!("{p}ext{i}-truncated"), off, pend);
                        off = pend;
                        break;
                    }
                    self.push(format!("{p}ext{i}.next-header"), off, f[off].to_string());
                    if next == 44 {
                        later = be16(f, off + 2) & 0xFFF8 != 0;
                        self.push(format!("{p}ext{i}.fragment"), off + 2, hex(&f[off + 2..off + 8]));
                    } else {
                        self.push(format!("{p}ext{i}.body"), off + 1, hex(&f[off + 1..off + len]));
                    }
                    next = f[off];
                    off += len;
                }
                _ => break,
            }
        }
        if later {
            self.rest_until(&format!("{p}fragment-data"), off, pend);
        } else {
            self.transport(next, off, pend, p, true);
        }
        if p.is_empty() {
            self.rest_until("trailer", pend, end);
        }
    }

    fn rest_until(&mut self, name: &str, at: usize, end: usize) {
        if at < end {
            let v = hex(&self.frame[at..end]);
            self.push(name.into(), at, v);
        }
    }

    fn transport(&mut self, proto: u8, at: usize, end: usize, p: &str, v6: bool) {
        let f = self.frame;
        let avail = end.saturating_sub(at);
        match proto {
            4 | 41 => {
                let inner = if p.is_empty() { "inner-".to_string() } else { format!("inner-{p}") };
                self.ip(at, end, &inner);
            }
            6 if avail >= 20 => {
                let n = |s: &str| format!("{p}tcp.{s}");
                self.push(n("src-port"), at, be16(f, at).to_string());
                self.push(n("dst-port"), at + 2, be16(f, at + 2).to_string());
                self.push(n("seq"), at + 4, be32(f, at + 4).to_string());
                self.push(n("ack"), at + 8, be32(f, at + 8).to_string());
                self.push(n("data-offset"), at + 12, (f[at + 12] >> 4).to_string());
                self.push(n("flags"), at + 13, tcp_flags(f[at + 13]));
                self.push(n("window"), at + 14, be16(f, at + 14).to_string());
                self.push(n("checksum"), at + 16, format!("{:#06x}", be16(f, at + 16)));
                self.push(n("urgent"), at + 18, be16(f, at + 18).to_string());
                let doff = (usize::from(f[at + 12] >> 4) * 4).clamp(20, avail);
                self.rest_until(&n("options"), at + 20, at + doff);
                self.rest_until(&format!("{p}payload"), at + doff, end);
            }
            17 if avail >= 8 => {
                let n = |s: &str| format!("{p}udp.{s}");
                self.push(n("src-port"), at, be16(f, at).to_string());
                self.push(n("dst-port"), at + 2, be16(f, at + 2).to_string());
                self.push(n("length"), at + 4, be16(f, at + 4).to_string());
                self.push(n("checksum"), at + 6, format!("{:#06x}", be16(f, at + 6)));
                self.rest_until(&format!("{p}payload"), at + 8, end);
            }
            1 | 58 if avail >= 8 => {
                let name = if proto == 1 { "icmpv4" } else { "icmpv6" };
                let n = |s: &str| format!("{p}{name}.{s}");
                let (ty, code) = (f[at], f[at + 1]);
                self.push(n("type"), at, ty.to_string());
                self.push(n("code"), at + 1, code.to_string());
                self.push(n("checksum"), at + 2, format!("{:#06x}", be16(f, at + 2)));
                self.push(n("rest"), at + 4, hex(&f[at + 4..at + 8]));
                let error = if v6 { matches!(ty, 1..=4) } else { matches!(ty, 3 | 4 | 5 | 11 | 12) };
                if error && p.is_empty() {
                    self.ip(at + 8, end, "quoted-");
                } else {
                    self.rest_until(&format!("{p}payload"), at + 8, end);
                }
            }
            _ => self.rest_until(&format!("{p}payload"), at, end),
        }
    }
}

fn tcp_flags(b: u8) -> String {
    let names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let set: Vec<&str> = (0..8).filter(|i| b & (1 << i) != 0).map(|i| names[i]).collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join("|")
    }
}

/// The fields of a frame, in order (see the module docs).
pub fn fields(frame: &[u8]) -> Vec<Field> {
    let mut r = Reader { frame, out: Vec::new() };
    r.ethernet();
    r.out
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// The field's name.
    pub name: String,
    /// Its value in the expected frame (None: not there).
    pub want: Option<String>,
    /// Its value in the frame got (None: not there).
    pub got: Option<String>,
}

/// How two frames differ, field by field (empty: they are equal).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameDiff {
    /// The fields that differ, in frame order.
    pub fields: Vec<FieldDiff>,
    /// The two lengths, when they differ.
    pub lengths: Option<(usize, usize)>,
}

impl FrameDiff {
    /// Whether the frames are the same.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.lengths.is_none()
    }
}

impl fmt::Display for FrameDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no difference");
        }
        if let Some((w, g)) = self.lengths {
            writeln!(f, "length: want {w}, got {g}")?;
        }
        for d in &self.fields {
            // Where the two first differ, so long values print around it.
            let at = match (&d.want, &d.got) {
                (Some(w), Some(g)) => {
                    w.bytes().zip(g.bytes()).position(|(a, b)| a != b).unwrap_or(w.len().min(g.len()))
                }
                _ => 0,
            };
            let show = |v: &Option<String>| v.as_deref().map_or_else(|| "(absent)".into(), |v| shorten(v, at));
            writeln!(f, "{}: want {}, got {}", d.name, show(&d.want), show(&d.got))?;
        }
        Ok(())
    }
}

/// How `got` differs from `want`, field by field. Two frames with equal
/// bytes have an empty diff; any byte that differs shows in some field.
pub fn diff(want: &[u8], got: &[u8]) -> FrameDiff {
    let mut out = FrameDiff::default();
    if want == got {
        return out;
    }
    if want.len() != got.len() {
        out.lengths = Some((want.len(), got.len()));
    }
    let (a, b) = (fields(want), fields(got));
    let mut seen = std::collections::HashSet::new();
    for fa in &a {
        seen.insert(fa.name.clone());
        match b.iter().find(|fb| fb.name == fa.name) {
            Some(fb) if fb.value == fa.value => {}
            Some(fb) => out.fields.push(FieldDiff {
                name: fa.name.clone(),
                want: Some(fa.value.clone()),
                got: Some(fb.value.clone()),
            }),
            None => out.fields.push(FieldDiff { name: fa.name.clone(), want: Some(fa.value.clone()), got: None }),
        }
    }
    for fb in &b {
        if !seen.contains(&fb.name) {
            out.fields.push(FieldDiff { name: fb.name.clone(), want: None, got: Some(fb.value.clone()) });
        }
    }
    if out.fields.is_empty() && out.lengths.is_none() {
        // Same fields, different bytes the reader does not name (cannot
        // happen for frames it reads whole; kept as a safety net).
        out.fields.push(FieldDiff { name: "bytes".into(), want: Some(hex(want)), got: Some(hex(got)) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frame::{Frame, Icmp};

    #[test]
    fn every_byte_of_a_frame_is_in_some_field() {
        let quoted =
            Frame::builder().ipv4([192, 0, 2, 1].into(), [203, 0, 113, 1].into()).tcp(1, 80).payload(&[1; 40]).build();
        let f = Frame::builder()
            .ipv6("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap())
            .ipv4([192, 0, 2, 99].into(), [192, 0, 2, 1].into())
            .options(&[1, 1, 1, 0])
            .icmp(Icmp::TooBig { mtu: 1400 })
            .payload(&quoted.ip_packet()[..48])
            .trailer(&[0; 4])
            .build();
        for at in 0..f.len() {
            let mut g = f.to_vec();
            g[at] ^= 0x10;
            let d = diff(&f, &g);
            assert!(!d.fields.is_empty(), "byte {at}");
            assert!(d.fields.iter().all(|x| x.name != "bytes"), "byte {at}: {d}");
        }
        let names: Vec<String> = fields(&f).into_iter().map(|x| x.name).collect();
        for n in ["inner-ipv4.options", "inner-icmpv4.type", "trailer"] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
    }

    #[test]
    fn icmp_errors_quote_a_packet() {
        let quoted = Frame::builder().ipv4([192, 0, 2, 1].into(), [203, 0, 113, 1].into()).udp(1, 53).build();
        let f = Frame::builder()
            .ipv4([192, 0, 2, 99].into(), [203, 0, 113, 1].into())
            .icmp(Icmp::Unreachable { code: 3 })
            .payload(quoted.ip_packet())
            .build();
        let names: Vec<String> = fields(&f).into_iter().map(|x| x.name).collect();
        assert!(names.contains(&"quoted-ipv4.src".to_string()), "{names:?}");
        assert!(names.contains(&"quoted-udp.dst-port".to_string()), "{names:?}");
    }

    #[test]
    fn truncated_and_garbage_frames_read_what_is_there() {
        for len in 0..60 {
            let g: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = fields(&g);
            let mut v4 = g.clone();
            if v4.len() > 14 {
                v4[12..14].copy_from_slice(&[0x08, 0x00]);
                v4[14] = 0x4F;
                let _ = fields(&v4);
            }
        }
    }
}
