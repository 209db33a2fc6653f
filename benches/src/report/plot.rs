//! Drawing one plot as SVG with plotters: a line with a circle per point for each series,
//! and the legend below the chart (one line per series), where it hides no data.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Plot, ReportError};

/// One line of a plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend: run label, then what else sets the series apart.
    pub label: String,
    /// The label of the run it comes from.
    pub run: String,
    /// (x, y) in x order.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: u32 = 900;
const CHART_HEIGHT: u32 = 520;
const LEGEND_LINE: u32 = 20;

/// Tableau 10: distinct on white and for the common colour-vision deficiencies.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws `series` (not empty) as `path`.
pub fn draw(plot: &Plot, series: &[Series], path: &Path) -> Result<(), ReportError> {
    let legend_height = LEGEND_LINE * series.len() as u32 + 16;
    let root = SVGBackend::new(path, (WIDTH, CHART_HEIGHT + legend_height)).into_drawing_area();
    let failed = |reason: String| ReportError::Draw { path: path.to_owned(), reason };
    root.fill(&WHITE).map_err(|e| failed(e.to_string()))?;
    let (chart_area, legend_area) = root.split_vertically(CHART_HEIGHT);
    let xs = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), plot.x_log);
    let ys = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), plot.y_log);
    match (plot.x_log, plot.y_log) {
        (false, false) => chart(&chart_area, plot, series, xs, ys),
        (true, false) => chart(&chart_area, plot, series, xs.log_scale(), ys),
        (false, true) => chart(&chart_area, plot, series, xs, ys.log_scale()),
        (true, true) => chart(&chart_area, plot, series, xs.log_scale(), ys.log_scale()),
    }
    .map_err(failed)?;
    legend(&legend_area, series).map_err(failed)?;
    root.present().map_err(|e| failed(e.to_string()))
}

/// The axis range of `values` with some room around them; from 0 on a linear axis whose
/// values are all positive, so that heights compare.
fn range(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let (mut low, mut high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| (low.min(v), high.max(v)));
    if !low.is_finite() || !high.is_finite() {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        // One point, or points close together: at least a decade.
        if high / low < 10.0 {
            let middle = (high * low).sqrt();
            (low, high) = (middle / 3.2, middle * 3.2);
        }
        return low / 1.3..high * 1.3;
    }
    if low > 0.0 {
        low = 0.0;
    }
    if high <= low {
        high = low + 1.0;
    }
    low..high + (high - low) * 0.08
}

fn chart<X, Y>(area: &DrawingArea<SVGBackend<'_>, Shift>, plot: &Plot, series: &[Series], x: X, y: Y) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(plot.title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(plot.x_label)
        .y_desc(plot.y_label)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .light_line_style(RGBColor(238, 238, 238))
        .max_light_lines(4)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, one) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        chart.draw_series(LineSeries::new(one.points.iter().copied(), color.stroke_width(2))).map_err(|e| e.to_string())?;
        chart.draw_series(one.points.iter().map(|&point| Circle::new(point, 4, color.filled()))).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn legend(area: &DrawingArea<SVGBackend<'_>, Shift>, series: &[Series]) -> Result<(), String> {
    for (index, one) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let y = 6 + LEGEND_LINE as i32 * index as i32;
        area.draw(&Rectangle::new([(92, y + 4), (112, y + 12)], color.filled())).map_err(|e| e.to_string())?;
        let text = format!("{} ({} points)", one.label, one.points.len());
        area.draw(&Text::new(text, (120, y), ("sans-serif", 13).into_font())).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A tick label: `30M`, `2.5k`, `0.25`.
fn short(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled.abs() >= 100.0 || scaled.fract() == 0.0 { format!("{scaled:.0}") } else { format!("{scaled:.2}") };
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text };
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(short(30_000_000.0), "30M");
        assert_eq!(short(2_500.0), "2500");
        assert_eq!(short(25_000.0), "25k");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(1.5e6), "1.5M");
    }

    #[test]
    fn ranges_hold_every_value() {
        let linear = range([3.0, 7.0].into_iter(), false);
        assert!(linear.start <= 0.0 && linear.end > 7.0);
        let log = range([5.0].into_iter(), true);
        assert!(log.start > 0.0 && log.start < 5.0 && log.end > 5.0);
        let empty = range(std::iter::empty(), true);
        assert!(empty.start > 0.0 && empty.end > empty.start);
    }
}
