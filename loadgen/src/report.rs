//! Writing results: the human table (stdout), the JSON file of the contract, the HdrHistogram interval log
//! (one interval per second, values in microseconds, readable by HdrHistogram's log tools) and the SVG plot
//! of throughput and p50/p99/p99.9 over time. Pure formatting of a `RunResult`; files are written by `write_*`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::cli::Config;
use crate::engine::RunResult;
use crate::stats::{Latency, Part, StepResult, Tally};

/// The step the summary reports: with --find-max the highest that held (else the first), otherwise the run.
pub fn headline(r: &RunResult) -> Option<&StepResult> {
    r.steps.iter().rev().find(|s| s.held).or_else(|| r.steps.first())
}

fn errors_text(t: &Tally) -> String {
    if t.errors.is_empty() {
        return "none".to_string();
    }
    t.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

pub fn table(cfg: &Config, r: &RunResult) -> String {
    let mut s = String::new();
    let Some(h) = headline(r) else {
        return "no step completed\n".to_string();
    };
    let l = h.tally.latency();
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<16} {v}");
    };
    let _ = writeln!(s, "loadgen results");
    row(&mut s, "scenario", cfg.scenario.name().to_string());
    if cfg.scenario == crate::cli::Scenario::Idle {
        row(&mut s, "target rate", "n/a (setups as fast as allowed, 64 in flight per core)".to_string());
    } else {
        row(&mut s, "target rate", format!("{:.1} /s", h.target_rate));
    }
    row(&mut s, "achieved rate", format!("{:.1} /s", h.achieved_rate()));
    row(&mut s, "duration", format!("{:.1} s", h.duration_s));
    row(&mut s, "ok", h.tally.ok.to_string());
    row(&mut s, "errors", errors_text(&h.tally));
    row(&mut s, "timeouts", h.tally.timeouts.to_string());
    row(&mut s, "dropped", format!("{} (client overloaded)", h.tally.dropped));
    row(
        &mut s,
        "latency ms",
        format!(
            "min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.min, l.p50, l.p90, l.p99, l.p999, l.max
        ),
    );
    if cfg.scenario == crate::cli::Scenario::Handshake || cfg.scenario == crate::cli::Scenario::Mix {
        row(&mut s, "resumed", r.resumed.to_string());
    }
    if cfg.scenario == crate::cli::Scenario::Presence {
        let (p, w) = cfg.presence_plan();
        row(&mut s, "presentities", format!("{p} with {w} watchers each ({} subscriptions)", p * w));
        row(&mut s, "notifies", h.tally.notifies.to_string());
        row(&mut s, "notifies_per_s", format!("{:.1} /s", notifies_per_s(h)));
    }
    if let Some(n) = r.connections_held {
        row(&mut s, "connections held", format!("{n} of {}", cfg.count));
    }
    if !h.parts.is_empty() {
        parts_table(&mut s, h);
    }
    if cfg.find_max.is_some() {
        let _ =
            writeln!(s, "find-max steps (SLO: p99 <= {} ms, no error/timeout/drop, >= 90% of rate)", cfg.slo_p99_ms);
        let _ = writeln!(
            s,
            "  {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>8} {:>7}  held",
            "target/s", "got/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "timeouts", "dropped"
        );
        for st in &r.steps {
            let l = st.tally.latency();
            let _ = writeln!(
                s,
                "  {:>10.1} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>7} {:>8} {:>7}  {}",
                st.target_rate,
                st.achieved_rate(),
                l.p50,
                l.p99,
                l.p999,
                st.tally.error_count(),
                st.tally.timeouts,
                st.tally.dropped,
                if st.held { "yes" } else { "no" }
            );
        }
        match max_rate_held(r) {
            Some(m) => row(&mut s, "max rate held", format!("{m:.1} /s")),
            None => row(&mut s, "max rate held", "none (the first step already broke the SLO)".to_string()),
        }
    }
    s
}

