//! Test frames built with etherparse (checksums included).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

/// Bytes of UDP payload in the generator's frames: IPv4 frames are 64 bytes
/// (the minimum Ethernet frame without FCS), IPv6 frames 84 bytes.
pub const UDP_PAYLOAD: usize = 22;

/// An Ethernet + IPv4 + UDP frame.
pub fn udp4(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src.octets(), dst.octets(), 64).udp(sport, dport);
    let payload = [0x5au8; UDP_PAYLOAD];
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("writing to a Vec");
    v
}

/// An Ethernet + IPv6 + UDP frame.
pub fn udp6(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv6(src.octets(), dst.octets(), 64).udp(sport, dport);
    let payload = [0x5au8; UDP_PAYLOAD];
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("writing to a Vec");
    v
}

/// An Ethernet + IPv4 + TCP frame; `syn` sets SYN, otherwise ACK.
pub fn tcp4(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src.octets(), dst.octets(), 64).tcp(sport, dport, 1, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let payload = [0x5au8; 16];
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("writing to a Vec");
    v
}

/// An Ethernet + IPv6 + TCP frame; `syn` sets SYN, otherwise ACK.
pub fn tcp6(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv6(src.octets(), dst.octets(), 64).tcp(sport, dport, 1, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let payload = [0x5au8; 16];
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("writing to a Vec");
    v
}

/// An ARP request (not IP).
pub fn arp(src_mac: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::with_capacity(60);
    v.extend_from_slice(&[0xff; 6]);
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x08, 0x06]); // ARP
    v.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[192, 0, 2, 1]);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&[192, 0, 2, 2]);
    v.resize(60, 0);
    v
}

/// An IPv4 ethertype followed by a truncated header (10 of 20 bytes).
pub fn truncated4(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&dst_mac);
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 17]);
    v
}

/// The `struct xdp_md` context a live-frames run needs: the frame spans
/// `[0, len)` and arrives on `ifindex`, queue 0.
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes()); // data_end
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    ctx
}
