//! Prefix parsing and normalisation, and list files (one CIDR or address per
//! line, `#` and `;` comments).

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::error::{LineError, ListError};

/// A prefix as stored: host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Normalized {
    /// The prefix with its host bits cleared (`192.0.2.7/24` → `192.0.2.0/24`).
    pub network: IpNetwork,
    /// Whether host bits had to be cleared.
    pub host_bits_cleared: bool,
}

/// Clears host bits: `192.0.2.7/24` becomes `192.0.2.0/24`.
///
/// ```
/// let n = xdpguard::normalize("192.0.2.7/24".parse().unwrap());
/// assert_eq!(n.network.to_string(), "192.0.2.0/24");
/// assert!(n.host_bits_cleared);
/// ```
pub fn normalize(net: IpNetwork) -> Normalized {
    let network = match net {
        IpNetwork::V4(n) => IpNetwork::V4(
            Ipv4Network::new(n.network(), n.prefix()).expect("prefix length already valid"),
        ),
        IpNetwork::V6(n) => IpNetwork::V6(
            Ipv6Network::new(n.network(), n.prefix()).expect("prefix length already valid"),
        ),
    };
    Normalized { network, host_bits_cleared: network.ip() != net.ip() }
}

/// Parses `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_prefix(text: &str) -> Result<IpNetwork, ListError> {
    let text = text.trim();
    let invalid = |reason: String| ListError::InvalidPrefix { input: text.to_owned(), reason };
    if text.is_empty() {
        return Err(invalid("empty".into()));
    }
    match text.split_once('/') {
        None => text
            .parse::<IpAddr>()
            .map(IpNetwork::from)
            .map_err(|_| invalid("not an IPv4 or IPv6 address".into())),
        Some((addr, len)) => {
            let addr: IpAddr =
                addr.parse().map_err(|_| invalid(format!("`{addr}` is not an IP address")))?;
            let len: u8 = len
                .parse()
                .map_err(|_| invalid(format!("`{len}` is not a prefix length")))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(invalid(format!("prefix length {len} is longer than {max}")));
            }
            Ok(IpNetwork::new(addr, len).expect("length checked above"))
        }
    }
}

/// One entry of a list file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLine {
    /// 1-based line number.
    pub line: usize,
    /// The entry, normalised.
    pub entry: Normalized,
}

/// Parses a list file: one CIDR or address per line; `#` and `;` start
/// comments (whole-line or trailing); blank lines are skipped. Every bad line
/// is reported with its number, and then nothing is returned, so a caller
/// never applies half a file.
pub fn parse_list(text: &str, source_name: &str) -> Result<Vec<ListLine>, ListError> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        // Some published lists carry a second column (e.g. Spamhaus's "; SBL123").
        let token = content.split_whitespace().next().unwrap_or(content);
        match parse_prefix(token) {
            Ok(net) => entries.push(ListLine { line: i + 1, entry: normalize(net) }),
            Err(err) => errors.push(LineError { line: i + 1, message: err.to_string() }),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(ListError::BadLines { source_name: source_name.to_owned(), errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_host_bits() {
        let n = normalize("192.0.2.7/24".parse().unwrap());
        assert_eq!(n.network, "192.0.2.0/24".parse::<IpNetwork>().unwrap());
        assert!(n.host_bits_cleared);
        let n = normalize("2001:db8::1/32".parse().unwrap());
        assert_eq!(n.network, "2001:db8::/32".parse::<IpNetwork>().unwrap());
        assert!(n.host_bits_cleared);
        let n = normalize("198.51.100.0/24".parse().unwrap());
        assert!(!n.host_bits_cleared);
        let n = normalize("203.0.113.9/32".parse().unwrap());
        assert!(!n.host_bits_cleared);
        let n = normalize("0.0.0.0/0".parse().unwrap());
        assert!(!n.host_bits_cleared);
        let n = normalize("255.255.255.255/0".parse().unwrap());
        assert_eq!(n.network.to_string(), "0.0.0.0/0");
    }

    #[test]
    fn parses_addresses_and_prefixes() {
        assert_eq!(parse_prefix("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(parse_prefix(" 2001:db8::1 ").unwrap().to_string(), "2001:db8::1/128");
        assert_eq!(parse_prefix("198.51.100.0/24").unwrap().prefix(), 24);
        for bad in ["", "192.0.2.0/33", "2001:db8::/129", "192.0.2", "x/24", "192.0.2.0/", "192.0.2.0/-1", "1.2.3.4/24/1"] {
            let err = parse_prefix(bad).unwrap_err();
            assert!(matches!(err, ListError::InvalidPrefix { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn list_files_skip_comments_and_report_every_bad_line() {
        let text = "# FireHOL-style header\n192.0.2.0/24\n\n; spamhaus comment\n198.51.100.7 ; SBL1\n2001:db8::/48 # trailing\n  203.0.113.5/24  \n";
        let lines = parse_list(text, "t").unwrap();
        let got: Vec<_> = lines.iter().map(|l| (l.line, l.entry.network.to_string())).collect();
        assert_eq!(
            got,
            vec![
                (2, "192.0.2.0/24".to_string()),
                (5, "198.51.100.7/32".to_string()),
                (6, "2001:db8::/48".to_string()),
                (7, "203.0.113.0/24".to_string()),
            ]
        );
        assert!(lines[3].entry.host_bits_cleared);

        let err = parse_list("192.0.2.0/24\nbogus\n198.51.100.0/40\n# ok\n", "list.txt").unwrap_err();
        let ListError::BadLines { errors, source_name } = &err else { panic!("{err}") };
        assert_eq!(source_name, "list.txt");
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3]);
        let text = err.to_string();
        assert!(text.contains("line 2") && text.contains("line 3") && text.contains("nothing applied"), "{text}");
    }
}
