//! The benchmark's report: markdown tables (medians with min and max, and
//! the ratios the targets are stated in) and a PNG bar chart, written to
//! `results/`; a full run also replaces the tables of docs/performance.md.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::common::{Cluster, Load, Outcome, Sample};
use crate::systems::{System, Workload};
use crate::Row;

pub struct Report {
    pub args: String,
    pub load: Load,
    pub rows: Vec<Row>,
    /// Each family's version and configuration, or why it did not install.
    pub families: Vec<(String, Outcome<String>)>,
    /// Worker-pool RSS with 100 busy handlers, in MiB.
    pub memory: Option<Outcome<f64>>,
}

/// The page the tables of a full run go to, and its generated part, which
/// lies between these two lines.
const TABLES_PAGE: &str = "docs/performance.md";
const TABLES_BEGIN: &str = "<!-- bench:begin (written by `make bench`) -->";
const TABLES_END: &str = "<!-- bench:end -->";

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

impl Row {
    fn ok(&self) -> Vec<Sample> {
        self.samples
            .iter()
            .filter_map(|s| s.as_ref().ok().copied())
            .collect()
    }

    fn median_of(&self, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        median(self.ok().iter().map(f).collect())
    }

    fn rate(&self) -> Option<f64> {
        self.median_of(|s| s.rate)
    }

    fn bytes(&self) -> Option<f64> {
        median(
            self.ok()
                .iter()
                .filter_map(|s| s.bytes.map(|b| b as f64))
                .collect(),
        )
    }

    fn range(&self, f: impl Fn(&Sample) -> f64) -> String {
        let v: Vec<f64> = self.ok().iter().map(f).collect();
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(0f64, f64::max);
        if v.is_empty() {
            String::new()
        } else {
            format!("{}-{}", thousands(lo), thousands(hi))
        }
    }

    /// Rounds whose drain was stopped at `Load::drain_seconds`: the rate is
    /// of the jobs they finished, said beside the figure.
    fn stopped(&self, load: &Load) -> Option<String> {
        let finished: Vec<f64> = self
            .ok()
            .iter()
            .filter_map(|s| s.finished.map(|n| n as f64))
            .collect();
        let fewest = finished.iter().copied().reduce(f64::min)?;
        Some(format!(
            "stopped at {} s in {} of {} rounds, rate of the jobs finished by then (at least {} of {})",
            load.drain_seconds,
            finished.len(),
            self.samples.len(),
            thousands(fewest),
            thousands(load.jobs as f64)
        ))
    }

    /// What a table says beside a row's figures: stopped drains, failed rounds.
    fn notes(&self, load: &Load) -> Option<String> {
        let notes: Vec<String> = [self.stopped(load), self.failures()]
            .into_iter()
            .flatten()
            .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }

    /// Why rounds failed, if any did: shown beside (or instead of) the figure.
    fn failures(&self) -> Option<String> {
        let errors: Vec<&String> = self
            .samples
            .iter()
            .filter_map(|s| s.as_ref().err())
            .collect();
        let first = errors.first()?;
        Some(format!(
            "{} of {} rounds failed: {}",
            errors.len(),
            self.samples.len(),
            first.replace('|', "/")
        ))
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * a / b),
        _ => "-".into(),
    }
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1} MiB", b / 1048576.0))
}

/// What the machine is: CPU, cores, memory.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1048576.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB")
}

