//! A filter's rules, named sets and monitor mode in the configuration
//! file (`[[filter]]` keys `monitor`, `rules`, `rules_file`, and the
//! `[filter.sets]` table), read with every problem and its place:
//!
//! ```toml
//! [[filter]]
//! interfaces = ["eth0"]
//! monitor = false                  # true: count what would be dropped, drop nothing
//! rules = """
//! drop udp sport 53 not from set resolvers
//! drop udp dport 1900,11211
//! """
//! # rules_file = "rules.txt"       # instead of `rules`: relative to this file
//!
//! [filter.sets]
//! resolvers = ["192.0.2.53", "2001:db8::53"]
//! ```
//!
//! A bad rule given inline is reported at its own line and column of the
//! TOML file (the line inside the multi-line string), one in a rule file at
//! that file's line, as list files are.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use ipnetwork::IpNetwork;
use toml::de::{DeTable, DeValue};

use super::parse::{get, Loc, Reader, Val};
use crate::core::layout::consts::XDPG_MAX_SETS;
use crate::filter::rules::syntax::check_set_name;
use crate::{normalize, parse_prefix, parse_rule_lines, Rule, DEFAULT_MAX_RULES};

/// The `[filter.sets]` table: set name -> prefixes (normalised, sorted,
/// without duplicates). A whole-family entry is refused unless
/// `block_whole_family` (as on the blocklist: a drop rule naming the set
/// would cut the host off).
pub(super) fn sets(r: &mut Reader<'_>, t: &DeTable<'_>, whole_family: bool) -> BTreeMap<String, Vec<IpNetwork>> {
    let mut out = BTreeMap::new();
    let Some(v) = get(t, "sets") else { return out };
    let DeValue::Table(table) = v.get_ref() else {
        r.problem(
            v.span(),
            format!(
                "expected a table of named sets ([filter.sets] with `resolvers = [\"192.0.2.53\"]`), found {}",
                v.get_ref().type_str()
            ),
        );
        return out;
    };
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        if let Err(e) = check_set_name(name) {
            r.problem(key.span(), e.to_string());
            continue;
        }
        let mut nets = BTreeSet::new();
        for (text, s) in r.each(value, |r, item| r.string(item).map(str::to_owned)) {
            match parse_prefix(&text) {
                Ok(net) if normalize(net).network.prefix() == 0 && !whole_family => {
                    let entry = normalize(net).network;
                    let which = if entry == net { String::new() } else { format!(" (which is {entry})") };
                    r.problem(
                        s,
                        format!(
                            "set {name}: {text}{which} would let a drop rule naming the set drop every IPv{} packet \
                             from any source that is not allowlisted, this host's own management session included; \
                             if that is meant, allowlist what must stay reachable and set `block_whole_family = true`",
                            if entry.is_ipv4() { 4 } else { 6 }
                        ),
                    );
                }
                Ok(net) => {
                    nets.insert(normalize(net).network);
                }
                Err(e) => r.problem(s, e.to_string()),
            }
        }
        out.insert(name.to_owned(), nets.into_iter().collect());
    }
    if out.len() > XDPG_MAX_SETS as usize {
        r.problem(v.span(), format!("{} named sets: a filter holds at most {XDPG_MAX_SETS}", out.len()));
    }
    out
}

/// Where line `line` (1-based) of an inline `rules` string starts, as a
/// byte offset of the file: exact for literal strings and for basic
/// strings without escapes (the usual `"""` block); otherwise the value's
/// own place, since escapes move the text.
fn inline_line_offset(r: &Reader<'_>, span: &Range<usize>, line: usize) -> usize {
    let raw = &r.text[span.clone()];
    let (quote, literal) = if raw.starts_with("\"\"\"") {
        (3, false)
    } else if raw.starts_with("'''") {
        (3, true)
    } else if raw.starts_with('\'') {
        (1, true)
    } else {
        (1, false)
    };
    let body = &raw[quote.min(raw.len())..raw.len().saturating_sub(quote)];
    if !literal && body.contains('\\') {
        return span.start;
    }
    let mut start = span.start + quote;
    let mut body = body;
    // A newline right after the opening delimiter of a multi-line string is
    // not part of the value.
    if quote == 3 {
        if let Some(rest) = body.strip_prefix("\r\n").or_else(|| body.strip_prefix('\n')) {
            start += body.len() - rest.len();
            body = rest;
        }
    }
    let mut offset = start;
    for (i, l) in body.split('\n').enumerate() {
        if i + 1 == line {
            return offset + (l.len() - l.trim_start().len());
        }
        offset += l.len() + 1;
    }
    span.start
}

