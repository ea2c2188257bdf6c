//! The lab's numbers and how they are written: `results.json` (everything, raw),
//! `README.md` (the summary table, run parameters, machine load) and hand-written
//! SVG charts (throughput, commit latency, end-to-end latency CDF, C's stream around
//! the kill). No plotting crate: the charts are a few rectangles and polylines.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::workload::{quantile, Snapshot};
use super::{Impl, KillTimes, LabOptions};

/// A latency sample summarised, ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Sorts `sample` and summarises it.
pub fn percentiles(sample: &mut [f64]) -> Percentiles {
    sample.sort_by(f64::total_cmp);
    Percentiles {
        p50: quantile(sample, 0.5),
        p99: quantile(sample, 0.99),
        max: sample.last().copied().unwrap_or(0.0),
    }
}

/// What the kill of B did to one implementation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KillResult {
    /// B SIGKILLed, s since the start.
    pub killed_at_s: Option<f64>,
    /// B started again, s since the start.
    pub restarted_at_s: Option<f64>,
    /// The new B consuming again (after its own recovery), s since the start.
    pub ready_at_s: Option<f64>,
    /// Kill → C receiving at half its pre-kill rate again, counted from B's restart
    /// on (so at least the pause), s; none: not before A stopped.
    pub recovery_s: Option<f64>,
    /// Longest time C received nothing while A was placing orders, s.
    pub longest_gap_s: f64,
    /// Oldest Postgres prepared transaction seen in A's or B's database, s (rows it
    /// wrote stay locked that long; only 2PC prepares).
    pub max_prepared_age_s: f64,
    /// Prepared transactions left once everything settled.
    pub prepared_after_drain: i64,
    /// Width of a bin of `c_per_bin`, s.
    pub bin_s: f64,
    /// Deliveries at C per bin, from the start.
    pub c_per_bin: Vec<u32>,
}

/// One implementation's numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImplResult {
    /// Which one.
    pub implementation: Option<Impl>,
    /// Its name in the report.
    pub title: String,
    /// Does it promise exactly-once effects?
    pub atomic: bool,
    /// Delivery at least once, consumers dedupe by order id.
    pub consumer_dedups: bool,
    /// Why it could not be measured.
    pub error: Option<String>,
    /// Orders A committed.
    pub committed: usize,
    /// Orders whose transaction failed.
    pub failed: u64,
    /// How long A placed orders, s.
    pub a_seconds: f64,
    /// Committed orders per second.
    pub throughput: f64,
    /// A's commit latency, ms.
    pub commit_ms: Percentiles,
    /// Creation → C's first receipt, ms.
    pub e2e_ms: Percentiles,
    /// End-to-end CDF: (ms, fraction of orders received by then), downsampled.
    pub e2e_cdf: Vec<[f64; 2]>,
    /// Deliveries at C.
    pub deliveries: usize,
    /// Distinct orders C received.
    pub distinct: usize,
    /// Orders C received more than once.
    pub duplicate_orders: usize,
    /// Deliveries beyond the first, summed.
    pub extra_deliveries: usize,
    /// Duplicates C would apply: `duplicate_orders`, unless the implementation's
    /// consumers dedupe by order id (then 0 by that check).
    pub duplicates_applied: usize,
    /// Committed orders C never received.
    pub losses: usize,
    /// A few lost order ids, for a post-mortem.
    pub lost_sample: Vec<String>,
    /// Orders C received that A does not count as committed.
    pub unexpected: usize,
    /// The kill scenario.
    pub kill: KillResult,
}

