//! Drawing one run of a scenario (`kaelix sim replay … --html FILE`).
//!
//! The run is replayed with a [`PictureRecorder`] as its trace sink (so the
//! page shows exactly the run the seed — and, if given, the fault schedule —
//! decides: the same trace hash as without it), and, for scenarios that
//! record a client history, each client operation becomes a span on a lane
//! of its client. The page itself is [`kaelix_sim::picture`]'s.

use kaelix_sim::FaultSchedule;
use kaelix_sim::picture::{PictureRecorder, Span};
use kaelix_sim::shrink::WorkloadKeep;

use crate::history::History;
use crate::{RunReport, Scenario};

/// One drawn run.
#[derive(Debug)]
pub struct Drawn {
    /// The run's report (its trace hash is the undrawn run's).
    pub report: RunReport,
    /// The page.
    pub html: String,
    /// The window the page holds (ns of true time).
    pub window: (u64, u64),
    /// Messages in the whole run, and in the window.
    pub messages: (usize, usize),
}

/// Runs `seed` of `scenario` (under `schedule` instead of the seed's drawn
/// fault schedule, if given) and draws it; the page holds the window that
/// ends just after the failure (or the run's end) with the last
/// `max_messages` messages before it (`0`: the whole run), reaching further
/// back when needed to hold every operation the failed check names.
pub fn draw(scenario: &dyn Scenario, seed: u64, schedule: Option<&FaultSchedule>, max_messages: usize) -> Drawn {
    draw_with(scenario, seed, schedule, None, max_messages)
}

/// [`draw`] with the scenario's recorded workload lists cut to `workload`
/// (a shrunk run: [`crate::Shrunk`]).
pub fn draw_with(
    scenario: &dyn Scenario,
    seed: u64,
    schedule: Option<&FaultSchedule>,
    workload: Option<&WorkloadKeep>,
    max_messages: usize,
) -> Drawn {
    let recorder = PictureRecorder::new();
    let (((report, history), _), _) = kaelix_sim::shrink::with_workload(workload, || {
        kaelix_sim::shrink::with_schedule(schedule, || scenario.run_recording(seed, Some(recorder.sink())))
    });
    if let Some(history) = &history {
        add_history(&recorder, history, &cited_operations(&report.verdict.to_string()));
    }
    let picture = recorder.picture();
    let mut window = picture.default_window(max_messages);
    // A history check fails when the run ends, which can be seconds after
    // the operations it names: the window reaches back to them, past the
    // message budget, since a picture of the failure without its cited
    // operations shows nothing of what went wrong.
    if let Some(first_cited) = picture.spans.iter().filter(|s| s.cited).map(|s| s.start).min() {
        window.0 = window.0.min(first_cited.saturating_sub(1_000_000));
    }
    let in_window = picture.arrows.iter().filter(|a| a.sent <= window.1 && a.at >= window.0).count();
    let title = format!(
        "{} seed {seed}{}: {}",
        scenario.name(),
        match (schedule.is_some(), workload.is_some()) {
            (false, false) => "",
            (true, false) => " (given fault schedule)",
            (false, true) => " (given workload)",
            (true, true) => " (given fault schedule and workload)",
        },
        report.verdict.check().unwrap_or_else(|| "pass".into())
    );
    let html = picture.to_html(&title, window.0, window.1);
    Drawn { report, html, window, messages: (picture.arrows.len(), in_window) }
}

/// The operations a verdict names: history checks cite them as `#i (client
/// …` (see `HistoryOp::describe`).
fn cited_operations(verdict: &str) -> Vec<usize> {
    verdict
        .split('#')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            rest[digits.len()..].starts_with(" (client ").then(|| digits.parse().ok()).flatten()
        })
        .collect()
}

/// Client operations as spans; history clients are scenario-level ids,
/// not node ids, so each gets a lane of its own.
fn add_history(recorder: &PictureRecorder, history: &History, cited: &[usize]) {
    for (i, op) in history.ops().iter().enumerate() {
        recorder.add_span(Span {
            node: None,
            label: format!("client {}", op.client),
            start: op.call,
            end: op.returned(),
            text: format!("{} on {}", op.describe(i), op.partition),
            cited: cited.contains(&i),
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cited_operations_are_read_from_the_verdict() {
        let verdict = "SAFETY VIOLATION: lost: #93 (client 1: produce \"c#1\" [1, 2] -> offset 39) but #95 (client 1: read) #7 is not cited";
        assert_eq!(super::cited_operations(verdict), vec![93, 95]);
    }
}
