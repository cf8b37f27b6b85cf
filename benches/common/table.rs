//! Result tables, printed aligned for the terminal and as markdown for
//! BENCHMARKS.md.

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A titled table of strings.
#[derive(Debug, Clone)]
pub struct Table {
    pub title: String,
    pub headers: Vec<(String, Align)>,
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table (notes, caveats).
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[(&str, Align)]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "row width");
        self.rows.push(cells);
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain(std::iter::once(self.headers[c].0.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The table aligned with spaces, for a terminal.
    pub fn aligned(&self) -> String {
        let w = self.widths();
        let cell = |text: &str, c: usize| match self.headers[c].1 {
            Align::Left => format!("{text:<width$}", width = w[c]),
            Align::Right => format!("{text:>width$}", width = w[c]),
        };
        let line = |cells: Vec<String>| cells.join("  ").trim_end().to_string();
        let mut out = format!("{}\n", self.title);
        out += &line(self.headers.iter().enumerate().map(|(c, (h, _))| cell(h, c)).collect());
        out.push('\n');
        out += &line(w.iter().map(|n| "-".repeat(*n)).collect());
        out.push('\n');
        for r in &self.rows {
            out += &line(r.iter().enumerate().map(|(c, t)| cell(t, c)).collect());
            out.push('\n');
        }
        for n in &self.notes {
            out += &format!("  {n}\n");
        }
        out
    }

    /// The table as GitHub markdown, under a `####` heading.
    pub fn markdown(&self) -> String {
        let mut out = format!("#### {}\n\n", self.title);
        out += &format!("| {} |\n", self.headers.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(" | "));
        out += &format!(
            "|{}|\n",
            self.headers
                .iter()
                .map(|(_, a)| if *a == Align::Right { " ---: " } else { " --- " })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out += &format!("{n}\n");
            }
        }
        out
    }
}

/// Prints every table as markdown between markers, so BENCHMARKS.md can be
/// updated from the output.
pub fn print_markdown(preamble: &[String], tables: &[Table]) {
    println!("\n<!-- markdown results: begin -->");
    for line in preamble {
        println!("{line}");
    }
    println!();
    for t in tables {
        println!("{}", t.markdown());
    }
    println!("<!-- markdown results: end -->");
}