impl ImplResult {
    /// An implementation that could not be measured.
    pub fn not_measured(imp: Impl, error: String) -> Self {
        Self {
            implementation: Some(imp),
            title: imp.title().to_owned(),
            atomic: imp.atomic(),
            consumer_dedups: imp.consumer_dedups(),
            error: Some(error),
            ..Self::default()
        }
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("{}: FAILED: {e}", self.title);
        }
        format!(
            "{}: {} orders, {:.0}/s, commit p50 {:.2} ms p99 {:.2} ms, e2e p50 {:.1} ms p99 {:.1} ms, \
             {} duplicated ({} applied), {} lost, recovery {}, longest gap {:.2} s",
            self.title,
            self.committed,
            self.throughput,
            self.commit_ms.p50,
            self.commit_ms.p99,
            self.e2e_ms.p50,
            self.e2e_ms.p99,
            self.duplicate_orders,
            self.duplicates_applied,
            self.losses,
            fmt_opt_s(self.kill.recovery_s),
            self.kill.longest_gap_s
        )
    }
}

fn fmt_opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s"))
}

/// Width of the bins of C's stream.
const BIN_S: f64 = 0.25;
/// Points of the downsampled CDF.
const CDF_POINTS: usize = 80;

/// Computes an implementation's numbers from what A and C recorded.
pub fn measure(
    imp: Impl,
    s: &Snapshot,
    times: KillTimes,
    opts: &LabOptions,
    kill: KillResult,
) -> ImplResult {
    let committed: HashSet<&String> = s.committed.iter().collect();
    let lost: Vec<&String> = s
        .committed
        .iter()
        .filter(|id| !s.seen.contains_key(*id))
        .collect();
    let duplicate_orders = s.seen.values().filter(|&&n| n > 1).count();
    let extra_deliveries = s
        .seen
        .values()
        .map(|&n| (n as usize).saturating_sub(1))
        .sum();
    let mut e2e = s.e2e_ms.clone();
    let e2e_ms = percentiles(&mut e2e);
    let e2e_cdf = (0..CDF_POINTS)
        .filter(|_| !e2e.is_empty())
        .map(|i| {
            let q = i as f64 / (CDF_POINTS - 1) as f64;
            [quantile(&e2e, q), q]
        })
        .collect();
    let mut commit = s.commit_ms.clone();
    let mut arrivals = s.arrivals.clone();
    arrivals.sort_by(f64::total_cmp);
    let a_seconds = times.a_end.max(1e-3);
    ImplResult {
        implementation: Some(imp),
        title: imp.title().to_owned(),
        atomic: imp.atomic(),
        consumer_dedups: imp.consumer_dedups(),
        error: None,
        committed: s.committed.len(),
        failed: s.failed,
        a_seconds,
        throughput: s.committed.len() as f64 / a_seconds,
        commit_ms: percentiles(&mut commit),
        e2e_ms,
        e2e_cdf,
        deliveries: s.arrivals.len(),
        distinct: s.seen.len(),
        duplicate_orders,
        extra_deliveries,
        duplicates_applied: if imp.consumer_dedups() {
            0
        } else {
            duplicate_orders
        },
        losses: lost.len(),
        lost_sample: lost.iter().take(5).map(|s| (*s).clone()).collect(),
        unexpected: s.seen.keys().filter(|id| !committed.contains(id)).count(),
        kill: KillResult {
            killed_at_s: times.killed,
            restarted_at_s: times.restarted,
            ready_at_s: times.ready,
            recovery_s: times
                .killed
                .and_then(|k| recovery(&arrivals, k, times.restarted.unwrap_or(k), times.a_end)),
            longest_gap_s: longest_gap(&arrivals, times.a_end),
            bin_s: BIN_S,
            c_per_bin: bins(&arrivals, opts.duration.as_secs_f64().max(times.a_end)),
            ..kill
        },
    }
}

