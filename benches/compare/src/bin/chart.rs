//! Draws the comparison's results (the JSON lines `nwebsocket-compare` writes) as one SVG.
//!
//! ```text
//! cargo run --release -p nwebsocket-compare --bin chart -- [RESULTS.jsonl] [OUT.svg]
//! ```
//!
//! Defaults: `target/compare/results.jsonl` in, `target/compare/chart.svg` out. Panels:
//! throughput and round trips as ratios against raw tungstenite (log scale, the issue's
//! targets marked), pong latency with a busy main thread and in corun, and memory per
//! connection. The title names the cargo profile the results are for.
//! Only what the file holds is drawn: no figure is typed in here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

const CLIENTS: [(&str, &str); 5] = [
    ("nws-callback", "#1f77b4"),
    ("nws-pull", "#2ca02c"),
    ("nws-batches", "#9467bd"),
    ("tungstenite", "#8c8c8c"),
    ("tokio-tungstenite", "#ff7f0e"),
];
const PLACEMENTS: [(&str, &str); 3] = [
    ("split", "split cores"),
    ("one", "one core"),
    ("unpinned", "unpinned"),
];

type Summary = BTreeMap<(String, String, String), Value>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/compare");
    let input = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("results.jsonl"));
    let output = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("chart.svg"));
    let text = match std::fs::read_to_string(&input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", input.display());
            std::process::exit(1);
        }
    };
    let mut meta = Value::Null;
    let mut end = Value::Null;
    let mut summary = Summary::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v["kind"].as_str() {
            Some("meta") => meta = v,
            Some("end") => end = v,
            Some("summary") => {
                let key = |k: &str| v[k].as_str().unwrap_or("").to_owned();
                summary.insert(
                    (key("placement"), key("scenario"), key("client")),
                    v.clone(),
                );
            }
            _ => {}
        }
    }
    if summary.is_empty() {
        eprintln!("{} holds no summary lines", input.display());
        std::process::exit(1);
    }
    let svg = draw(&meta, &end, &summary);
    if let Err(e) = std::fs::write(&output, svg) {
        eprintln!("cannot write {}: {e}", output.display());
        std::process::exit(1);
    }
    eprintln!("wrote {}", output.display());
}

/// One bar group: a label and (client, value, label-above-bar) bars.
struct Group {
    label: String,
    sub: String,
    bars: Vec<(&'static str, &'static str, f64)>,
    /// A target drawn across the group's bars of this crate.
    target: Option<f64>,
}

enum Scale {
    Log { min: f64, max: f64 },
    Linear { max: f64 },
}

impl Scale {
    fn frac(&self, v: f64) -> f64 {
        match *self {
            Scale::Log { min, max } => {
                ((v.max(min).ln() - min.ln()) / (max.ln() - min.ln())).clamp(0.0, 1.0)
            }
            Scale::Linear { max } => (v / max).clamp(0.0, 1.0),
        }
    }
    fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Log { min, max } => [
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
                50.0, 100.0, 200.0, 500.0, 1000.0,
            ]
            .into_iter()
            .filter(|&t| t >= min * 0.999 && t <= max * 1.001)
            .collect(),
            Scale::Linear { max } => {
                let step = nice_step(max / 5.0);
                (0..)
                    .map(|i| i as f64 * step)
                    .take_while(|&t| t <= max * 1.001)
                    .collect()
            }
        }
    }
}

/// The largest 1-2-5 tick at or below `v`, so that a log axis starts on a labelled tick.
fn floor_tick(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&t| t <= v)
        .unwrap_or(p)
}

fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    (x, y, w, h): (f64, f64, f64, f64),
    title: &str,
    unit: &str,
    groups: &[Group],
    scale: &Scale,
    reference: Option<(f64, &str)>,
    bar_labels: &dyn Fn(f64) -> String,
) {
    let left = 56.0;
    let plot_x = x + left;
    let plot_w = w - left - 10.0;
    let plot_y = y + 28.0;
    let plot_h = h - 28.0 - 46.0;
    let _ = writeln!(
        svg,
        r#"<text x="{x}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        y + 14.0,
        esc(title)
    );
    let ypos = |v: f64| plot_y + plot_h * (1.0 - scale.frac(v));
    for t in scale.ticks() {
        let ty = ypos(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{plot_x}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text>"##,
            plot_x + plot_w,
            plot_x - 4.0,
            ty + 3.5,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#555" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle">{}</text>"##,
        x + 10.0,
        plot_y + plot_h / 2.0,
        x + 10.0,
        plot_y + plot_h / 2.0,
        esc(unit)
    );
    if groups.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#888" text-anchor="middle">no data in this run</text>"##,
            plot_x + plot_w / 2.0,
            plot_y + plot_h / 2.0
        );
        return;
    }
    let gw = plot_w / groups.len() as f64;
    for (i, g) in groups.iter().enumerate() {
        let gx = plot_x + gw * i as f64;
        let n = g.bars.len().max(1) as f64;
        let bw = (gw * 0.8 / n).min(28.0);
        let start = gx + (gw - bw * n) / 2.0;
        for (j, (client, color, v)) in g.bars.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let bx = start + bw * j as f64;
            let top = ypos(*v);
            let base = plot_y + plot_h;
            let _ = writeln!(
                svg,
                r#"<rect x="{bx:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{client}: {}</title></rect>"#,
                bw - 2.0,
                (base - top).max(0.5),
                fmt_num(*v)
            );
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="8" text-anchor="middle" fill="#333">{}</text>"##,
                bx + (bw - 2.0) / 2.0,
                top - 2.5,
                esc(&bar_labels(*v))
            );
        }
        if let Some(t) = g.target {
            // Across this crate's bars (the first two).
            let ours = g
                .bars
                .iter()
                .filter(|(c, _, _)| c.starts_with("nws"))
                .count()
                .max(1) as f64;
            let ty = ypos(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#d62728" stroke-width="2" stroke-dasharray="4 2"><title>target {}</title></line>"##,
                start - 2.0,
                start + bw * ours,
                fmt_num(t)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="9.5" text-anchor="middle" fill="#555">{}</text>"##,
            gx + gw / 2.0,
            plot_y + plot_h + 14.0,
            esc(&g.label),
            gx + gw / 2.0,
            plot_y + plot_h + 26.0,
            esc(&g.sub)
        );
    }
    if let Some((r, label)) = reference {
        let ry = ypos(r);
        let _ = writeln!(
            svg,
            r##"<line x1="{plot_x}" y1="{ry:.1}" x2="{:.1}" y2="{ry:.1}" stroke="#000" stroke-width="1.2"/><text x="{:.1}" y="{:.1}" font-size="9.5" text-anchor="start">{}</text>"##,
            plot_x + plot_w,
            plot_x + 4.0,
            ry - 3.0,
            esc(label)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{plot_x}" y="{plot_y}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#999"/>"##
    );
}

fn metric(v: &Value, k: &str) -> f64 {
    v["median"][k].as_f64().unwrap_or(f64::NAN)
}

fn placement_label(p: &str) -> &'static str {
    PLACEMENTS
        .iter()
        .find(|(n, _)| *n == p)
        .map_or("", |(_, l)| l)
}