impl Report {
    fn rows_of(&self, w: Workload) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.workload == w)
    }

    fn find(&self, w: Workload, name: &str) -> Option<&Row> {
        self.rows_of(w).find(|r| r.system.name() == name)
    }

    fn rate_of(&self, w: Workload, name: &str) -> Option<f64> {
        self.find(w, name).and_then(Row::rate)
    }

    /// The rate table of a workload with ratio columns against `baselines`
    /// (column title, system name in the same workload).
    fn rate_table(&self, out: &mut String, w: Workload, baselines: &[(&str, &str)]) {
        if self.rows_of(w).next().is_none() {
            return;
        }
        let _ = writeln!(out, "\n**{}**\n", w.title(&self.load));
        let mut head = "| system | jobs/s | min-max |".to_string();
        let mut rule = "|---|---:|---:|".to_string();
        for (title, _) in baselines {
            let _ = write!(head, " {title} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for r in self.rows_of(w) {
            let rate = r.rate();
            let mut line = format!(
                "| {} | {} | {} |",
                r.system.name(),
                rate.map_or("-".into(), thousands),
                r.range(|s| s.rate)
            );
            for (_, base) in baselines {
                let _ = write!(line, " {} |", ratio(rate, self.rate_of(w, base)));
            }
            if let Some(f) = r.notes(&self.load) {
                let _ = write!(line, " {f} |");
            }
            let _ = writeln!(out, "{line}");
        }
    }

    fn latency_table(&self, out: &mut String) {
        let w = Workload::Latency;
        if self.rows_of(w).next().is_none() {
            return;
        }
        let _ = writeln!(
            out,
            "\n**{}** (median of the rounds' percentiles)\n\n| system | p50 | p99 | max |\n|---|---:|---:|---:|",
            w.title(&self.load)
        );
        for r in self.rows_of(w) {
            let ms =
                |f: fn(&Sample) -> f64| r.median_of(f).map_or("-".into(), |v| format!("{v:.2} ms"));
            let mut line = format!(
                "| {} | {} | {} | {} |",
                r.system.name(),
                ms(|s| s.p50),
                ms(|s| s.p99),
                ms(|s| s.max)
            );
            if let Some(f) = r.notes(&self.load) {
                let _ = write!(line, " {f} |");
            }
            let _ = writeln!(out, "{line}");
        }
    }

    fn vacuum_table(&self, out: &mut String) {
        let w = Workload::DrainVacuumBlocked;
        if self.rows_of(w).next().is_none() {
            return;
        }
        let _ = writeln!(
            out,
            "\n**{}**\n\n| system | jobs/s | min-max | vs its own drain | tables after the drain: plain, vacuum blocked |\n|---|---:|---:|---:|---:|",
            w.title(&self.load)
        );
        for r in self.rows_of(w) {
            let plain = self.find(Workload::Drain, &r.system.name());
            let mut line = format!(
                "| {} | {} | {} | {} | {} -> {} |",
                r.system.name(),
                r.rate().map_or("-".into(), thousands),
                r.range(|s| s.rate),
                ratio(r.rate(), plain.and_then(Row::rate)),
                mib(plain.and_then(Row::bytes)),
                mib(r.bytes()),
            );
            if let Some(f) = r.notes(&self.load) {
                let _ = write!(line, " {f} |");
            }
            let _ = writeln!(out, "{line}");
        }
    }

    fn keyed_table(&self, out: &mut String) {
        let w = Workload::KeyedDrain;
        if self.rows_of(w).next().is_none() {
            return;
        }
        let _ = writeln!(
            out,
            "\n**{}**\n\n| system | jobs/s | min-max | vs the same pool without keys (a fair queue: without fairness) |\n|---|---:|---:|---:|",
            w.title(&self.load)
        );
        for r in self.rows_of(w) {
            // The same pool (handlers, prefetch) without keys, measured
            // beside it in this workload (else in the plain drain).
            let plain = match &r.system {
                System::Commitq(c) => {
                    let name = c.without_keys().name();
                    self.rate_of(w, &name)
                        .or_else(|| self.rate_of(Workload::Drain, &name))
                }
                _ => None,
            };
            let mut line = format!(
                "| {} | {} | {} | {} |",
                r.system.name(),
                r.rate().map_or("-".into(), thousands),
                r.range(|s| s.rate),
                ratio(r.rate(), plain)
            );
            if let Some(f) = r.failures() {
                let _ = write!(line, " {f} |");
            }
            let _ = writeln!(out, "{line}");
        }
    }

    async fn markdown(&self, cluster: &Cluster, stamp: &str, chart: Option<&str>) -> String {
        let c = commitq_tests::connect(&cluster.kv("postgres")).await;
        let mut settings = Vec::new();
        for s in [
            "server_version",
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "max_wal_size",
        ] {
            if let Ok(row) = c.query_one(&format!("SHOW {s}"), &[]).await {
                settings.push(format!("{s} {}", row.get::<_, String>(0)));
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run of {stamp} on {}; PostgreSQL on the project-local cluster ({}); every system over TCP on loopback; {}.\n",
            machine(),
            settings.join(", "),
            self.args
        );
        let _ = writeln!(out, "| system | version and configuration |\n|---|---|");
        for (family, prepared) in &self.families {
            let text = match prepared {
                Ok(v) => v.clone(),
                Err(e) => format!("not measured: {e}"),
            };
            let _ = writeln!(out, "| {family} | {} |", text.replace('|', "/"));
        }
        if let Some(chart) = chart {
            let _ = writeln!(out, "\n![benchmark chart]({chart})");
        }
        let raw_insert = ("vs raw INSERT", "raw INSERT");
        self.rate_table(
            &mut out,
            Workload::Bulk,
            &[
                raw_insert,
                (
                    "vs raw INSERT per core",
                    crate::systems::raw::PARALLEL_INSERT,
                ),
            ],
        );
        self.rate_table(
            &mut out,
            Workload::Drain,
            &[
                ("vs raw claim-100-and-DELETE", "raw claim-100-and-DELETE"),
                ("vs pgmq", "pgmq (read 100, delete)"),
            ],
        );
        self.rate_table(
            &mut out,
            Workload::Single,
            &[raw_insert, ("vs PgQ", "PgQ (one consumer, whole batches)")],
        );
        self.latency_table(&mut out);
        self.vacuum_table(&mut out);
        self.keyed_table(&mut out);
        if let Some(m) = &self.memory {
            let _ = writeln!(
                out,
                "\nWorker process memory with 100 busy handlers of the commitq crate (RSS of the benchmark process): {}.",
                match m {
                    Ok(mib) => format!("{mib:.1} MiB"),
                    Err(e) => format!("not measured: {e}"),
                }
            );
        }
        out
    }

    /// Write `results/bench-<stamp>.{md,png}` and `results/latest.{md,png}`,
    /// and, for a full run unless `tables_page` is false, the tables of
    /// docs/performance.md.
    /// A partial run (quick, or some systems only) writes to `results/tmp/`,
    /// which is not kept in the repository.
    pub async fn write(
        &self,
        cluster: &Cluster,
        full_run: bool,
        tables_page: bool,
    ) -> Result<(), String> {
        let project = crate::project_dir();
        let results = match full_run {
            true => project.join("results"),
            false => project.join("results/tmp"),
        };
        std::fs::create_dir_all(&results).map_err(|e| format!("{}: {e}", results.display()))?;
        let now = chrono::Utc::now();
        let stamp = now.format("%Y-%m-%d %H:%M UTC").to_string();
        let file_stamp = now.format("%Y-%m-%d-%H%M").to_string();
        let png = results.join(format!("bench-{file_stamp}.png"));
        let chart = match self.chart(&png) {
            Ok(()) => {
                let _ = std::fs::copy(&png, results.join("latest.png"));
                // As seen from docs/performance.md.
                Some("../results/latest.png")
            }
            Err(e) => {
                eprintln!("no chart: {e}");
                None
            }
        };
        let md = self.markdown(cluster, &stamp, chart).await;
        for name in [format!("bench-{file_stamp}.md"), "latest.md".into()] {
            // The copies in results/ sit next to the chart.
            let text = md.replace("](../results/", "](");
            std::fs::write(results.join(&name), text).map_err(|e| format!("{name}: {e}"))?;
        }
        println!("{md}");
        eprintln!("wrote {}", results.join("latest.md").display());
        if full_run && tables_page {
            replace_tables(&project.join(TABLES_PAGE), &md)?;
            eprintln!("updated the tables of {TABLES_PAGE}");
        }
        Ok(())
    }

    /// One panel per workload, a bar per system.
    fn chart(&self, path: &Path) -> Result<(), String> {
        let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
            .map_err(|e| format!("DejaVuSans.ttf (apt-get install fonts-dejavu-core): {e}"))?;
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(font.into_boxed_slice()),
        )
        .map_err(|_| "the font did not load".to_string())?;
        let panels: Vec<(Workload, &str)> = [
            (Workload::Bulk, "jobs/s"),
            (Workload::Drain, "jobs/s"),
            (Workload::Single, "jobs/s"),
            (Workload::Latency, "ms"),
            (Workload::DrainVacuumBlocked, "jobs/s"),
            (Workload::KeyedDrain, "jobs/s"),
        ]
        .into_iter()
        .filter(|(w, _)| self.rows_of(*w).next().is_some())
        .collect();
        let rows_per_panel = panels
            .iter()
            .map(|(w, _)| self.rows_of(*w).count())
            .max()
            .unwrap_or(1) as u32;
        let panel_h = 70 + 44 * rows_per_panel;
        let lines = panels.len().div_ceil(2) as u32;
        let root = BitMapBackend::new(path, (1600, panel_h * lines)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((lines as usize, 2));
        for ((w, unit), area) in panels.iter().zip(areas.iter()) {
            self.panel(area, *w, unit).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        w: Workload,
        unit: &str,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let title = ("sans-serif", 20).into_font();
        let label = ("sans-serif", 15).into_font();
        let (width, _) = area.dim_in_pixel();
        area.draw(&Text::new(w.title(&self.load), (16, 12), title))?;
        let rows: Vec<&Row> = self.rows_of(w).collect();
        // Latency shows p50 and p99; everything else its median rate.
        let values: Vec<(f64, Option<f64>)> = rows
            .iter()
            .map(|r| match w {
                Workload::Latency => (
                    r.median_of(|s| s.p50).unwrap_or(0.0),
                    r.median_of(|s| s.p99),
                ),
                _ => (r.rate().unwrap_or(0.0), None),
            })
            .collect();
        // One bar far beyond the rest (PgQ's batch drain) would flatten them
        // all: in a panel of four or more, the scale then stops above the
        // second, and that bar is cut.
        let mut tops: Vec<f64> = values
            .iter()
            .map(|(a, b)| b.unwrap_or(*a).max(*a))
            .collect();
        tops.sort_by(|a, b| b.total_cmp(a));
        let top = match tops.as_slice() {
            [first, second, _, _, ..] if *first > 3.0 * second && *second > 0.0 => second * 1.25,
            [first, ..] => *first,
            [] => 0.0,
        }
        .max(1e-9);
        let full = (width as f64 - 40.0).max(10.0);
        for (i, (r, (v, v99))) in rows.iter().zip(&values).enumerate() {
            let y = 48 + 44 * i as i32;
            let color = if r.system.family() == "commitq" {
                RGBColor(214, 96, 39)
            } else if r.system.family() == "raw SQL" {
                RGBColor(150, 150, 150)
            } else {
                RGBColor(60, 110, 180)
            };
            let text = match (w, v99) {
                (Workload::Latency, Some(p99)) => {
                    format!("{}: p50 {v:.2} ms, p99 {p99:.2} ms", r.system.name())
                }
                _ if r.rate().is_none() => format!("{}: not measured", r.system.name()),
                _ if *v > top => format!("{}: {} {unit} (bar cut)", r.system.name(), thousands(*v)),
                _ => format!("{}: {} {unit}", r.system.name(), thousands(*v)),
            };
            area.draw(&Text::new(text, (16, y), label.clone()))?;
            let bar = |x: f64| 16 + (full * x.min(top) / top) as i32;
            area.draw(&Rectangle::new(
                [(16, y + 19), (bar(*v), y + 31)],
                color.filled(),
            ))?;
            if let Some(p99) = v99 {
                area.draw(&Rectangle::new(
                    [(16, y + 33), (bar(*p99), y + 38)],
                    color.mix(0.45).filled(),
                ))?;
            }
        }
        Ok(())
    }
}

/// Replace the page's lines between the bench markers with `md`.
fn replace_tables(path: &Path, md: &str) -> Result<(), String> {
    let page = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (Some(a), Some(b)) = (page.find(TABLES_BEGIN), page.find(TABLES_END)) else {
        return Err(format!(
            "{}: no {TABLES_BEGIN} ... {TABLES_END} markers",
            path.display()
        ));
    };
    let updated = format!("{}{TABLES_BEGIN}\n{md}{}", &page[..a], &page[b..]);
    std::fs::write(path, updated).map_err(|e| format!("{}: {e}", path.display()))
}