/// Kill at `kill` → the first moment from `from` on (B's restart: nothing B has not
/// yet sent can reach C before) from which C receives, over half a second, at least
/// half its rate of the two seconds before the kill. `None` if that does not happen
/// before `end` (or there was no traffic before the kill to compare with).
fn recovery(sorted: &[f64], kill: f64, from: f64, end: f64) -> Option<f64> {
    let count =
        |a: f64, b: f64| sorted.partition_point(|&t| t < b) - sorted.partition_point(|&t| t < a);
    let before = (kill - 2.0).max(0.0);
    let pre_rate = count(before, kill) as f64 / (kill - before).max(1e-3);
    if pre_rate <= 0.0 {
        return None;
    }
    let window = 0.5;
    let mut t = from.max(kill);
    while t + window <= end {
        if count(t, t + window) as f64 >= 0.5 * pre_rate * window {
            return Some(t - kill);
        }
        t += 0.05;
    }
    None
}

/// Longest time without a delivery at C between its first delivery and `end`.
fn longest_gap(sorted: &[f64], end: f64) -> f64 {
    let mut gap: f64 = 0.0;
    let mut prev = match sorted.first() {
        Some(&t) => t,
        None => return end,
    };
    for &t in sorted.iter().chain(std::iter::once(&end)) {
        if t > end {
            gap = gap.max(end - prev);
            break;
        }
        gap = gap.max(t - prev);
        prev = t;
    }
    gap
}

/// Deliveries per [`BIN_S`] bin over `[0, until)`.
fn bins(sorted: &[f64], until: f64) -> Vec<u32> {
    let n = (until / BIN_S).ceil() as usize;
    let mut v = vec![0u32; n];
    for &t in sorted {
        let i = (t / BIN_S) as usize;
        if let Some(b) = v.get_mut(i) {
            *b += 1;
        }
    }
    v
}

/// How the lab was run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Seconds A placed orders, per implementation.
    pub duration_s: f64,
    /// Concurrent order clients.
    pub clients: usize,
    /// B SIGKILLed at, s.
    pub kill_at_s: f64,
    /// B dead for, s.
    pub pause_s: f64,
    /// Quiet time after which missing orders count as lost, s.
    pub drain_quiet_s: f64,
    /// Smoke mode.
    pub smoke: bool,
    /// What else the person running it wants on record (e.g. what else was running).
    pub note: Option<String>,
    /// `release` or `debug`.
    pub build: &'static str,
}

/// The machine, as far as it matters for the numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub cpus: usize,
    /// `/proc/loadavg` before the run.
    pub load_before: String,
    /// `/proc/loadavg` after the run.
    pub load_after: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// When (UTC).
    pub date: String,
    /// Names the run's topics and order ids.
    pub run_id: String,
    /// How.
    pub params: Params,
    /// Where.
    pub machine: Machine,
    /// Per implementation, in run order.
    pub results: Vec<ImplResult>,
}

impl LabReport {
    /// Assembles the report of a finished run.
    pub fn new(
        opts: &LabOptions,
        run_id: &str,
        load_before: String,
        results: Vec<ImplResult>,
    ) -> Self {
        Self {
            date: utc_now(),
            run_id: run_id.to_owned(),
            params: Params {
                duration_s: opts.duration.as_secs_f64(),
                clients: opts.clients,
                kill_at_s: opts.kill_at.as_secs_f64(),
                pause_s: opts.pause.as_secs_f64(),
                drain_quiet_s: opts.drain_quiet.as_secs_f64(),
                smoke: opts.smoke,
                note: opts.note.clone(),
                build: if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
            },
            machine: Machine {
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                load_before,
                load_after: load_average(),
            },
            results,
        }
    }
}