/// federation: one row per partner (its own schedule, errors and latencies).
fn parts_table(s: &mut String, h: &StepResult) {
    let _ = writeln!(s, "per partner (each on its own schedule; errors by code)");
    let _ = writeln!(
        s,
        "  {:<16} {:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8}  errors",
        "partner", "target/s", "got/s", "ok", "timeouts", "dropped", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for p in &h.parts {
        let l = p.tally.latency();
        let _ = writeln!(
            s,
            "  {:<16} {:>9.1} {:>9.1} {:>8} {:>8} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3}  {}",
            p.name,
            p.target_rate,
            p.achieved_rate(h.duration_s),
            p.tally.ok,
            p.tally.timeouts,
            p.tally.dropped,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            errors_text(&p.tally)
        );
    }
}

/// presence: NOTIFYs received by the watchers per second of measurement.
pub fn notifies_per_s(st: &StepResult) -> f64 {
    if st.duration_s > 0.0 {
        st.tally.notifies as f64 / st.duration_s
    } else {
        0.0
    }
}

pub fn max_rate_held(r: &RunResult) -> Option<f64> {
    r.steps.iter().filter(|s| s.held).map(|s| s.target_rate).reduce(f64::max)
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        "null".to_string()
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn latency_json(l: &Latency) -> String {
    format!(
        "{{\"min\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        num(l.min),
        num(l.p50),
        num(l.p90),
        num(l.p99),
        num(l.p999),
        num(l.max)
    )
}

/// The fields shared by the summary, each step and each partner.
fn tally_fields(target_rate: f64, achieved_rate: f64, duration_s: f64, t: &Tally) -> String {
    let errors: Vec<String> = t.errors.iter().map(|(k, v)| format!("{}:{v}", json_str(k))).collect();
    format!(
        "\"target_rate\":{},\"achieved_rate\":{},\"duration_s\":{},\"ok\":{},\"errors\":{{{}}},\"timeouts\":{},\
         \"dropped\":{},\"latency_ms\":{}",
        num(target_rate),
        num(achieved_rate),
        num(duration_s),
        t.ok,
        errors.join(","),
        t.timeouts,
        t.dropped,
        latency_json(&t.latency())
    )
}

/// A step's fields, and (federation) `"partners":[{"partner":..., fields}]`.
fn step_fields(st: &StepResult) -> String {
    let mut s = tally_fields(st.target_rate, st.achieved_rate(), st.duration_s, &st.tally);
    if !st.parts.is_empty() {
        let part = |p: &Part| {
            format!(
                "{{\"partner\":{},{}}}",
                json_str(&p.name),
                tally_fields(p.target_rate, p.achieved_rate(st.duration_s), st.duration_s, &p.tally)
            )
        };
        let parts: Vec<String> = st.parts.iter().map(part).collect();
        let _ = write!(s, ",\"partners\":[{}]", parts.join(","));
    }
    s
}

pub fn json(cfg: &Config, r: &RunResult) -> String {
    let mut s = format!("{{\"scenario\":{}", json_str(cfg.scenario.name()));
    if let Some(h) = headline(r) {
        let _ = write!(s, ",{}", step_fields(h));
    }
    let _ = write!(s, ",\"count\":{},\"cores\":{},\"resumed\":{}", cfg.count, cfg.cores.len(), r.resumed);
    if let Some(n) = r.connections_held {
        let _ = write!(s, ",\"connections_held\":{n}");
    }
    if cfg.scenario == crate::cli::Scenario::Presence {
        let (p, w) = cfg.presence_plan();
        let _ = write!(s, ",\"presentities\":{p},\"watchers\":{w}");
        if let Some(h) = headline(r) {
            let _ = write!(s, ",\"notifies\":{},\"notifies_per_s\":{}", h.tally.notifies, num(notifies_per_s(h)));
        }
    }
    if cfg.find_max.is_some() {
        let steps: Vec<String> =
            r.steps.iter().map(|st| format!("{{{},\"held\":{}}}", step_fields(st), st.held)).collect();
        let _ = write!(s, ",\"steps\":[{}]", steps.join(","));
        let _ = write!(s, ",\"max_rate_held\":{}", max_rate_held(r).map_or("null".to_string(), num));
        let _ = write!(s, ",\"slo_p99_ms\":{}", num(cfg.slo_p99_ms));
    }
    s.push_str("}\n");
    s
}

pub fn write_json(path: &Path, cfg: &Config, r: &RunResult) -> std::io::Result<()> {
    std::fs::write(path, json(cfg, r))
}

/// HdrHistogram interval log: one histogram per second of measurement, in microseconds.
pub fn hdr_log(seconds: &[Tally], start: SystemTime) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    {
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("loadgen latency log: values in microseconds, one interval per second")
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut out, &mut ser)?;
        for (i, t) in seconds.iter().enumerate() {
            w.write_histogram(&t.latency_us, Duration::from_secs(i as u64), Duration::from_secs(1), None)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
    }
    Ok(out)
}

/// SVG: throughput (ops/s) on top, p50/p99/p99.9 (ms) below, x = seconds of measurement.
pub fn svg(title: &str, seconds: &[Tally]) -> String {
    const W: f64 = 800.0;
    const PANEL_H: f64 = 220.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    let n = seconds.len().max(1);
    let x = |i: usize| LEFT + (i as f64 + 0.5) / n as f64 * (W - LEFT - RIGHT);
    let rates: Vec<f64> = seconds.iter().map(|t| t.completed() as f64).collect();
    let lat: Vec<Latency> = seconds.iter().map(Tally::latency).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">",
        2.0 * PANEL_H + 80.0
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"{LEFT}\" y=\"20\" font-size=\"15\">{}</text>", xml(title));
    let series_rate = [("completed ops/s", "#1f77b4", rates.clone())];
    panel(&mut s, 40.0, PANEL_H, "ops/s", &series_rate, &x, n);
    let series_lat = [
        ("p50 ms", "#2ca02c", lat.iter().map(|l| l.p50).collect::<Vec<_>>()),
        ("p99 ms", "#ff7f0e", lat.iter().map(|l| l.p99).collect()),
        ("p99.9 ms", "#d62728", lat.iter().map(|l| l.p999).collect()),
    ];
    panel(&mut s, 60.0 + PANEL_H, PANEL_H, "latency ms", &series_lat, &x, n);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds of measurement</text>",
        W / 2.0,
        2.0 * PANEL_H + 75.0
    );
    s.push_str("</svg>\n");
    s
}

