//! Unit tests: names and labels as encoded in both formats, the documented
//! list against the families, and a program that cannot be read.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

use super::family::{Id, Samples, Type, FAMILIES};
use super::*;
use crate::{Counter, FilterStats, LbStats};

/// A collector of fixed samples.
#[derive(Debug)]
struct Fixed(fn(&mut Samples));

impl Collector for Fixed {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut s = Samples::default();
        (self.0)(&mut s);
        s.encode(&mut encoder)
    }
}

fn rendered(f: fn(&mut Samples), format: Format) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(Fixed(f)));
    render(&r, format)
}

fn pin() -> Cow<'static, str> {
    "/sys/fs/bpf/xdpguard".into()
}

#[test]
fn counters_get_total_and_byte_counters_their_unit_in_both_formats() {
    let f = |s: &mut Samples| {
        s.push_counter(
            Id::FILTER_PACKETS,
            Id::FILTER_BYTES,
            [pin(), "blocked_v4".into()],
            Counter { packets: 3, bytes: 180 },
        );
        s.push(Id::FILTER_ENTRIES, [pin(), "block".into()], 7);
    };
    let om = rendered(f, Format::OpenMetrics);
    let want_om = "\
# HELP xdpguard_filter_packets Packets the filter saw, by verdict reason (each packet counted once).
# TYPE xdpguard_filter_packets counter
xdpguard_filter_packets_total{pin=\"/sys/fs/bpf/xdpguard\",reason=\"blocked_v4\"} 3
# HELP xdpguard_filter_bytes Bytes the filter saw (from the Ethernet header), by verdict reason.
# TYPE xdpguard_filter_bytes counter
# UNIT xdpguard_filter_bytes bytes
xdpguard_filter_bytes_total{pin=\"/sys/fs/bpf/xdpguard\",reason=\"blocked_v4\"} 180
# HELP xdpguard_filter_list_entries Entries in the filter's blocklist and allowlist.
# TYPE xdpguard_filter_list_entries gauge
xdpguard_filter_list_entries{pin=\"/sys/fs/bpf/xdpguard\",list=\"block\"} 7
# EOF
";
    assert_eq!(om, want_om);
    let prom = rendered(f, Format::Prometheus);
    assert!(prom.contains("# TYPE xdpguard_filter_packets_total counter\n"), "{prom}");
    assert!(prom.contains("# TYPE xdpguard_filter_bytes_total counter\n"), "{prom}");
    assert!(prom.contains("xdpguard_filter_bytes_total{pin=\"/sys/fs/bpf/xdpguard\",reason=\"blocked_v4\"} 180\n"));
    assert!(prom.contains("# TYPE xdpguard_filter_list_entries gauge\n"), "{prom}");
    assert!(!prom.contains("# EOF") && !prom.contains("# UNIT"), "{prom}");
}

#[test]
fn label_values_are_escaped() {
    // A pin directory may hold any byte but NUL and '/': quotes, backslashes
    // and newlines in it must not break the exposition.
    let f = |s: &mut Samples| s.push(Id::UP, ["filter".into(), "/sys/fs/bpf/a\"b\\c\nd".into()], 1);
    for format in [Format::OpenMetrics, Format::Prometheus] {
        let text = rendered(f, format);
        assert!(text.contains(r#"xdpguard_up{program="filter",pin="/sys/fs/bpf/a\"b\\c\nd"} 1"#), "{text}");
    }
}

#[test]
fn a_family_is_described_once_whatever_the_number_of_programs() {
    let f = |s: &mut Samples| {
        let mut other = Samples::default();
        other.push(Id::UP, ["lb".into(), "/b".into()], 1);
        s.push(Id::UP, ["filter".into(), "/a".into()], 1);
        s.push(Id::DECAP_LOCALS, ["/c".into()], 2);
        s.extend(other);
    };
    let text = rendered(f, Format::Prometheus);
    assert_eq!(text.matches("# TYPE xdpguard_up gauge").count(), 1, "{text}");
    let up = text.find("xdpguard_up{program=\"lb\"").unwrap();
    assert!(up < text.find("xdpguard_decap").unwrap(), "a family's samples stay together: {text}");
}

#[test]
#[should_panic(expected = "labels of xdpguard_up")]
fn a_sample_with_the_wrong_labels_is_a_bug() {
    Samples::default().push(Id::UP, ["filter".into()], 1);
}

#[test]
fn names_and_labels_are_valid_and_unique() {
    let valid = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut seen = std::collections::BTreeSet::new();
    for f in FAMILIES {
        assert!(f.name.starts_with("xdpguard_") && valid(f.name), "{}", f.name);
        assert!(
            !f.name.ends_with("_total") && !f.name.ends_with("_bytes"),
            "{}: suffixes come from type and unit",
            f.name
        );
        assert!(f.help.ends_with('.') && !f.help.contains('\n'), "{}", f.name);
        assert!(seen.insert(f.sample_name()), "{} twice", f.sample_name());
        assert!(f.labels.iter().all(|l| valid(l) && !l.starts_with("__")), "{}", f.name);
        assert!(f.labels.contains(&"pin"), "{}: every sample names its program", f.name);
        assert!(!(f.ty == Type::Gauge && f.bytes), "{}", f.name);
    }
}

/// Every name a scrape can show: families, and the values of `reason`,
/// `event` and `state`.
fn every_scraped_word() -> Vec<String> {
    let mut words: Vec<String> = FAMILIES.iter().map(|f| f.sample_name()).collect();
    words.extend(FilterStats::default().rows().iter().map(|(r, _)| r.to_string()));
    words.extend(LbStats::default().rows().iter().map(|(r, _)| lb::global_family(r).2.to_string()));
    words.extend(["decapsulated", "passed", "active", "draining", "block", "allow"].map(String::from));
    words.extend(crate::NeighbourState::ALL.iter().map(|s| s.to_string()));
    words
}

#[test]
fn the_docs_and_the_readme_name_every_metric_and_reason() {
    let docs = include_str!("mod.rs");
    let readme = include_str!("../../README.md");
    for w in every_scraped_word() {
        assert!(docs.contains(&format!("`{w}`")), "src/metrics/mod.rs's table does not name `{w}`");
    }
    for f in FAMILIES {
        assert!(readme.contains(&format!("`{}`", f.sample_name())), "README.md does not name {}", f.sample_name());
    }
}

#[test]
fn lb_rows_map_to_distinct_samples() {
    let rows = LbStats::default().rows();
    let mut seen = std::collections::BTreeSet::new();
    for (row, _) in &rows {
        let (packets, bytes, label) = lb::global_family(row);
        assert!(packets != bytes);
        assert!(seen.insert((packets, label)), "{row} collides");
    }
    assert_eq!(seen.len(), rows.len());
    assert_eq!(lb::global_family("drop_mtu"), (Id::LB_DROPPED_PACKETS, Id::LB_DROPPED_BYTES, "mtu"));
    assert_eq!(lb::global_family("passed_ttl"), (Id::LB_PASSED_PACKETS, Id::LB_PASSED_BYTES, "ttl"));
    assert_eq!(lb::global_family("tx"), (Id::LB_EVENT_PACKETS, Id::LB_EVENT_BYTES, "tx"));
}

#[test]
fn the_accept_header_chooses_the_format() {
    let prometheus_server = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::from_accept(prometheus_server), Format::OpenMetrics);
    assert_eq!(Format::from_accept("*/*"), Format::Prometheus);
    assert_eq!(Format::from_accept(""), Format::Prometheus);
    assert_eq!(Format::from_accept("text/plain"), Format::Prometheus);
    assert_eq!(Format::from_accept("Application/OpenMetrics-Text"), Format::OpenMetrics);
    assert_eq!(Format::from_accept("application/openmetrics-text; q=0, text/plain"), Format::Prometheus);
}

#[test]
fn a_program_that_cannot_be_read_is_down_and_reported() {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let missing = "/nonexistent/xdpguard-metrics-test";
    let m = Metrics::new().filter(missing).unwrap().on_error(move |e| seen.lock().unwrap().push(e.to_string()));
    let text = m.render(Format::OpenMetrics);
    assert!(text.contains(&format!("xdpguard_up{{program=\"filter\",pin=\"{missing}\"}} 0")), "{text}");
    assert!(!text.contains("xdpguard_filter_packets"), "{text}");
    let errors = errors.lock().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with(&format!("metrics of the filter pinned at {missing}: ")), "{}", errors[0]);
}

#[test]
fn a_pin_given_twice_is_refused() {
    let dir = std::env::temp_dir().join(format!("xdpguard-metrics-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let p = dir.display().to_string();
    let once = || Metrics::new().filter(&dir).unwrap();
    let dotted = format!("{}/./{}/./", dir.parent().unwrap().display(), dir.file_name().unwrap().to_string_lossy());
    for (again, program, label) in [
        (p.clone(), Program::Filter, dir.clone()),
        (format!("{p}/"), Program::Filter, dir.clone()),
        (format!("{p}//"), Program::LoadBalancer, dir.clone()),
        (dotted, Program::Decap, dir.clone()),
        (link.display().to_string(), Program::Filter, link.clone()),
    ] {
        match once().source(program, again.clone().into()) {
            Err(MetricsError::DuplicatePin { pin, first: Program::Filter, second }) => {
                assert_eq!((pin, second), (label, program), "{again}");
            }
            other => panic!("{again}: {other:?}"),
        }
    }
    // A pin not there yet: the same path normalized is still refused.
    let missing = dir.join("not-yet");
    let m = Metrics::new().decap(&missing).unwrap();
    let e = m.filter(format!("{}/", missing.display())).unwrap_err();
    assert!(e.to_string().starts_with(&format!("the pin directory {} is given twice", missing.display())), "{e}");
    // Two pins: both there, each label normalized.
    let m = once().load_balancer(format!("{}/", missing.display())).unwrap();
    let pins: Vec<String> = m.sources().map(|(_, p)| p.display().to_string()).collect();
    assert_eq!(pins, [p.clone(), missing.display().to_string()]);
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_dir_all(&dir);
}