/// `/proc/loadavg`, or `unknown`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes `README.md`, `results.json` and the charts into `dir` (created).
///
/// # Errors
/// File system failures.
pub fn write(dir: &Path, report: &LabReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Compact: the CDFs and C's per-bin counts would triple the size pretty-printed
    // (the report is committed; `jq .` makes it readable).
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string(report)? + "\n",
    )?;
    let ok: Vec<&ImplResult> = report
        .results
        .iter()
        .filter(|r| r.error.is_none())
        .collect();
    std::fs::write(
        dir.join("throughput.svg"),
        bar_chart(
            "Throughput: orders committed per second (higher is better)",
            "orders/s",
            &ok,
            &[("orders/s", |r: &ImplResult| r.throughput)],
        ),
    )?;
    std::fs::write(
        dir.join("commit_latency.svg"),
        bar_chart(
            "A's commit latency, ms (lower is better)",
            "ms",
            &ok,
            &[
                ("p50", |r: &ImplResult| r.commit_ms.p50),
                ("p99", |r: &ImplResult| r.commit_ms.p99),
            ],
        ),
    )?;
    std::fs::write(dir.join("e2e_cdf.svg"), cdf_chart(&ok))?;
    std::fs::write(dir.join("c_stream.svg"), stream_chart(&ok))?;
    std::fs::write(dir.join("README.md"), markdown(report))?;
    Ok(())
}

/// The summary table (also what the repository README quotes).
pub fn table(results: &[ImplResult]) -> String {
    let mut s = String::new();
    s.push_str(
        "| implementation | orders/s | commit p50 ms | commit p99 ms | e2e p50 ms | e2e p99 ms \
         | duplicated at C (applied) | lost | recovery s | longest gap at C s | max prepared age s |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "| {} | failed: {} |||||||||",
                r.title,
                e.lines().next().unwrap_or("")
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} ({}) | {} | {} | {:.2} | {:.2} |",
            r.title,
            r.throughput,
            r.commit_ms.p50,
            r.commit_ms.p99,
            r.e2e_ms.p50,
            r.e2e_ms.p99,
            r.duplicate_orders,
            r.duplicates_applied,
            r.losses,
            r.kill
                .recovery_s
                .map_or_else(|| "never".to_owned(), |v| format!("{v:.2}")),
            r.kill.longest_gap_s,
            r.kill.max_prepared_age_s,
        );
    }
    s
}

fn markdown(r: &LabReport) -> String {
    let p = &r.params;
    let mut s = String::new();
    let _ = writeln!(s, "# Trade-off lab report\n");
    let _ = writeln!(
        s,
        "Run `{}` on {}: {} build, {} s per implementation, {} order clients, service B \
         SIGKILLed at {:.1} s and restarted {:.1} s later; an order C has not received once \
         its stream has been quiet for {:.1} s counts as lost{}.\n",
        r.run_id,
        r.date,
        p.build,
        p.duration_s,
        p.clients,
        p.kill_at_s,
        p.pause_s,
        p.drain_quiet_s,
        if p.smoke { " (smoke mode)" } else { "" }
    );
    let _ = writeln!(
        s,
        "Machine: {} CPUs; load average before `{}`, after `{}`.\n",
        r.machine.cpus, r.machine.load_before, r.machine.load_after
    );
    if let Some(note) = &p.note {
        let _ = writeln!(s, "Note: {note}\n");
    }
    s.push_str(&table(&r.results));
    s.push_str(
        "\n- **orders/s**: orders A committed per second (closed loop, each client places \
         its next order when the last one committed). **commit**: A's latency for one order.\n\
         - **e2e**: A creating the order → C receiving the final event (includes the kill).\n\
         - **duplicated at C**: orders C received more than once; **(applied)**: those a \
         consumer would apply — 0 where every consumer dedupes by order id (outbox, \
         idempotent consumer: delivery is at least once by design).\n\
         - **lost**: orders A committed that C never received.\n\
         - **recovery**: kill → C receiving at half its pre-kill rate again; **longest gap**: \
         longest silence in C's stream while A placed orders; **max prepared age**: oldest \
         Postgres prepared transaction seen (its rows stay locked that long; only 2PC \
         prepares).\n\n",
    );
    s.push_str("![throughput](throughput.svg)\n\n![commit latency](commit_latency.svg)\n\n");
    s.push_str(
        "![end-to-end latency CDF](e2e_cdf.svg)\n\n![C's stream around the kill](c_stream.svg)\n\n",
    );
    s.push_str("## Kill details\n\n| implementation | orders | failed | deliveries | killed at s | restarted at s | B consuming again at s | unexpected | prepared left |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for x in &r.results {
        let k = &x.kill;
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.title,
            x.committed,
            x.failed,
            x.deliveries,
            f(k.killed_at_s),
            f(k.restarted_at_s),
            f(k.ready_at_s),
            x.unexpected,
            k.prepared_after_drain
        );
    }
    s.push_str("\nRaw numbers: [results.json](results.json). Regenerate: see the repository README, section \"Trade-off lab\".\n");
    s
}

