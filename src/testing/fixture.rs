//! Verdict fixtures: a frame in, the action and the frame out expected,
//! run through the real program with `BPF_PROG_TEST_RUN`.
//!
//! A [`Fixture`] is one row: a description, the input frame, the interface
//! it arrives on (for programs whose verdict depends on it, such as the
//! load balancer's FIB lookups), the expected [`XdpAction`], the expected
//! output frame (exactly, unchanged, or checked by a function) and,
//! optionally, which counters it must move. A [`FixtureTable`] runs rows in
//! order against a [`Target`] ([`Filter`], [`LoadBalancer`], [`Decap`]) and
//! reports every failing row, each with a field-by-field diff of the frames
//! ([`diff`](crate::testing::diff)), not just the first.
//!
//! Rows run one after the other on the live program: a row may depend on
//! what earlier rows did (a tracked flow, a counter). [`FixtureTable::run`]
//! returns the row's [`TestRun`], so a later row can be built from an
//! earlier row's output.
//!
//! ```no_run
//! use xdpguard::testing::fixture::{Fixture, FixtureTable};
//! use xdpguard::testing::frame::udp_from;
//! use xdpguard::{Filter, XdpAction};
//!
//! let filter = Filter::builder().load()?;
//! filter.blocklist().insert("203.0.113.0/24".parse()?)?;
//! let mut table = FixtureTable::new(&filter, "my blocklist");
//! table.run(
//!     Fixture::new("a blocked source", udp_from("203.0.113.9".parse()?))
//!         .action(XdpAction::Drop)
//!         .unchanged()
//!         .counts(&["blocked_v4"]),
//! );
//! table.run(
//!     Fixture::new("a clean source", udp_from("192.0.2.9".parse()?))
//!         .action(XdpAction::Pass)
//!         .unchanged()
//!         .counts(&["passed"]),
//! );
//! table.finish(); // panics listing every failed row
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use crate::testing::diff::diff;
use crate::{Counter, Decap, Error, Filter, LoadBalancer, TestRun, XdpAction};

/// A program fixtures run against: anything with a test run and counters.
pub trait Target {
    /// Runs the program on `frame`, as if received on `ingress` (an
    /// interface index; `None`: no ingress, for programs that do not care).
    ///
    /// # Errors
    /// When the kernel refuses the run (see the program's `test_run`).
    fn run_frame(&self, frame: &[u8], ingress: Option<u32>) -> Result<TestRun, Error>;

    /// Its counters, by row name (what [`Fixture::counts`] names).
    ///
    /// # Errors
    /// When the counters cannot be read.
    fn counter_rows(&self) -> Result<Vec<(&'static str, Counter)>, Error>;
}

impl Target for Filter {
    fn run_frame(&self, frame: &[u8], _ingress: Option<u32>) -> Result<TestRun, Error> {
        self.test_run(frame)
    }

    fn counter_rows(&self) -> Result<Vec<(&'static str, Counter)>, Error> {
        Ok(self.stats()?.rows().to_vec())
    }
}

impl Target for LoadBalancer {
    fn run_frame(&self, frame: &[u8], ingress: Option<u32>) -> Result<TestRun, Error> {
        match ingress {
            Some(i) => self.test_run_on(frame, i),
            None => self.test_run(frame),
        }
    }

    fn counter_rows(&self) -> Result<Vec<(&'static str, Counter)>, Error> {
        Ok(self.stats()?.rows())
    }
}

impl Target for Decap {
    fn run_frame(&self, frame: &[u8], _ingress: Option<u32>) -> Result<TestRun, Error> {
        self.test_run(frame)
    }

    fn counter_rows(&self) -> Result<Vec<(&'static str, Counter)>, Error> {
        let s = self.stats()?;
        Ok(vec![("decapsulated", s.decapsulated), ("passed", s.passed)])
    }
}

/// A check of an output frame: `Err` says what is wrong.
pub type Check<'a> = Box<dyn Fn(&[u8]) -> Result<(), String> + 'a>;

/// What the output frame must be.
enum Output<'a> {
    Unchanged,
    Exactly(Vec<u8>),
    Checked(Check<'a>),
}

/// One row: a frame in, what must come out (see the module docs).
#[must_use = "a fixture does nothing until a FixtureTable runs it"]
pub struct Fixture<'a> {
    description: String,
    input: Vec<u8>,
    ingress: Option<u32>,
    actions: Vec<XdpAction>,
    outputs: Vec<Output<'a>>,
    counts: Option<Vec<&'static str>>,
    count_bytes: bool,
}

