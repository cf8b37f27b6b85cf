//! `xdpguard metrics`: a Prometheus exporter for pinned filters, load
//! balancers and decapsulators (the library's `xdpguard::metrics`), served
//! over HTTP by tiny_http, one request at a time (a scrape reads a few
//! maps: there is nothing to gain from threads, and a single thread keeps
//! two scrapes from reading a program at once).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use xdpguard::metrics::{Format, Metrics, MetricsError, Program};

/// The exporter's arguments.
#[derive(Args)]
pub struct MetricsArgs {
    /// Address and port to serve on (`/metrics`). 9435 is free in
    /// Prometheus' list of default exporter ports.
    #[arg(long, default_value = "127.0.0.1:9435")]
    listen: SocketAddr,
    /// A filter's pin directory (repeatable).
    #[arg(long = "filter", value_name = "PIN")]
    filters: Vec<PathBuf>,
    /// A load balancer's pin directory (repeatable).
    #[arg(long = "lb", value_name = "PIN")]
    lbs: Vec<PathBuf>,
    /// A decapsulator's pin directory (repeatable).
    #[arg(long = "decap", value_name = "PIN")]
    decaps: Vec<PathBuf>,
    /// Listen inside this named network namespace (/run/netns/NAME),
    /// keeping bpffs visible (unlike `ip netns exec`).
    #[arg(long)]
    netns: Option<String>,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// Nothing to export.
    #[error("no program given: name at least one pin directory with --filter PIN, --lb PIN or --decap PIN")]
    NoPrograms,
    /// A pin directory given as one kind of program holds another.
    #[error(
        "{} (given with {given}) holds an xdpguard {holds}, not a {program}: give it with {flag} {}; \
         nothing is served",
        pin.display(),
        pin.display()
    )]
    WrongKind {
        /// The directory.
        pin: PathBuf,
        /// The flag it was given with, e.g. `--lb`.
        given: &'static str,
        /// What that flag names, e.g. `load balancer`.
        program: Program,
        /// What the directory holds, e.g. `filter`.
        holds: Program,
        /// The flag for what it holds, e.g. `--filter`.
        flag: &'static str,
    },
    /// Another process listens on the address.
    #[error(
        "cannot listen on {addr}: the address is in use (another exporter? `ss -ltnp 'sport = :{}'` shows \
         which process); stop it or choose another address with --listen",
        addr.port()
    )]
    AddressInUse {
        /// The address asked for.
        addr: SocketAddr,
        /// The kernel's refusal.
        #[source]
        source: io::Error,
    },
    /// Binding failed otherwise (an address this host does not have, a
    /// privileged port without the capability).
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The kernel's refusal.
        error: io::Error,
    },
    /// The HTTP server could not start on the bound socket.
    #[error("starting the HTTP server on {addr}: {message}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// tiny_http's error (it boxes them).
        message: String,
    },
}

/// Serves until killed; returns only when it cannot start.
pub fn serve(args: MetricsArgs) -> crate::common::Result<()> {
    let mut metrics = Metrics::new();
    for p in args.filters {
        metrics = metrics.filter(p)?;
    }
    for p in args.lbs {
        metrics = metrics.load_balancer(p)?;
    }
    for p in args.decaps {
        metrics = metrics.decap(p)?;
    }
    let log = Arc::new(Mutex::new(DownLog::default()));
    let seen = log.clone();
    let metrics = metrics.on_error(move |e| {
        if let Some(line) = seen.lock().unwrap_or_else(|p| p.into_inner()).down(e) {
            eprintln!("{line}");
        }
    });
    if metrics.sources().next().is_none() {
        return Err(ExporterError::NoPrograms.into());
    }
    for (program, pin) in metrics.sources() {
        check_kind(program, pin)?;
    }
    if let Some(name) = &args.netns {
        crate::common::enter_netns(name)?;
    }
    let addr = args.listen;
    let listener = TcpListener::bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => ExporterError::AddressInUse { addr, source },
        _ => ExporterError::Listen { addr, error: source },
    })?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| ExporterError::Http { addr, message: e.to_string() })?;
    for (program, pin) in metrics.sources() {
        eprintln!("exporting the {program} pinned at {}", pin.display());
        // Served all the same (it may be attached later), but a typo
        // would otherwise only show as metrics that never appear.
        if !pin.exists() {
            eprintln!(
                "warning: nothing is pinned at {} yet: its metrics are left out until a {program} is (a mistyped \
                 pin directory? `ls /sys/fs/bpf` shows them)",
                pin.display()
            );
        }
    }
    println!("serving metrics on http://{addr}/metrics");
    for request in server.incoming_requests() {
        let response = match (request.method(), path(request.url())) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                let accept =
                    request.headers().iter().find(|h| h.field.equiv("Accept")).map(|h| h.value.as_str()).unwrap_or("");
                let format = Format::from_accept(accept);
                let body = metrics.render(format);
                for line in log.lock().unwrap_or_else(|p| p.into_inner()).scraped() {
                    eprintln!("{line}");
                }
                text(200, body, format.content_type())
            }
            (tiny_http::Method::Get, "/") => text(200, "xdpguard exporter: metrics at /metrics\n".into(), "text/plain"),
            _ => text(404, "not found: metrics are at /metrics\n".into(), "text/plain"),
        };
        if let Err(e) = request.respond(response) {
            eprintln!("warning: answering a scrape: {e}");
        }
    }
    Ok(())
}

/// The exporter's flag for a kind of program.
fn flag(program: Program) -> &'static str {
    match program {
        Program::Filter => "--filter",
        Program::LoadBalancer => "--lb",
        Program::Decap => "--decap",
    }
}

