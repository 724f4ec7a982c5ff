//! Minimal SVG charts for the report: grouped bars and lines, no dependencies.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 90.0;
const TOP: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#9e9e9e", "#e69f00", "#56b4e9", "#009e73", "#0072b2", "#d55e00", "#cc79a7", "#000000",
];

/// The same colour for a balancer in every chart; other series by position.
fn colour(name: &str, position: usize) -> &'static str {
    match name {
        "none" => COLOURS[0],
        "eplb" => COLOURS[1],
        "eplb-oracle" => COLOURS[2],
        "ultraep" => COLOURS[3],
        "ideal" => COLOURS[4],
        "lplb" => COLOURS[6],
        "eplb-replace" => COLOURS[7],
        _ => COLOURS[position % COLOURS.len()],
    }
}

/// `max` rounded up to two significant digits, so axes end on a tidy value.
fn tidy(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let scale = 10f64.powf(max.log10().floor() - 1.0);
    (max / scale).ceil() * scale
}

/// A chart of `series` (name, one value per category) over `categories`, as grouped bars.
pub fn grouped_bars(
    title: &str,
    unit: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let max = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .fold(0.0_f64, f64::max);
    let max = tidy(max);
    let mut svg = header(title, unit, 0.0, max);
    let plot_width = WIDTH - LEFT - 20.0;
    let group = plot_width / categories.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = LEFT + c as f64 * group + group * 0.1;
        for (s, (_, values)) in series.iter().enumerate() {
            let value = values.get(c).copied().unwrap_or(0.0);
            let height = value / max * (HEIGHT - TOP - BOTTOM);
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {:.3}</title></rect>"#,
                x0 + s as f64 * bar,
                HEIGHT - BOTTOM - height,
                bar * 0.95,
                height,
                colour(&series[s].0, s),
                escape(&series[s].0),
                value
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" transform="rotate(35 {:.1} {:.1})">{}</text>"#,
            x0,
            HEIGHT - BOTTOM + 14.0,
            x0,
            HEIGHT - BOTTOM + 14.0,
            escape(category)
        );
    }
    legend(&mut svg, series.iter().map(|(name, _)| name.as_str()));
    svg.push_str("</svg>\n");
    svg
}

/// A chart of `series` (name, one value per point) as lines over points `0..n`.
///
/// The y axis runs from `floor` (1.0 for an imbalance, whose best is 1) to the largest value,
/// and every point's x position is labelled with its index.
pub fn lines(
    title: &str,
    unit: &str,
    x_label: &str,
    floor: f64,
    series: &[(String, Vec<f64>)],
) -> String {
    let max = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .fold(floor, f64::max);
    let max = floor + tidy(max - floor);
    let points = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let mut svg = header(title, unit, floor, max);
    let plot_width = WIDTH - LEFT - 20.0;
    for (s, (name, values)) in series.iter().enumerate() {
        let path: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + i as f64 / (points - 1) as f64 * plot_width,
                    HEIGHT - BOTTOM - (value - floor) / (max - floor) * (HEIGHT - TOP - BOTTOM)
                )
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            colour(name, s),
            path.join(" "),
            escape(name)
        );
    }
    for i in 0..points {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{i}</text>"#,
            LEFT + i as f64 / (points - 1) as f64 * plot_width,
            HEIGHT - BOTTOM + 14.0,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
        LEFT + plot_width / 2.0 - 30.0,
        HEIGHT - BOTTOM + 30.0,
        escape(x_label)
    );
    legend(&mut svg, series.iter().map(|(name, _)| name.as_str()));
    svg.push_str("</svg>\n");
    svg
}

fn header(title: &str, unit: &str, floor: f64, max: f64) -> String {
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="14">{}</text>"#,
        escape(title)
    );
    for tick in 0..=4 {
        let value = floor + (max - floor) * f64::from(tick) / 4.0;
        let y = HEIGHT - BOTTOM - f64::from(tick) / 4.0 * (HEIGHT - TOP - BOTTOM);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="4" y="{:.1}" font-size="10">{value:.2} {}</text>"##,
            WIDTH - 20.0,
            y + 3.0,
            escape(unit)
        );
    }
    svg
}

fn legend<'a>(svg: &mut String, names: impl Iterator<Item = &'a str>) {
    // Under the title, clear of the rotated category labels at the bottom.
    for (i, name) in names.enumerate() {
        let x = LEFT + i as f64 * 120.0;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="32" width="10" height="10" fill="{}"/><text x="{:.1}" y="41" font-size="11">{}</text>"#,
            colour(name, i),
            x + 14.0,
            escape(name)
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