/// Where rule line N (1-based) of the rules was given.
type Locate = Box<dyn Fn(&Reader<'_>, usize) -> Loc>;

/// The rules (`rules` inline, or `rules_file`), normalised, in order; each
/// problem at its place. Sets the rules name must be in `sets`.
pub(super) fn rules(
    r: &mut Reader<'_>,
    t: &DeTable<'_>,
    base: &Path,
    sets: &BTreeMap<String, Vec<IpNetwork>>,
) -> Vec<Rule> {
    let inline = get(t, "rules");
    let file = get(t, "rules_file");
    if let (Some(_), Some(f)) = (inline, file) {
        r.problem(f.span(), "give the rules either inline (`rules`) or in a file (`rules_file`), not both");
        return Vec::new();
    }
    let (lines, locate, parsed): (Vec<crate::RuleLine>, Locate, bool) = match (inline, file) {
        (Some(v), None) => {
            let Some(text) = string(r, v) else { return Vec::new() };
            let span = v.span();
            let locate = Box::new(move |r: &Reader<'_>, line: usize| {
                let at = inline_line_offset(r, &span, line);
                Loc::Span(at..at)
            });
            // Every bad line, and (below) every rule of the good ones that
            // names a set the filter lacks: one report.
            let (lines, errors) = parse_rule_lines(text.as_bytes());
            let rule_lines: Vec<&str> = text.split('\n').collect();
            for e in &errors {
                let loc = locate(r, e.line);
                let rule = rule_lines.get(e.line - 1).map_or("", |l| l.trim());
                r.at(&loc, format!("rule `{rule}`: {}", e.message));
            }
            (lines, locate, errors.is_empty())
        }
        (None, Some(v)) => {
            let Some(name) = string(r, v) else { return Vec::new() };
            let path = base.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    r.problem(v.span(), format!("cannot read rule file {}: {e}", path.display()));
                    return Vec::new();
                }
            };
            let locate = {
                let path = path.clone();
                Box::new(move |_: &Reader<'_>, line: usize| Loc::Line(path.clone(), line))
            };
            let (lines, errors) = parse_rule_lines(&bytes);
            for e in &errors {
                r.at(&Loc::Line(path.clone(), e.line), e.message.clone());
            }
            (lines, locate, errors.is_empty())
        }
        _ => return Vec::new(),
    };
    for l in &lines {
        if let Some(set) = l.rule.set_name() {
            if !sets.contains_key(set) {
                let loc = locate(r, l.line);
                r.at(
                    &loc,
                    format!(
                        "rule `{}` names the set `{set}`, which this filter does not define: add it under \
                         [filter.sets] (`{set} = [\"192.0.2.53\"]`)",
                        l.rule
                    ),
                );
            }
        }
    }
    if !parsed {
        return Vec::new();
    }
    if lines.len() > DEFAULT_MAX_RULES {
        let at = inline.or(file).map_or(0..0, Val::span);
        r.problem(at, format!("{} rules: a filter holds at most {DEFAULT_MAX_RULES}", lines.len()));
    }
    lines.into_iter().map(|l| l.rule).collect()
}