impl fmt::Debug for Fixture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("description", &self.description)
            .field("input_len", &self.input.len())
            .field("ingress", &self.ingress)
            .field("actions", &self.actions)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl<'a> Fixture<'a> {
    /// A row for `input`, described as `description` in reports. With
    /// nothing else asked, it only checks that the run succeeds.
    pub fn new(description: impl Into<String>, input: impl AsRef<[u8]>) -> Self {
        Fixture {
            description: description.into(),
            input: input.as_ref().to_vec(),
            ingress: None,
            actions: Vec::new(),
            outputs: Vec::new(),
            counts: None,
            count_bytes: true,
        }
    }

    /// Received on the interface of this index (the load balancer's FIB
    /// lookups start there).
    pub fn on(mut self, ifindex: u32) -> Self {
        self.ingress = Some(ifindex);
        self
    }

    /// The expected action.
    pub fn action(mut self, action: XdpAction) -> Self {
        self.actions = vec![action];
        self
    }

    /// Any of these actions (e.g. "anything but `XDP_ABORTED`" for frames
    /// whose verdict a test does not pin down).
    pub fn action_in(mut self, actions: &[XdpAction]) -> Self {
        self.actions = actions.to_vec();
        self
    }

    /// The output frame must equal the input.
    pub fn unchanged(mut self) -> Self {
        self.outputs.push(Output::Unchanged);
        self
    }

    /// The output frame must be exactly `frame` (a failure shows the
    /// fields that differ).
    pub fn output(mut self, frame: impl AsRef<[u8]>) -> Self {
        self.outputs.push(Output::Exactly(frame.as_ref().to_vec()));
        self
    }

    /// The output frame must pass `check` (several checks all must).
    pub fn check(mut self, check: impl Fn(&[u8]) -> Result<(), String> + 'a) -> Self {
        self.outputs.push(Output::Checked(Box::new(check)));
        self
    }

    /// Exactly these counter rows (see [`Target::counter_rows`]) move, each
    /// by one packet of the input's length; every other row stays.
    pub fn counts(mut self, rows: &[&'static str]) -> Self {
        self.counts = Some(rows.to_vec());
        self.count_bytes = true;
        self
    }

    /// Like [`Fixture::counts`], for packets only: for rows that count
    /// the bytes of the frame sent out (which may be longer or shorter).
    pub fn counts_packets(mut self, rows: &[&'static str]) -> Self {
        self.counts = Some(rows.to_vec());
        self.count_bytes = false;
        self
    }

    /// The row's description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The input frame.
    pub fn input(&self) -> &[u8] {
        &self.input
    }
}

/// One failed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The row's index in its table (0-based).
    pub row: usize,
    /// The row's description.
    pub description: String,
    /// What was wrong, one item per problem.
    pub problems: Vec<String>,
}

/// The outcome of a table: rows run, and every row that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The table's name.
    pub name: String,
    /// Rows run.
    pub rows: usize,
    /// The failed rows, in order.
    pub failures: Vec<Failure>,
}

impl Report {
    /// Whether every row passed.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Panics with the report unless every row passed.
    ///
    /// # Panics
    /// When a row failed: the message lists every failed row.
    #[track_caller]
    pub fn assert_ok(&self) {
        if !self.is_ok() {
            panic!("{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(f, "{}: all {} fixtures passed", self.name, self.rows);
        }
        writeln!(f, "{}: {} of {} fixtures failed", self.name, self.failures.len(), self.rows)?;
        for fail in &self.failures {
            writeln!(f, "[{}] {}", fail.row, fail.description)?;
            for p in &fail.problems {
                for (i, line) in p.lines().enumerate() {
                    writeln!(f, "    {}{line}", if i == 0 { "" } else { "  " })?;
                }
            }
        }
        Ok(())
    }
}

/// Runs fixtures in order against one target and collects every failure;
/// [`FixtureTable::finish`] (or dropping it) panics when any row failed.
pub struct FixtureTable<'t, T: Target + ?Sized> {
    target: &'t T,
    report: Report,
    finished: bool,
}

impl<T: Target + ?Sized> fmt::Debug for FixtureTable<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixtureTable").field("report", &self.report).finish_non_exhaustive()
    }
}

