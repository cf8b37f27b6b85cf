//! Seeded, blocklist-shaped prefix sets and the source addresses the
//! generator sends: attack sources (inside a listed prefix), clean sources
//! (covered by none) and mixes of both.
//!
//! IPv4: 70% /32, 25% /24, 5% /16–/23 (uniform over those lengths), drawn from
//! 1.0.0.0–223.255.255.255 minus 127/8 and the three documentation /24s (the
//! harness's own addresses).
//! IPv6: 55% /128, 25% /64, 10% /56, 10% /48, drawn from 2000::/3 minus
//! 2001:db8::/32.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use xdpguard::IpNetwork;

/// An IPv4 prefix, address in host order with host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix4 {
    pub addr: u32,
    pub len: u8,
}

/// An IPv6 prefix, address in host order with host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix6 {
    pub addr: u128,
    pub len: u8,
}

pub fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

pub fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Prefix4 {
    pub fn net(self) -> IpNetwork {
        IpNetwork::new(Ipv4Addr::from(self.addr).into(), self.len).expect("valid length")
    }
}

impl Prefix6 {
    pub fn net(self) -> IpNetwork {
        IpNetwork::new(Ipv6Addr::from(self.addr).into(), self.len).expect("valid length")
    }
}

/// The generator's table entry for an address: network byte order words.
pub fn words4(addr: u32) -> [u32; 4] {
    [u32::from_ne_bytes(addr.to_be_bytes()), 0, 0, 0]
}

pub fn words6(addr: u128) -> [u32; 4] {
    let b = addr.to_be_bytes();
    std::array::from_fn(|i| u32::from_ne_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes")))
}

/// Parses `10k`, `100k`, `1m`, `250000`.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix('k') {
        (n, 1_000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 1_000_000)
    } else {
        (t.as_str(), 1)
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

/// `10k`, `100k`, `1M`, or the plain number.
pub fn size_label(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn usable4(a: u32) -> bool {
    let first = a >> 24;
    (1..=223).contains(&first)
        && first != 127
        && a & 0xFFFF_FF00 != 0xC000_0200 // 192.0.2.0/24
        && a & 0xFFFF_FF00 != 0xC633_6400 // 198.51.100.0/24
        && a & 0xFFFF_FF00 != 0xCB00_7100 // 203.0.113.0/24
}

fn random4(rng: &mut StdRng) -> u32 {
    loop {
        let a: u32 = rng.random();
        if usable4(a) {
            return a;
        }
    }
}

fn random6(rng: &mut StdRng) -> u128 {
    loop {
        // 2000::/3: top three bits 001.
        let a = (rng.random::<u128>() >> 3) | (1u128 << 125);
        if a >> 96 != 0x2001_0db8 {
            return a;
        }
    }
}

/// A seeded IPv4 blocklist with its coverage index.
pub struct Set4 {
    pub prefixes: Vec<Prefix4>,
    by_len: Vec<(u8, HashSet<u32>)>,
}

impl Set4 {
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7634_0000);
        let mut seen = HashSet::with_capacity(n);
        let mut prefixes = Vec::with_capacity(n);
        while prefixes.len() < n {
            let pick = rng.random_range(0..100u32);
            let len = match pick {
                0..70 => 32,
                70..95 => 24,
                _ => rng.random_range(16..=23u8),
            };
            let p = Prefix4 { addr: random4(&mut rng) & mask4(len), len };
            if seen.insert(p) {
                prefixes.push(p);
            }
        }
        Self::from_prefixes(prefixes)
    }

    pub fn from_prefixes(prefixes: Vec<Prefix4>) -> Self {
        let by_len = index_by_len(prefixes.iter().map(|p| (p.len, p.addr)));
        Self { prefixes, by_len }
    }

    pub fn covers(&self, a: u32) -> bool {
        self.by_len.iter().any(|(len, s)| s.contains(&(a & mask4(*len))))
    }

    /// A random address inside a random listed prefix.
    pub fn attack(&self, rng: &mut StdRng) -> u32 {
        let p = self.prefixes[rng.random_range(0..self.prefixes.len())];
        p.addr | (rng.random::<u32>() & !mask4(p.len))
    }

    /// A random usable address no listed prefix covers.
    pub fn clean(&self, rng: &mut StdRng) -> u32 {
        loop {
            let a = random4(rng);
            if !self.covers(a) {
                return a;
            }
        }
    }

    pub fn nets(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.prefixes.iter().map(|p| p.net())
    }
}

