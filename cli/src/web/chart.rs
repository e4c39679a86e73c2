//! The overview's throughput chart: an inline SVG drawn here from
//! commitq.throughput, so the page needs no chart library and no script.
//! It holds numbers and fixed words only, nothing from the database's text.

use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::queries::Minute;

const W: f64 = 720.0;
const H: f64 = 160.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 20.0;
const MINUTES: i64 = 60;

/// Completed jobs (stacked under failed and discarded ones) per minute over
/// the last hour, one bar per minute, oldest on the left.
pub fn throughput_svg(minutes: &[Minute], now: DateTime<Utc>) -> String {
    let this_minute = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    let first = this_minute - Duration::minutes(MINUTES - 1);
    let mut bars = vec![(0i64, 0i64); MINUTES as usize];
    for m in minutes {
        let i = (m.minute - first).num_minutes();
        if (0..MINUTES).contains(&i) {
            bars[i as usize].0 += m.completed;
            bars[i as usize].1 += m.failed + m.discarded;
        }
    }
    let max = bars.iter().map(|(c, f)| c + f).max().unwrap_or(0).max(1) as f64;
    let plot_h = H - TOP - BOTTOM;
    let bar_w = W / MINUTES as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img" aria-label="jobs finished per minute, last hour">"#
    );
    svg.push_str(&format!(
        r#"<line x1="0" y1="{y}" x2="{W}" y2="{y}" class="axis"/>"#,
        y = H - BOTTOM
    ));
    for (i, (done, failed)) in bars.iter().enumerate() {
        let x = i as f64 * bar_w + 1.0;
        let h_done = *done as f64 / max * plot_h;
        let h_failed = *failed as f64 / max * plot_h;
        let y_done = H - BOTTOM - h_done;
        if *done > 0 {
            svg.push_str(&format!(
                r#"<rect x="{x:.1}" y="{y_done:.1}" width="{w:.1}" height="{h_done:.1}" class="done"><title>{done} completed</title></rect>"#,
                w = bar_w - 2.0
            ));
        }
        if *failed > 0 {
            svg.push_str(&format!(
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h_failed:.1}" class="failed"><title>{failed} failed or discarded</title></rect>"#,
                y = y_done - h_failed,
                w = bar_w - 2.0
            ));
        }
    }
    svg.push_str(&format!(
        r#"<text x="2" y="11" class="label">{max} / min</text><text x="2" y="{y}" class="label">60 min ago</text><text x="{W}" y="{y}" text-anchor="end" class="label">now</text></svg>"#,
        max = max as i64,
        y = H - 5.0
    ));
    svg
}