fn draw(meta: &Value, end: &Value, s: &Summary) -> String {
    let placements: Vec<&str> = PLACEMENTS
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| s.keys().any(|(pp, _, _)| pp == p))
        .collect();

    // Panel 1: ratios against raw tungstenite.
    let mut ratio_groups = Vec::new();
    for scen in ["rtt", "stream_small", "send_small", "stream_large"] {
        for p in &placements {
            let bars: Vec<_> = CLIENTS
                .iter()
                .filter(|(c, _)| *c != "tungstenite")
                .filter_map(|(c, color)| {
                    let v = s.get(&(p.to_string(), scen.to_owned(), c.to_string()))?;
                    Some((*c, *color, v["ratio_vs_tungstenite"].as_f64()?))
                })
                .collect();
            if bars.is_empty() {
                continue;
            }
            let target = CLIENTS.iter().take(3).find_map(|(c, _)| {
                let v = s.get(&(p.to_string(), scen.to_owned(), c.to_string()))?;
                let t = v["target"].as_str()?;
                t.strip_prefix(">= ")?.split('x').next()?.parse().ok()
            });
            ratio_groups.push(Group {
                label: scen.to_owned(),
                sub: placement_label(p).to_owned(),
                bars,
                target,
            });
        }
    }

    // Panel 2: pong latency p99 with the main thread busy, and with compute threads on
    // every core (corun).
    let mut busy_groups = Vec::new();
    for scen in ["busy_main", "corun"] {
        for p in &placements {
            let bars: Vec<_> = CLIENTS
                .iter()
                .filter_map(|(c, color)| {
                    let v = s.get(&(p.to_string(), scen.to_owned(), c.to_string()))?;
                    Some((*c, *color, metric(v, "pong_p99_us") / 1e3))
                })
                .collect();
            if !bars.is_empty() {
                busy_groups.push(Group {
                    label: scen.into(),
                    sub: placement_label(p).to_owned(),
                    bars,
                    target: None,
                });
            }
        }
    }

    // Panel 3: memory per connection.
    let mut rss_groups = Vec::new();
    for (k, label, target) in [
        ("kib_idle", "idle", 48.0),
        ("kib_after", "after one echo", 64.0),
    ] {
        let bars: Vec<_> = CLIENTS
            .iter()
            .filter_map(|(c, color)| {
                let v = s
                    .iter()
                    .find(|((_, sc, cl), _)| sc == "rss_per_conn" && cl == c)?
                    .1;
                Some((*c, *color, metric(v, k)))
            })
            .collect();
        if !bars.is_empty() {
            rss_groups.push(Group {
                label: "rss_per_conn".into(),
                sub: label.into(),
                bars,
                target: Some(target),
            });
        }
    }

    let width = (ratio_groups.len() as f64 * 78.0 + 80.0).max(900.0);
    let height = 860.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Arial, sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="16" y="24" font-size="17" font-weight="bold">nwebsocket vs raw tungstenite vs tokio-tungstenite, cargo profile {}</text>"#,
        esc(meta["profile"].as_str().unwrap_or("release (not recorded)"))
    );
    // A number in older results; per scenario ("rtt": 7, ...) since the short scenarios
    // run more often than busy_main.
    let reps = match &meta["reps"] {
        Value::Object(per) => {
            let most = per.values().filter_map(Value::as_u64).max().unwrap_or(0);
            let mut fewer: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
            for (name, n) in per {
                match n.as_u64() {
                    Some(n) if n < most => fewer.entry(n).or_default().push(name),
                    _ => {}
                }
            }
            let fewer: Vec<String> = fewer
                .iter()
                .rev()
                .map(|(n, names)| format!("{n} of {}", names.join(", ")))
                .collect();
            match fewer.is_empty() {
                true => format!("{most}"),
                false => format!("{most} ({})", fewer.join("; ")),
            }
        }
        other => other.as_u64().unwrap_or(0).to_string(),
    };
    let args = meta["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let sub = format!(
        "{} | medians of {reps} interleaved repetitions | load average {} at start, {} at end | args: {}",
        meta["machine"].as_str().unwrap_or("unknown machine"),
        meta["loadavg_start"].as_str().unwrap_or("?"),
        end["loadavg_end"].as_str().unwrap_or("?"),
        if args.is_empty() { "(defaults)" } else { &args }
    );
    let _ = writeln!(
        svg,
        r##"<text x="16" y="42" font-size="10.5" fill="#444">{}</text>"##,
        esc(&sub)
    );
    // Legend.
    let mut lx = 16.0;
    for (c, color) in CLIENTS {
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="52" width="12" height="12" fill="{color}"/><text x="{}" y="62" font-size="11">{c}</text>"#,
            lx + 16.0
        );
        lx += 30.0 + c.len() as f64 * 6.5;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{lx}" y1="58" x2="{}" y2="58" stroke="#d62728" stroke-width="2" stroke-dasharray="4 2"/><text x="{}" y="62" font-size="11">target (issue 17)</text>"##,
        lx + 22.0,
        lx + 26.0
    );

    let ratio_max = ratio_groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.2))
        .fold(2.0_f64, f64::max)
        .min(1000.0);
    let ratio_min = ratio_groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.2))
        .fold(0.5_f64, f64::min)
        .max(0.001);
    panel(
        &mut svg,
        (16.0, 76.0, width - 32.0, 380.0),
        "Throughput and round trips per second, as a ratio of raw tungstenite's in the same run (higher is better)",
        "ratio (log)",
        &ratio_groups,
        &Scale::Log {
            min: floor_tick(ratio_min * 0.8),
            max: ratio_max * 1.25,
        },
        Some((1.0, "raw tungstenite = 1")),
        &fmt_num,
    );
    let half = (width - 48.0) / 2.0;
    let busy_max = busy_groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.2))
        .filter(|v| v.is_finite())
        .fold(10.0_f64, f64::max);
    let busy_min = busy_groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.2))
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::min)
        .max(0.01);
    panel(
        &mut svg,
        (16.0, 480.0, half, 370.0),
        "busy_main, corun: pong latency p99 (lower is better)",
        "ms (log)",
        &busy_groups,
        &Scale::Log {
            min: floor_tick(busy_min * 0.8),
            max: busy_max * 1.4,
        },
        Some((5.0, "target < 5 ms")),
        &fmt_num,
    );
    let rss_max = rss_groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.2))
        .filter(|v| v.is_finite())
        .fold(64.0_f64, f64::max);
    panel(
        &mut svg,
        (32.0 + half, 480.0, half, 370.0),
        "rss_per_conn: KiB per connection (lower is better)",
        "KiB",
        &rss_groups,
        &Scale::Linear {
            max: rss_max * 1.15,
        },
        None,
        &fmt_num,
    );
    let _ = writeln!(
        svg,
        r##"<text x="16" y="{:.0}" font-size="10" fill="#444">split cores: client on CPU 0, server on CPU 1; one core: both on CPU 0; unpinned: both free. Ratios, medians and targets come from the results file only.</text>"##,
        height - 6.0
    );
    let _ = writeln!(svg, "</svg>");
    svg
}