impl<'t, T: Target + ?Sized> FixtureTable<'t, T> {
    /// A table called `name` (in reports) running against `target`.
    pub fn new(target: &'t T, name: impl Into<String>) -> Self {
        FixtureTable { target, report: Report { name: name.into(), rows: 0, failures: Vec::new() }, finished: false }
    }

    /// Runs one row now; records what failed. Returns the run (to build
    /// later rows from its output), or `None` when the kernel refused it.
    pub fn run(&mut self, fixture: Fixture<'_>) -> Option<TestRun> {
        let row = self.report.rows;
        self.report.rows += 1;
        let (run, problems) = run_one(self.target, &fixture);
        if !problems.is_empty() {
            self.report.failures.push(Failure { row, description: fixture.description, problems });
        }
        run
    }

    /// Runs every row, in order.
    pub fn run_all<'f>(&mut self, fixtures: impl IntoIterator<Item = Fixture<'f>>) {
        for f in fixtures {
            self.run(f);
        }
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Ends the table, returning its report without panicking.
    pub fn into_report(mut self) -> Report {
        self.finished = true;
        std::mem::replace(&mut self.report, Report { name: String::new(), rows: 0, failures: Vec::new() })
    }

    /// Ends the table.
    ///
    /// # Panics
    /// When a row failed: the message lists every failed row.
    #[track_caller]
    pub fn finish(self) {
        self.into_report().assert_ok();
    }
}

impl<T: Target + ?Sized> Drop for FixtureTable<'_, T> {
    fn drop(&mut self) {
        if !self.finished && !self.report.is_ok() && !std::thread::panicking() {
            panic!("{}", self.report);
        }
    }
}

/// Runs `fixtures` in order against `target` and reports every failure.
pub fn run_table<'f, T: Target + ?Sized>(
    target: &T,
    name: impl Into<String>,
    fixtures: impl IntoIterator<Item = Fixture<'f>>,
) -> Report {
    let mut t = FixtureTable::new(target, name);
    t.run_all(fixtures);
    t.into_report()
}

fn run_one<T: Target + ?Sized>(target: &T, fx: &Fixture<'_>) -> (Option<TestRun>, Vec<String>) {
    let mut problems = Vec::new();
    let before = match fx.counts {
        Some(_) => match target.counter_rows() {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("reading the counters before the run failed: {e}"));
                None
            }
        },
        None => None,
    };
    let run = match target.run_frame(&fx.input, fx.ingress) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("the test run failed: {e}"));
            return (None, problems);
        }
    };
    match fx.actions.as_slice() {
        [] => {}
        [want] if run.action != *want => problems.push(format!("action: want {want:?}, got {:?}", run.action)),
        any if !any.contains(&run.action) => {
            problems.push(format!("action: want one of {any:?}, got {:?}", run.action))
        }
        _ => {}
    }
    for out in &fx.outputs {
        match out {
            Output::Unchanged => {
                if run.frame != fx.input {
                    problems.push(format!(
                        "the frame must come back unchanged; it differs:\n{}",
                        diff(&fx.input, &run.frame)
                    ));
                }
            }
            Output::Exactly(want) => {
                if &run.frame != want {
                    problems.push(format!("output frame differs:\n{}", diff(want, &run.frame)));
                }
            }
            Output::Checked(check) => {
                if let Err(why) = check(&run.frame) {
                    problems.push(format!("output frame: {why}"));
                }
            }
        }
    }
    if let (Some(rows), Some(before)) = (&fx.counts, before) {
        match target.counter_rows() {
            Ok(after) => {
                let one = Counter { packets: 1, bytes: fx.input.len() as u64 };
                for ((name, b), (_, a)) in before.iter().zip(&after) {
                    let mut moved = *a - *b;
                    let want = if rows.contains(name) { one } else { Counter::default() };
                    if !fx.count_bytes && moved.packets == want.packets && (moved.bytes > 0) == (want.bytes > 0) {
                        moved.bytes = want.bytes;
                    }
                    if moved != want {
                        problems.push(format!(
                            "counter {name} moved by {} packets / {} bytes, want {} / {} (rows that must move: {rows:?})",
                            moved.packets, moved.bytes, want.packets, want.bytes
                        ));
                    }
                }
                for r in rows {
                    if !after.iter().any(|(n, _)| n == r) {
                        problems.push(format!("no counter row {r}"));
                    }
                }
            }
            Err(e) => problems.push(format!("reading the counters after the run failed: {e}")),
        }
    }
    (Some(run), problems)
}