fn string(r: &mut Reader<'_>, v: &Val<'_>) -> Option<String> {
    r.string(v).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ipnetwork::IpNetwork;

    use crate::error::ConfigError;

    fn read(text: &str) -> Result<crate::config::Config, Vec<(usize, Option<usize>, String)>> {
        super::super::parse::read(text, Path::new("/etc/xdpguard/x.toml")).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => {
                problems.into_iter().map(|p| (p.line, p.column, p.message)).collect()
            }
            other => panic!("{other}"),
        })
    }

    const HEAD: &str = "[[filter]]\ninterfaces = [\"eth0\"]\n";

    #[test]
    fn rules_sets_and_monitor_are_read() {
        let text = format!(
            "{HEAD}monitor = true\nrules = \"\"\"\n# amplification\ndrop udp sport 53 not from set resolvers\n\ndrop udp dport 1900,11211\n\"\"\"\n[filter.sets]\nresolvers = [\"192.0.2.53\", \"2001:db8::53/64\", \"192.0.2.53/32\"]\n"
        );
        let c = read(&text).unwrap();
        let f = &c.filters[0];
        assert!(f.monitor);
        let rules: Vec<String> = f.rules.iter().map(ToString::to_string).collect();
        assert_eq!(rules, ["drop udp not from set resolvers sport 53", "drop udp dport 1900,11211"]);
        let set: Vec<String> = f.sets["resolvers"].iter().map(ToString::to_string).collect();
        assert_eq!(set, ["192.0.2.53/32", "2001:db8::/64"]);
    }

    #[test]
    fn a_whole_family_set_entry_needs_block_whole_family() {
        let p = read(&format!("{HEAD}[filter.sets]\nmartians = [\"::ffff:0:0/96\", \"fc00::/7\"]\n")).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].2.contains("::ffff:0:0/96 (which is 0.0.0.0/0)") && p[0].2.contains("block_whole_family"),
            "{p:?}"
        );
        let c = read(&format!("{HEAD}block_whole_family = true\n[filter.sets]\nm = [\"::ffff:0:0/96\"]\n")).unwrap();
        assert_eq!(c.filters[0].sets["m"], ["0.0.0.0/0".parse::<IpNetwork>().unwrap()]);
    }

    #[test]
    fn a_bad_rule_is_reported_at_its_line_and_column() {
        // Multi-line basic and literal strings, and a one-line string.
        for (open, close, first_line) in [("\"\"\"\n", "\"\"\"", 4), ("'''\n", "'''", 4), ("\"\"\"", "\"\"\"", 3)] {
            let text = format!("{HEAD}rules = {open}drop udp dport 53\n    drop tcp flags syn,bogus\n{close}\n");
            let p = read(&text).unwrap_err();
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!((p[0].0, p[0].1), (first_line + 1, Some(5)), "{open}: {p:?}");
            assert!(p[0].2.contains("rule `drop tcp flags syn,bogus`") && p[0].2.contains("unknown TCP flag"), "{p:?}");
        }
        let p = read(&format!("{HEAD}rules = \"drop udp sport 99999\"\n")).unwrap_err();
        assert_eq!((p[0].0, p[0].1), (3, Some(10)), "{p:?}");
    }

    #[test]
    fn sets_must_exist_and_be_valid_and_rules_come_from_one_place() {
        let p = read(&format!("{HEAD}rules = \"\"\"\ndrop udp\ndrop udp not from set nowhere\n\"\"\"\n")).unwrap_err();
        assert_eq!((p[0].0, p[0].1), (5, Some(1)));
        assert!(p[0].2.contains("`nowhere`") && p[0].2.contains("[filter.sets]"), "{p:?}");
        // A bad line and a missing set: both in one report.
        let p = read(&format!(
            "{HEAD}rules = \"\"\"\ndrop udp sport 53 not from set resolverz\ndrop tcp flags syn,fni\n\"\"\"\n"
        ))
        .unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().any(|p| p.0 == 4 && p.2.contains("`resolverz`")), "{p:?}");
        assert!(p.iter().any(|p| p.0 == 5 && p.2.contains("fni")), "{p:?}");
        let p = read(&format!("{HEAD}[filter.sets]\n9lives = [\"192.0.2.1\"]\nok = [\"192.0.2.300\"]\n")).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        let p = read(&format!("{HEAD}rules = \"drop udp\"\nrules_file = \"r.txt\"\n")).unwrap_err();
        assert!(p[0].2.contains("not both"), "{p:?}");
        let p = read(&format!("{HEAD}rules_file = \"/nonexistent/rules.txt\"\n")).unwrap_err();
        assert!(p[0].2.contains("cannot read rule file"), "{p:?}");
    }
}