/// Networks grouped by prefix length, for coverage checks (one set probe
/// per length in use).
fn index_by_len<A: std::hash::Hash + Eq>(nets: impl Iterator<Item = (u8, A)>) -> Vec<(u8, HashSet<A>)> {
    let mut by_len: Vec<(u8, HashSet<A>)> = Vec::new();
    for (len, addr) in nets {
        match by_len.iter_mut().find(|(l, _)| *l == len) {
            Some((_, s)) => {
                s.insert(addr);
            }
            None => by_len.push((len, HashSet::from([addr]))),
        }
    }
    by_len
}

/// A seeded IPv6 blocklist with its coverage index.
pub struct Set6 {
    pub prefixes: Vec<Prefix6>,
    by_len: Vec<(u8, HashSet<u128>)>,
}

impl Set6 {
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7636_0000);
        let mut seen = HashSet::with_capacity(n);
        let mut prefixes = Vec::with_capacity(n);
        while prefixes.len() < n {
            let len = match rng.random_range(0..100u32) {
                0..55 => 128,
                55..80 => 64,
                80..90 => 56,
                _ => 48,
            };
            let p = Prefix6 { addr: random6(&mut rng) & mask6(len), len };
            if seen.insert(p) {
                prefixes.push(p);
            }
        }
        let by_len = index_by_len(prefixes.iter().map(|p| (p.len, p.addr)));
        Self { prefixes, by_len }
    }

    pub fn covers(&self, a: u128) -> bool {
        self.by_len.iter().any(|(len, s)| s.contains(&(a & mask6(*len))))
    }

    pub fn attack(&self, rng: &mut StdRng) -> u128 {
        let p = self.prefixes[rng.random_range(0..self.prefixes.len())];
        p.addr | (rng.random::<u128>() & !mask6(p.len))
    }

    pub fn clean(&self, rng: &mut StdRng) -> u128 {
        loop {
            let a = random6(rng);
            if !self.covers(a) {
                return a;
            }
        }
    }

    pub fn nets(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.prefixes.iter().map(|p| p.net())
    }
}

/// The traffic mixes of the live bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every source inside a listed prefix.
    Attack,
    /// No source covered by any prefix.
    Clean,
    /// Half and half, shuffled.
    Half,
    /// Uniformly random over the whole address space (no table).
    Random,
}

impl Mix {
    pub fn parse(text: &str) -> Option<Mix> {
        match text.trim() {
            "attack" => Some(Mix::Attack),
            "clean" => Some(Mix::Clean),
            "half" | "50/50" | "mixed" => Some(Mix::Half),
            "random" => Some(Mix::Random),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mix::Attack => "100% attack",
            Mix::Clean => "100% clean",
            Mix::Half => "50/50",
            Mix::Random => "uniform random",
        }
    }
}

/// Either family's set, for code that handles both.
pub enum AnySet {
    V4(Set4),
    V6(Set6),
}

impl AnySet {
    pub fn family(&self) -> u8 {
        match self {
            AnySet::V4(_) => 4,
            AnySet::V6(_) => 6,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            AnySet::V4(s) => s.prefixes.len(),
            AnySet::V6(s) => s.prefixes.len(),
        }
    }

    pub fn nets(&self) -> Vec<IpNetwork> {
        match self {
            AnySet::V4(s) => s.nets().collect(),
            AnySet::V6(s) => s.nets().collect(),
        }
    }

    fn one(&self, rng: &mut StdRng, attack: bool) -> [u32; 4] {
        match (self, attack) {
            (AnySet::V4(s), true) => words4(s.attack(rng)),
            (AnySet::V4(s), false) => words4(s.clean(rng)),
            (AnySet::V6(s), true) => words6(s.attack(rng)),
            (AnySet::V6(s), false) => words6(s.clean(rng)),
        }
    }

    /// The generator's source table for `mix` (`None` for uniform random),
    /// `entries` long, in shuffled order.
    pub fn sources(&self, mix: Mix, entries: usize, seed: u64) -> Option<Vec<[u32; 4]>> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0000);
        let mut table: Vec<[u32; 4]> = match mix {
            Mix::Random => return None,
            Mix::Attack => (0..entries).map(|_| self.one(&mut rng, true)).collect(),
            Mix::Clean => (0..entries).map(|_| self.one(&mut rng, false)).collect(),
            Mix::Half => (0..entries).map(|i| self.one(&mut rng, i % 2 == 0)).collect(),
        };
        table.shuffle(&mut rng);
        Some(table)
    }
}
