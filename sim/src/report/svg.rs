//! Small, dependency-free SVG charts. Hand-written rather than a plotting crate: the output
//! must be byte-identical run after run, and three chart shapes do not justify the build cost.

use std::fmt::Write;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;
const COLOURS: [&str; 4] = ["#2563eb", "#dc2626", "#059669", "#d97706"];

/// One line of a chart.
#[derive(Debug)]
pub struct Line<'a> {
    pub label: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart; `step` draws each segment as a step (for CDFs).
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line<'_>],
    y_max: Option<f64>,
    step: bool,
) -> String {
    let x_max = nice_axis(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let y_max = y_max.unwrap_or_else(|| {
        nice_axis(
            lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| p.1))
                .fold(0.0, f64::max),
        )
    });
    let mut svg = frame(title, x_label, y_label, x_max, y_max);
    for (i, line) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut path = String::new();
        let mut previous: Option<(f64, f64)> = None;
        for &(x, y) in &line.points {
            let (px, py) = (sx(x, x_max), sy(y, y_max));
            match previous {
                None => write!(path, "M{px:.1},{py:.1}").unwrap(),
                Some((_, last_y)) if step => {
                    write!(path, " L{px:.1},{last_y:.1} L{px:.1},{py:.1}").unwrap()
                }
                Some(_) => write!(path, " L{px:.1},{py:.1}").unwrap(),
            }
            previous = Some((px, py));
        }
        writeln!(
            svg,
            r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>"#
        )
        .unwrap();
        let legend_y = TOP + 14.0 + 16.0 * i as f64;
        writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            WIDTH - RIGHT - 150.0,
            legend_y - 4.0,
            WIDTH - RIGHT - 134.0,
            legend_y,
            escape(line.label)
        )
        .unwrap();
    }
    svg.push_str("</svg>\n");
    svg
}

/// A bar chart with one labelled bar per category.
pub fn bars(title: &str, y_label: &str, bars: &[(&str, f64)]) -> String {
    let y_max = nice_axis(bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0));
    let mut svg = frame(title, "", y_label, 0.0, y_max);
    let plot_width = WIDTH - LEFT - RIGHT;
    let slot = plot_width / bars.len().max(1) as f64;
    for (i, (label, value)) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let y = sy(*value, y_max);
        let height = HEIGHT - BOTTOM - y;
        writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{height:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            slot * 0.7,
            COLOURS[i % COLOURS.len()],
            x + slot * 0.35,
            HEIGHT - BOTTOM + 16.0,
            escape(label),
            x + slot * 0.35,
            y - 4.0,
            format_number(*value)
        )
        .unwrap();
    }
    svg.push_str("</svg>\n");
    svg
}

/// The opening tag, background and title every chart starts with.
fn header(title: &str) -> String {
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" role="img" aria-label="{}">"#,
        escape(title)
    )
    .unwrap();
    writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    )
    .unwrap();
    writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    )
    .unwrap();
    svg
}

fn frame(title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64) -> String {
    let mut svg = header(title);
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);
    writeln!(
        svg,
        r##"<path d="M{x0},{y0} L{x0},{y1} L{x1},{y1}" fill="none" stroke="#333"/>"##
    )
    .unwrap();
    for k in 0..=4 {
        let value = y_max * f64::from(k) / 4.0;
        let y = sy(value, y_max);
        writeln!(
            svg,
            r##"<path d="M{x0},{y:.1} L{x1},{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            x0 - 4.0,
            y + 3.0,
            format_number(value)
        )
        .unwrap();
        if x_max > 0.0 {
            let xv = x_max * f64::from(k) / 4.0;
            writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                sx(xv, x_max),
                y1 + 14.0,
                format_number(xv)
            )
            .unwrap();
        }
    }
    writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 8.0,
        escape(x_label)
    )
    .unwrap();
    writeln!(
        svg,
        r#"<text x="14" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    )
    .unwrap();
    svg
}