/// Colour of implementation `i` in every chart.
const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#17becf", "#9467bd", "#d62728",
];
/// Colours of the series of a grouped bar chart.
const SERIES: [&str; 2] = ["#4c78a8", "#f58518"];

fn color(r: &ImplResult) -> &'static str {
    let i = r
        .implementation
        .and_then(|imp| Impl::ALL.iter().position(|&x| x == imp))
        .unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn svg_open(w: u32, h: u32, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        w / 2,
        esc(title)
    )
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * p)
}

/// One series of a bar chart: its name and how to read its value from a result.
type Series = (&'static str, fn(&ImplResult) -> f64);

/// Horizontal grouped bars: one group per implementation, one bar per series.
fn bar_chart(title: &str, unit: &str, results: &[&ImplResult], series: &[Series]) -> String {
    let (left, right, top) = (170.0, 60.0, 40.0);
    let bar_h = 14.0;
    let group_h = bar_h * series.len() as f64 + 10.0;
    let plot_w = 700.0 - left - right;
    let h = top + group_h * results.len() as f64 + 50.0;
    let max = nice_max(
        results
            .iter()
            .flat_map(|r| series.iter().map(move |(_, f)| f(r)))
            .fold(0.0, f64::max),
    );
    let mut s = svg_open(700, h as u32, title);
    for i in 0..=5 {
        let v = max * f64::from(i) / 5.0;
        let x = left + plot_w * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            h - 45.0,
            h - 32.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        h - 16.0,
        esc(unit)
    );
    for (gi, r) in results.iter().enumerate() {
        let gy = top + group_h * gi as f64;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            gy + group_h / 2.0,
            esc(&r.title)
        );
        for (si, (name, f)) in series.iter().enumerate() {
            let v = f(r);
            let y = gy + bar_h * si as f64 + 3.0;
            let w = (v / max * plot_w).max(0.5);
            let fill = if series.len() == 1 {
                color(r)
            } else {
                SERIES[si % SERIES.len()]
            };
            let _ = writeln!(
                s,
                "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{fill}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}{}</text>",
                bar_h - 2.0,
                left + w + 4.0,
                y + bar_h - 4.0,
                fmt_num(v),
                if series.len() > 1 {
                    format!(" ({name})")
                } else {
                    String::new()
                }
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// End-to-end latency CDF, log-scaled x axis.
fn cdf_chart(results: &[&ImplResult]) -> String {
    let (w, h) = (700.0, 420.0);
    let (left, right, top, bottom) = (60.0, 190.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let all = results.iter().flat_map(|r| r.e2e_cdf.iter().map(|p| p[0]));
    let lo = all.clone().fold(f64::INFINITY, f64::min).max(0.1);
    let hi = all.fold(0.0, f64::max).max(lo * 10.0);
    let (l0, l1) = (lo.log10().floor(), hi.log10().ceil());
    let x_of = |ms: f64| left + (ms.max(lo).log10() - l0) / (l1 - l0) * pw;
    let y_of = |q: f64| top + (1.0 - q) * ph;
    let mut s = svg_open(
        w as u32,
        h as u32,
        "End-to-end latency CDF: order created → C receives it",
    );
    let mut e = l0;
    while e <= l1 {
        let x = x_of(10f64.powf(e));
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + ph,
            top + ph + 16.0,
            fmt_num(10f64.powf(e))
        );
        e += 1.0;
    }
    for i in 0..=4 {
        let q = f64::from(i) / 4.0;
        let y = y_of(q);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{q:.2}</text>",
            left + pw,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">ms (log scale)</text>",
        left + pw / 2.0,
        h - 14.0
    );
    for (i, r) in results.iter().enumerate() {
        let pts: Vec<String> = r
            .e2e_cdf
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p[0]), y_of(p[1])))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            color(r),
            pts.join(" ")
        );
        let ly = top + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            w - right + 10.0,
            w - right + 30.0,
            color(r),
            w - right + 36.0,
            ly + 4.0,
            esc(&r.title)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// C's stream over time, one small panel per implementation, kill and restart marked.
fn stream_chart(results: &[&ImplResult]) -> String {
    let (w, panel_h, left, right, top) = (700.0, 70.0, 170.0, 20.0, 40.0);
    let pw = w - left - right;
    let h = top + panel_h * results.len() as f64 + 40.0;
    let span = results
        .iter()
        .map(|r| r.kill.c_per_bin.len() as f64 * r.kill.bin_s)
        .fold(1.0, f64::max);
    let mut s = svg_open(
        w as u32,
        h as u32,
        "Events per second at C (red: B killed, green: B restarted)",
    );
    for (i, r) in results.iter().enumerate() {
        let y0 = top + panel_h * i as f64;
        let base = y0 + panel_h - 12.0;
        let peak = r.kill.c_per_bin.iter().copied().max().unwrap_or(0).max(1);
        let rate_peak = f64::from(peak) / r.kill.bin_s.max(1e-3);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\" fill=\"#666\">peak {:.0}/s</text>\
             <line x1=\"{left}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\" stroke=\"#999\"/>",
            left - 8.0,
            y0 + 25.0,
            esc(&r.title),
            left - 8.0,
            y0 + 40.0,
            rate_peak,
            left + pw
        );
        let pts: Vec<String> = r
            .kill
            .c_per_bin
            .iter()
            .enumerate()
            .map(|(b, &n)| {
                let x = left + (b as f64 + 0.5) * r.kill.bin_s / span * pw;
                let y = base - f64::from(n) / f64::from(peak) * (panel_h - 20.0);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            color(r),
            pts.join(" ")
        );
        for (t, c) in [
            (r.kill.killed_at_s, "#d62728"),
            (r.kill.restarted_at_s, "#2ca02c"),
        ] {
            if let Some(t) = t {
                let x = left + t / span * pw;
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{base:.1}\" stroke=\"{c}\" stroke-dasharray=\"3,2\"/>",
                    y0 + 6.0
                );
            }
        }
    }
    let axis_y = top + panel_h * results.len() as f64 + 4.0;
    let mut t = 0.0;
    let step = nice_max(span / 8.0);
    while t <= span + 1e-9 {
        let x = left + t / span * pw;
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} s</text>",
            axis_y + 10.0,
            fmt_num(t)
        );
        t += step;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_and_gaps_from_arrivals() {
        // 100/s until 5 s, nothing until 6.5 s, then 100/s again.
        let mut a: Vec<f64> = (0..500).map(|i| f64::from(i) / 100.0).collect();
        a.extend((0..300).map(|i| 6.5 + f64::from(i) / 100.0));
        let r = recovery(&a, 5.0, 5.0, 9.5).expect("recovers");
        assert!((1.2..=1.6).contains(&r), "recovery {r}");
        let g = longest_gap(&a, 9.5);
        assert!((1.4..=1.6).contains(&g), "gap {g}");
        assert_eq!(recovery(&a[..500], 5.0, 5.0, 9.5), None);
        assert_eq!(recovery(&a, 5.0, 7.0, 9.5), Some(2.0));
        assert_eq!(bins(&[0.1, 0.2, 0.3], 0.5), vec![2, 1]);
    }

    #[test]
    fn dates_and_axes() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(nice_max(730.0), 1000.0);
        assert_eq!(nice_max(0.3), 0.5);
    }
}
