//! An SVG chart of one simulated day: workspaces in use, warm-pool members,
//! instance capacity, and what the fleet costs per hour.

use std::fmt::Write as _;

use crate::simulate::Sample;

const W: f64 = 960.0;
const H: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Draws samples of day `day` (0 = the first simulated day, a Monday), with
/// a title and a smaller subtitle line.
pub fn day_chart(title: &str, subtitle: &str, samples: &[Sample], day: u64) -> String {
    let from = day * 86_400;
    let pts: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t < from + 86_400).collect();
    let max_ws = pts.iter().map(|s| s.capacity.max(s.active + s.pool)).max().unwrap_or(1).max(1) as f64 * 1.1;
    let max_cost = pts.iter().map(|s| s.usd_per_hour).fold(0.0f64, f64::max).max(0.01) * 1.1;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: u64| LEFT + (t - from) as f64 / 86_400.0 * pw;
    let y = |v: f64| TOP + ph - v / max_ws * ph;
    let yc = |v: f64| TOP + ph - v / max_cost * ph;
    let path = |f: &dyn Fn(&Sample) -> f64, ys: &dyn Fn(f64) -> f64| {
        let mut d = String::new();
        for (i, s) in pts.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1} ", if i == 0 { "M" } else { "L" }, x(s.t), ys(f(s)));
        }
        d
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(o, r#"<text x="{LEFT}" y="18" font-size="15" font-weight="bold">{}</text>"#, esc(title));
    let _ = writeln!(o, r##"<text x="{LEFT}" y="33" font-size="11" fill="#555">{}</text>"##, esc(subtitle));
    // Axes and grid: hours along the bottom, workspaces left, $/h right.
    for h in (0..=24).step_by(3) {
        let gx = LEFT + h as f64 / 24.0 * pw;
        let _ = writeln!(
            o,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#eee"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{h:02}:00</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    for i in 0..=4 {
        let v = max_ws / 1.1 * i as f64 / 4.0;
        let c = max_cost / 1.1 * i as f64 / 4.0;
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{:.1}" y="{yy:.1}" text-anchor="end" dy="4">{:.0}</text><text x="{:.1}" y="{yy:.1}" dy="4" fill="#b45309">${c:.2}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            v,
            LEFT + pw + 6.0,
            yy = y(v)
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">workspaces</text>"##,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" transform="rotate(90 {:.1} {:.1})" text-anchor="middle" fill="#b45309">fleet $/hour</text>"##,
        W - 12.0,
        TOP + ph / 2.0,
        W - 12.0,
        TOP + ph / 2.0
    );
    let series: [(&str, &str, String); 4] = [
        ("instance capacity", "#2563eb", path(&|s| s.capacity as f64, &y)),
        ("in use + pool", "#16a34a", path(&|s| (s.active + s.pool) as f64, &y)),
        ("in use", "#111827", path(&|s| s.active as f64, &y)),
        ("cost $/h", "#b45309", path(&|s| s.usd_per_hour, &yc)),
    ];
    for (i, (name, color, d)) in series.iter().enumerate() {
        let dash = if *name == "cost $/h" { r#" stroke-dasharray="5,3""# } else { "" };
        let _ = writeln!(o, r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>"#);
        let lx = LEFT + 10.0 + i as f64 * 190.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{ly}" dy="4">{name}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly = H - 12.0
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_every_series_and_scales_to_the_data() {
        let samples: Vec<Sample> = (0..1440)
            .map(|m| {
                let busy = (540..1020).contains(&m);
                Sample {
                    t: m * 60,
                    active: if busy { 100 } else { 5 },
                    pool: 3,
                    instances: if busy { 14 } else { 1 },
                    capacity: if busy { 112 } else { 8 },
                    usd_per_hour: if busy { 2.4 } else { 0.17 },
                }
            })
            .collect();
        let svg = day_chart("ECS <test> & co", "a day", &samples, 0);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("ECS &lt;test&gt; &amp; co"));
        for name in ["instance capacity", "in use + pool", "in use", "cost $/h"] {
            assert!(svg.contains(&format!(">{name}</text>")), "{name}");
        }
        assert_eq!(svg.matches("<path").count(), 4);
        // One point per minute in each series.
        let first_path = svg.split("<path d=\"").nth(1).unwrap();
        assert_eq!(first_path.split('"').next().unwrap().matches('L').count(), 1439);
        // Nothing is drawn outside the plot.
        for p in svg.split("<path d=\"").skip(1) {
            for pt in p.split('"').next().unwrap().split_whitespace() {
                let (px, py) = pt.trim_start_matches(['M', 'L']).split_once(',').unwrap();
                let (px, py): (f64, f64) = (px.parse().unwrap(), py.parse().unwrap());
                assert!((LEFT..=W - RIGHT).contains(&px) && (TOP..=H - BOTTOM).contains(&py), "{px},{py}");
            }
        }
    }
}
