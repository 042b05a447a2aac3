//! Fault and branch coverage: how often each `buggify!` fault point and each
//! `sometimes!` assertion was reached and fired (held), per run and summed
//! over many runs.
//!
//! # Model
//!
//! Every site of either macro registers itself at link time in
//! [`kaelix_core::runtime::COVERAGE_POINTS`]; a run counts, per site it
//! reaches, how many times it was evaluated (`reached`) and how many times a
//! fault point fired or an assertion's condition held (`fired`). Counting
//! never touches the trace or any generator, so coverage changes no run.
//! [`CoverageTotals`] sums runs (and counts the runs in which each point was
//! reached and fired); [`CoverageTotals::render`] prints one table row per
//! registered point, so a point no run reached, or reached but never fired,
//! is named — the point of the exercise: a fault point that never fires
//! tests nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kaelix_core::runtime::{COVERAGE_POINTS, CoveragePoint, PointKind};

/// Counts of one point in one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointCount {
    /// Evaluations.
    pub reached: u64,
    /// Evaluations that fired (fault point) or held (assertion).
    pub fired: u64,
}

/// One run's coverage, by site (`file:line`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Points this run reached.
    pub points: BTreeMap<&'static str, PointCount>,
}

impl Coverage {
    /// Counts one evaluation of `site`.
    pub fn record(&mut self, site: &'static str, fired: bool) {
        let c = self.points.entry(site).or_default();
        c.reached += 1;
        c.fired += u64::from(fired);
    }
}

/// Counts of one point over many runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointTotals {
    /// Evaluations, summed.
    pub reached: u64,
    /// Firings (holds), summed.
    pub fired: u64,
    /// Runs that reached the point.
    pub runs_reached: u64,
    /// Runs in which it fired (held) at least once.
    pub runs_fired: u64,
}

/// Coverage summed over runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoverageTotals {
    /// Runs added.
    pub runs: u64,
    /// By site.
    pub points: BTreeMap<&'static str, PointTotals>,
}

/// Whether a site belongs to a test harness rather than to code under test
/// (the runtime contract's own tests and doc examples register points too
/// when linked).
fn is_registered_for_report(point: &CoveragePoint) -> bool {
    !point.site.contains("/tests/")
}

impl CoverageTotals {
    /// Adds one run.
    pub fn add(&mut self, run: &Coverage) {
        self.runs += 1;
        for (&site, c) in &run.points {
            let t = self.points.entry(site).or_default();
            t.reached += c.reached;
            t.fired += c.fired;
            t.runs_reached += u64::from(c.reached > 0);
            t.runs_fired += u64::from(c.fired > 0);
        }
    }

    /// Adds another total (parallel workers' partial sums).
    pub fn merge(&mut self, other: &CoverageTotals) {
        self.runs += other.runs;
        for (&site, o) in &other.points {
            let t = self.points.entry(site).or_default();
            t.reached += o.reached;
            t.fired += o.fired;
            t.runs_reached += o.runs_reached;
            t.runs_fired += o.runs_fired;
        }
    }

    /// Every registered point (sorted by kind, then site) with its totals,
    /// zero for points no run reached; then points counted but not
    /// registered (none, unless a site bypassed the macros).
    pub fn rows(&self) -> Vec<(PointKind, &'static str, &'static str, PointTotals)> {
        let mut rows: Vec<(PointKind, &'static str, &'static str, PointTotals)> = COVERAGE_POINTS
            .iter()
            .filter(|p| is_registered_for_report(p))
            .map(|p| (p.kind, p.site, p.name, self.points.get(p.site).copied().unwrap_or_default()))
            .collect();
        for (&site, &t) in &self.points {
            if !rows.iter().any(|r| r.1 == site) {
                rows.push((PointKind::Buggify, site, "unregistered site", t));
            }
        }
        rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        rows.dedup_by(|a, b| a.1 == b.1);
        rows
    }

    /// Points that never fired (held) in any run, reached or not.
    pub fn never_fired(&self) -> Vec<(PointKind, &'static str, &'static str, bool)> {
        self.rows().into_iter().filter(|r| r.3.fired == 0).map(|r| (r.0, r.1, r.2, r.3.reached > 0)).collect()
    }

    /// The coverage table: one row per point, then the points that never
    /// fired named on their own.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "coverage over {} run(s):", self.runs);
        let _ = writeln!(
            out,
            "  {:<9} {:<46} {:>11} {:>10} {:>9} {:>9}  what",
            "kind", "site", "reached", "fired", "runs hit", "runs fired"
        );
        for (kind, site, name, t) in self.rows() {
            let kind = match kind {
                PointKind::Buggify => "buggify",
                PointKind::Sometimes => "sometimes",
            };
            let _ = writeln!(
                out,
                "  {kind:<9} {site:<46} {:>11} {:>10} {:>9} {:>9}  {name}",
                t.reached, t.fired, t.runs_reached, t.runs_fired
            );
        }
        let never = self.never_fired();
        if never.is_empty() {
            let _ = writeln!(out, "every point fired at least once");
        } else {
            let _ = writeln!(out, "{} point(s) never fired:", never.len());
            for (kind, site, name, reached) in never {
                let what = match (kind, reached) {
                    (PointKind::Buggify, true) => "reached, never fired",
                    (PointKind::Sometimes, true) => "reached, never held",
                    (_, false) => "never reached",
                };
                let _ = writeln!(out, "  {site}  {name}  ({what})");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_runs_and_merge_like_adding() {
        let mut a = Coverage::default();
        a.record("x.rs:1", true);
        a.record("x.rs:1", false);
        a.record("y.rs:2", false);
        let mut b = Coverage::default();
        b.record("x.rs:1", false);

        let mut one = CoverageTotals::default();
        one.add(&a);
        one.add(&b);
        let x = one.points["x.rs:1"];
        assert_eq!((x.reached, x.fired, x.runs_reached, x.runs_fired), (3, 1, 2, 1));
        assert_eq!(one.points["y.rs:2"].fired, 0);

        let mut left = CoverageTotals::default();
        left.add(&a);
        let mut right = CoverageTotals::default();
        right.add(&b);
        left.merge(&right);
        assert_eq!(left, one);
    }

    #[test]
    fn render_names_points_that_never_fired() {
        let mut a = Coverage::default();
        a.record("x.rs:1", false);
        let mut t = CoverageTotals::default();
        t.add(&a);
        let text = t.render();
        assert!(text.contains("x.rs:1  unregistered site  (reached, never fired)"), "{text}");
    }
}
