//! Plots as SVG, written out directly: latency against rate, one line per broker.

use std::fmt::Write;

/// One broker's points: (delivered msg/s, latency ms).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

/// A linear rate axis from 0, a logarithmic latency axis (decades), a dashed line at
/// `limit_ms`, and a legend.
pub fn latency_against_rate(title: &str, series: &[Series], limit_ms: f64) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let max_rate = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let latencies = all.map(|p| p.1).filter(|v| *v > 0.0 && v.is_finite());
    let lo = latencies.clone().fold(limit_ms, f64::min).log10().floor();
    let hi = latencies
        .fold(limit_ms, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x_max = nice_ceiling(max_rate);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |rate: f64| LEFT + rate / x_max * plot_w;
    let y = |ms: f64| TOP + (hi - ms.max(10f64.powf(lo)).log10()) / (hi - lo) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Axes, ticks and grid.
    for i in 0..=5 {
        let rate = x_max * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            x(rate),
            TOP + plot_h,
            TOP + plot_h + 18.0,
            thousands(rate)
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let ms = 10f64.powf(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#eee"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(ms),
            LEFT + plot_w,
            LEFT - 6.0,
            y(ms) + 4.0,
            trim(ms)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">delivered messages a second</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">p99 latency, ms (log)</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#888" stroke-dasharray="6 4"/><text x="{2:.1}" y="{3:.1}" fill="#888">{4} ms</text>"##,
        y(limit_ms),
        LEFT + plot_w,
        LEFT + plot_w + 6.0,
        y(limit_ms) + 4.0,
        trim(limit_ms)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1 > 0.0 && p.1.is_finite())
            .map(|&(r, ms)| format!("{:.1},{:.1}", x(r), y(ms)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                svg,
                r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#
            );
        }
        let ly = TOP + 20.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{colour}" stroke-width="2"/><text x="{3:.1}" y="{4:.1}">{5}</text>"#,
            LEFT + plot_w + 10.0,
            ly,
            LEFT + plot_w + 30.0,
            LEFT + plot_w + 36.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn thousands(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_and_lines() {
        let svg = latency_against_rate(
            "a <test>",
            &[
                Series {
                    name: "one".into(),
                    points: vec![(1000.0, 0.5), (2000.0, 3.0), (4000.0, 40.0)],
                },
                Series {
                    name: "two".into(),
                    points: vec![],
                },
            ],
            10.0,
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt;"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">5k<"), "the rate axis ends at 5,000");
        assert!(
            svg.contains(">0.1<") && svg.contains(">100<"),
            "decades 0.1 to 100 ms"
        );
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(4000.0), 5000.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(120_000.0), 200_000.0);
        assert_eq!(thousands(2500.0), "2.5k");
    }
}