fn xml(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn panel(
    s: &mut String,
    top: f64,
    h: f64,
    unit: &str,
    series: &[(&str, &str, Vec<f64>)],
    x: &dyn Fn(usize) -> f64,
    n: usize,
) {
    let max = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(0.0_f64, f64::max);
    let max = if max > 0.0 { max * 1.1 } else { 1.0 };
    let bottom = top + h;
    let y = |v: f64| bottom - v / max * h;
    let (l, r) = (x(0) - 10.0, x(n.saturating_sub(1)) + 10.0);
    let _ = writeln!(
        s,
        "<rect x=\"{l:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"none\" stroke=\"#999\"/>",
        r - l
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><line x1=\"{l:.1}\" x2=\"{r:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            l - 4.0,
            y(v) + 4.0,
            short(v),
            y(v),
            y(v)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        top + h / 2.0,
        top + h / 2.0,
        xml(unit)
    );
    let step = (n / 10).max(1);
    for i in (0..n).step_by(step) {
        let _ =
            writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", x(i), bottom + 14.0, i + 1);
    }
    for (k, (name, color, vals)) in series.iter().enumerate() {
        let pts: Vec<String> = vals.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        let _ =
            writeln!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", pts.join(" "));
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>",
            l + 8.0 + 110.0 * k as f64,
            top + 14.0,
            xml(name)
        );
    }
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stats::Outcome;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn seconds() -> Vec<Tally> {
        (1..=3u64)
            .map(|s| {
                let mut t = Tally::default();
                for us in 1..=100 * s {
                    t.record(Outcome::Ok, Duration::from_micros(us * 10));
                }
                t
            })
            .collect()
    }

    #[test]
    fn hdr_log_reads_back_one_interval_per_second() {
        let log = hdr_log(&seconds(), SystemTime::UNIX_EPOCH).unwrap();
        let intervals: Vec<_> = IntervalLogIterator::new(&log)
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(i) => Some((i.start_timestamp().as_secs(), i.duration().as_secs())),
                _ => None,
            })
            .collect();
        assert_eq!(intervals, [(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn svg_has_a_line_per_series() {
        let s = svg("t <&>", &seconds());
        assert_eq!(s.matches("<polyline").count(), 4);
        assert!(s.contains("t &lt;&amp;&gt;") && s.ends_with("</svg>\n"));
    }
}