/// The smallest axis end at or above `max` whose four ticks are round numbers (1, 2, 2.5 or 5
/// times a power of ten).
fn nice_axis(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw_step = max / 4.0;
    // libm, not the platform maths library: the SVG must be the same bytes everywhere.
    let magnitude = libm::pow(10.0, libm::floor(libm::log10(raw_step)));
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw_step)
        .unwrap_or(10.0 * magnitude);
    step * 4.0
}

fn sx(x: f64, x_max: f64) -> f64 {
    LEFT + (WIDTH - LEFT - RIGHT) * (x / x_max)
}

fn sy(y: f64, y_max: f64) -> f64 {
    HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (y / y_max).min(1.0)
}

fn format_number(value: f64) -> String {
    if value >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One cell of a heatmap.
#[derive(Debug)]
pub struct Cell {
    pub x: usize,
    pub y: usize,
    /// Shade, 0 (light) to 1 (dark).
    pub shade: f64,
    pub label: String,
    /// Drawn with a heavy outline (e.g. the recommended point).
    pub marked: bool,
    /// Drawn hatched-out (e.g. an SLO missed), and said in the label, not by colour alone.
    pub failed: bool,
}

/// A grid of labelled cells with axis ticks, for a sweep over two knobs.
pub fn heatmap(
    title: &str,
    x_label: &str,
    x_ticks: &[String],
    y_label: &str,
    y_ticks: &[String],
    cells: &[Cell],
) -> String {
    let mut svg = header(title);
    let columns = x_ticks.len().max(1) as f64;
    let rows = y_ticks.len().max(1) as f64;
    let cell_w = (WIDTH - LEFT - RIGHT) / columns;
    let cell_h = (HEIGHT - TOP - BOTTOM) / rows;
    for cell in cells {
        let x = LEFT + cell_w * cell.x as f64;
        // Row 0 at the bottom, as on a plot.
        let y = HEIGHT - BOTTOM - cell_h * (cell.y as f64 + 1.0);
        let level = (255.0 - 200.0 * cell.shade.clamp(0.0, 1.0)) as u8;
        let fill = format!("#{level:02x}{level:02x}ff");
        let stroke = if cell.marked {
            r#" stroke="black" stroke-width="3""#
        } else {
            r##" stroke="#fff""##
        };
        writeln!(svg, r#"<rect x="{x:.1}" y="{y:.1}" width="{cell_w:.1}" height="{cell_h:.1}" fill="{fill}"{stroke}/>"#).unwrap();
        if cell.failed {
            writeln!(
                svg,
                r##"<path d="M{x:.1},{y:.1} L{:.1},{:.1}" stroke="#b91c1c" stroke-width="1.5"/>"##,
                x + cell_w,
                y + cell_h
            )
            .unwrap();
        }
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            x + cell_w / 2.0,
            y + cell_h / 2.0 + 3.0,
            escape(&cell.label)
        )
        .unwrap();
    }
    for (i, tick) in x_ticks.iter().enumerate() {
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            LEFT + cell_w * (i as f64 + 0.5),
            HEIGHT - BOTTOM + 14.0,
            escape(tick)
        )
        .unwrap();
    }
    for (i, tick) in y_ticks.iter().enumerate() {
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"#,
            LEFT - 4.0,
            HEIGHT - BOTTOM - cell_h * (i as f64 + 0.5) + 3.0,
            escape(tick)
        )
        .unwrap();
    }
    writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 8.0,
        escape(x_label)
    )
    .unwrap();
    writeln!(
        svg,
        r#"<text x="14" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(y_label)
    )
    .unwrap();
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::nice_axis;

    #[test]
    fn axes_end_on_round_ticks() {
        assert_eq!(nice_axis(39.5), 40.0);
        assert_eq!(nice_axis(168.0), 200.0);
        assert_eq!(nice_axis(0.87), 1.0);
        assert_eq!(nice_axis(3.44), 4.0);
        assert_eq!(nice_axis(0.0), 1.0);
        assert_eq!(nice_axis(f64::NAN), 1.0);
    }
}
