//! Names for the public enums without data (policies, modes, states):
//! `Display` and `FromStr` written from one table per enum, so what is
//! shown is always accepted back, and a wrong name gets a
//! [`ParseError`](crate::ParseError) listing the accepted ones. The CLIs
//! parse their arguments with these (and a configuration file may).
//!
//! Rejected alternatives: strum's derives do the same with a dependency,
//! attributes on every variant and, for an error listing the accepted
//! names, an error function per type; clap's `ValueEnum` would put clap in
//! the library. A table of a few lines per enum needs neither.

/// Implements `Display` (the first name of each variant; width and
/// alignment honoured) and `FromStr` (every name, in any ASCII case,
/// surrounding whitespace ignored) for a field-less enum:
///
/// ```text
/// named_values! { EchoPolicy, "echo policy", {
///     Answer => "answer",
///     Pass => "pass",
///     Drop => "drop" | "discard",   // also accepted, never shown
/// } }
/// ```
///
/// Under `cfg(test)` it also gives `ALL`, every variant in table order,
/// for the round-trip tests below.
macro_rules! named_values {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(match self {
                    $($ty::$variant => $name,)+
                })
            }
        }

        #[doc = concat!("Parses ", $what, " names (any ASCII case; what `Display` shows first):")]
        #[doc = ""]
        $(#[doc = concat!(
            "- `", $name, "`", $(", `", $alias, "`",)*
            ": [`", stringify!($ty), "::", stringify!($variant), "`]"
        )])+
        impl ::std::str::FromStr for $ty {
            type Err = crate::error::ParseError;

            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                let t = s.trim();
                $(
                    if t.eq_ignore_ascii_case($name) $(|| t.eq_ignore_ascii_case($alias))* {
                        return Ok($ty::$variant);
                    }
                )+
                Err(crate::error::ParseError::Unknown { what: $what, input: s.to_owned(), expected: &[$($name),+] })
            }
        }

        #[cfg(test)]
        impl $ty {
            pub(crate) const ALL: &'static [$ty] = &[$($ty::$variant),+];
        }
    };
}

pub(crate) use named_values;

#[cfg(test)]
mod tests {
    use std::fmt::{Debug, Display};
    use std::str::FromStr;

    use crate::error::ParseError;
    use crate::{
        AttachMode, BackendState, EchoPolicy, ForwardingMode, FragmentPolicy, HashInput, IpFamily, ListKind,
        MalformedPolicy, NeighbourState, OptionsPolicy, Protocol, RuleAction,
    };

    /// Every value prints as a name that parses back to it, in any case and
    /// padded; a wrong name is refused with every shown name listed.
    fn round_trip<T>(all: &[T], what: &str)
    where
        T: Copy + PartialEq + Debug + Display + FromStr<Err = ParseError>,
    {
        let shown: Vec<String> = all.iter().map(|v| v.to_string()).collect();
        for (v, name) in all.iter().zip(&shown) {
            assert_eq!(name.parse::<T>(), Ok(*v), "{what} {name}");
            assert_eq!(name.to_ascii_uppercase().parse::<T>(), Ok(*v), "{what} {name} in capitals");
            assert_eq!(format!(" {name}\n").parse::<T>(), Ok(*v), "{what} {name} with whitespace");
            assert!(!name.is_empty() && !name.contains(char::is_whitespace), "{what} {name}: one word");
        }
        let mut unique = shown.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), shown.len(), "{what}: names differ: {shown:?}");
        let err = "no-such-value".parse::<T>().unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("unknown {what} `no-such-value` (expected ")), "{text}");
        for name in &shown {
            assert!(text.contains(name.as_str()), "{text} lists {name}");
        }
        assert!(matches!(err, ParseError::Unknown { expected, .. } if expected.len() == all.len()));
    }

    #[test]
    fn every_named_value_round_trips() {
        round_trip(AttachMode::ALL, "XDP mode");
        round_trip(ListKind::ALL, "list");
        round_trip(MalformedPolicy::ALL, "malformed-packet policy");
        round_trip(Protocol::ALL, "protocol");
        round_trip(ForwardingMode::ALL, "forwarding mode");
        round_trip(HashInput::ALL, "hash input");
        round_trip(EchoPolicy::ALL, "echo policy");
        round_trip(FragmentPolicy::ALL, "fragment policy");
        round_trip(OptionsPolicy::ALL, "options policy");
        round_trip(BackendState::ALL, "backend state");
        round_trip(NeighbourState::ALL, "neighbour state");
        round_trip(RuleAction::ALL, "rule action");
        round_trip(IpFamily::ALL, "IP version");
    }

    /// The names the CLIs documented before these tables existed still
    /// parse, as do the shorter forms.
    #[test]
    fn aliases_parse() {
        let cases: [(&str, AttachMode); 4] = [
            ("drv", AttachMode::Native),
            ("driver", AttachMode::Native),
            ("skb", AttachMode::Generic),
            ("hw", AttachMode::Offload),
        ];
        for (s, v) in cases {
            assert_eq!(s.parse(), Ok(v), "{s}");
        }
        assert_eq!("l2-dsr".parse(), Ok(ForwardingMode::L2Dsr));
        assert_eq!("L2DSR".parse(), Ok(ForwardingMode::L2Dsr));
        assert_eq!("tunnel".parse(), Ok(ForwardingMode::Ipip));
        assert_eq!("5-tuple".parse(), Ok(HashInput::FiveTuple));
        assert_eq!("src".parse(), Ok(HashInput::SourceAddress));
        assert_eq!("forward-all-ports".parse(), Ok(FragmentPolicy::ForwardAllPorts));
        assert_eq!("block".parse(), Ok(ListKind::Block));
        assert_eq!("allow".parse(), Ok(ListKind::Allow));
    }

    /// `Display` honours width, for tables.
    #[test]
    fn names_pad() {
        assert_eq!(format!("[{:<9}]", BackendState::Active), "[active   ]");
        assert_eq!(format!("[{:>5}]", Protocol::Udp), "[  udp]");
    }
}