/// Whether `pin` opens as a `program` (and which kind it holds otherwise).
fn open_as(program: Program, pin: &std::path::Path) -> Result<(), xdpguard::Error> {
    match program {
        Program::Filter => xdpguard::Filter::open_pinned(pin).map(drop),
        Program::LoadBalancer => xdpguard::LoadBalancer::open_pinned(pin).map(drop),
        Program::Decap => xdpguard::Decap::open_pinned(pin).map(drop),
    }
}

/// A pin directory given with the flag of one kind of program that holds
/// another is refused before anything is served: its metrics would never
/// appear, and each scrape would only warn. A directory not there yet, or
/// one that cannot be opened for another reason, is served all the same
/// (the program may come later; scrapes say what is wrong).
fn check_kind(program: Program, pin: &std::path::Path) -> Result<(), ExporterError> {
    if !pin.exists() {
        return Ok(());
    }
    let Err(xdpguard::Error::Pin(xdpguard::PinError::NotOurs { .. })) = open_as(program, pin) else { return Ok(()) };
    let others = [Program::Filter, Program::LoadBalancer, Program::Decap];
    match others.into_iter().find(|&other| other != program && open_as(other, pin).is_ok()) {
        Some(holds) => Err(ExporterError::WrongKind {
            pin: pin.to_owned(),
            given: flag(program),
            program,
            holds,
            flag: flag(holds),
        }),
        None => Ok(()),
    }
}

fn text(code: u16, body: String, content_type: &str) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("an ASCII header");
    tiny_http::Response::from_string(body).with_status_code(code).with_header(header)
}

/// A request target's path: `/metrics?x=1` (a scraper's `params`) is
/// `/metrics`.
fn path(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// What the exporter logs about programs that cannot be read: a line when
/// one goes down (and at the first scrape, for one down from the start)
/// and when it is back up, not one a scrape. The shipped unit passes
/// `--lb` by default, so a host without a load balancer would otherwise
/// log a warning every scrape (every 15 s: 5,760 lines a day) for as long
/// as it runs.
#[derive(Default)]
struct DownLog {
    /// Down at the last scrape, with why (a change of reason is logged).
    down: HashMap<(Program, PathBuf), String>,
    /// Down at this scrape so far.
    now: HashSet<(Program, PathBuf)>,
}

impl DownLog {
    /// A program could not be read at this scrape: the line to log, if its
    /// state (or why it is down) changed.
    fn down(&mut self, e: &MetricsError) -> Option<String> {
        let key = match e {
            MetricsError::Read { program, pin, .. } => (*program, pin.clone()),
            _ => return Some(format!("warning: {e}")),
        };
        self.now.insert(key.clone());
        let why = e.to_string();
        if self.down.get(&key) == Some(&why) {
            return None;
        }
        self.down.insert(key, why.clone());
        Some(format!("warning: {why} (logged again once it changes or the program can be read)"))
    }

    /// The scrape is over: a line for each program down at the last scrape
    /// and read at this one.
    fn scraped(&mut self) -> Vec<String> {
        let now = std::mem::take(&mut self.now);
        let mut up: Vec<(Program, PathBuf)> = self.down.keys().filter(|k| !now.contains(*k)).cloned().collect();
        up.sort_by(|a, b| a.1.cmp(&b.1));
        up.into_iter()
            .map(|(program, pin)| {
                self.down.remove(&(program, pin.clone()));
                format!("the {program} pinned at {} can be read again", pin.display())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(program: Program, pin: &str, why: &str) -> MetricsError {
        MetricsError::Read {
            program,
            pin: pin.into(),
            error: Box::new(xdpguard::Error::from(xdpguard::PinError::BpffsNotMounted { path: why.into() })),
        }
    }

    #[test]
    fn a_program_down_is_logged_when_it_goes_down_and_when_it_is_back() {
        let mut log = DownLog::default();
        let lb = down(Program::LoadBalancer, "/sys/fs/bpf/lb", "/a");
        let f = down(Program::Filter, "/sys/fs/bpf/f", "/a");
        // The first scrape: logged once each.
        assert!(log.down(&lb).unwrap().contains("/sys/fs/bpf/lb"));
        assert!(log.down(&f).is_some());
        assert!(log.scraped().is_empty());
        // Down at every later scrape, for the same reason: silent.
        for _ in 0..100 {
            assert_eq!(log.down(&lb), None);
            assert_eq!(log.down(&f), None);
            assert!(log.scraped().is_empty());
        }
        // Another reason: logged; the filter back up: logged once.
        assert!(log.down(&down(Program::LoadBalancer, "/sys/fs/bpf/lb", "/b")).is_some());
        assert_eq!(log.scraped(), ["the filter pinned at /sys/fs/bpf/f can be read again"]);
        assert_eq!(log.down(&down(Program::LoadBalancer, "/sys/fs/bpf/lb", "/b")), None);
        assert!(log.scraped().is_empty(), "said once");
        // Down again: logged again.
        assert!(log.down(&f).is_some());
    }

    #[test]
    fn the_path_leaves_out_the_query() {
        assert_eq!(path("/metrics"), "/metrics");
        assert_eq!(path("/metrics?x=1"), "/metrics");
        assert_eq!(path("/metrics?"), "/metrics");
        assert_eq!(path("/metrics#top"), "/metrics");
        assert_eq!(path("/?a=b"), "/");
        assert_eq!(path("/metricsx"), "/metricsx");
    }
}
