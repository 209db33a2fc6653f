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

/// Tableau 20's dark shades, then its light ones: the first ten are distinct on white and
/// for the common colour-vision deficiencies; a plot with more series repeats none before 20.
const COLORS: [RGBColor; 20] = [
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
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
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
    // Counts on a linear axis (workers, threads): no ticks between them.
    let x_counts = !plot.x_log && series.iter().flat_map(|s| &s.points).all(|p| p.0.fract() == 0.0);
    let x_tick = tick(plot.x_log.then(|| decades(&xs)), x_counts);
    let y_tick = tick(plot.y_log.then(|| decades(&ys)), false);
    let ticks = (&*x_tick, &*y_tick);
    match (plot.x_log, plot.y_log) {
        (false, false) => chart(&chart_area, plot, series, xs, ys, ticks),
        (true, false) => chart(&chart_area, plot, series, xs.log_scale(), ys, ticks),
        (false, true) => chart(&chart_area, plot, series, xs, ys.log_scale(), ticks),
        (true, true) => chart(&chart_area, plot, series, xs.log_scale(), ys.log_scale(), ticks),
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
        // From a power of ten (plotters places log ticks from the first one in the range on),
        // over at least a decade.
        let start = 10f64.powf((low / 1.3).log10().floor());
        return start..(high * 1.3).max(start * 10.0);
    }
    if low > 0.0 {
        low = 0.0;
    }
    if high <= low {
        high = low + 1.0;
    }
    low..high + (high - low) * 0.08
}

/// Formats a tick label ("" for none).
type Tick = dyn Fn(&f64) -> String;

/// How many powers of ten a range spans.
fn decades(range: &Range<f64>) -> f64 {
    (range.end / range.start).log10()
}

/// The tick labels of an axis: on a log axis spanning `Some(decades)`, where more than two
/// would crowd, only at 1, 2, 3 and 5 times a power of ten; on an axis of counts only at whole
/// numbers.
fn tick(log_decades: Option<f64>, counts: bool) -> Box<Tick> {
    if let Some(decades) = log_decades {
        let mantissas: &'static [f64] = if decades > 2.0 { &[1.0, 2.0, 3.0, 5.0] } else { &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] };
        Box::new(move |v: &f64| {
            let mantissa = v / 10f64.powf(v.log10().floor());
            let whole = mantissa.round();
            if (mantissa - whole).abs() < 1e-6 && mantissas.contains(&whole) {
                short(*v)
            } else {
                String::new()
            }
        })
    } else if counts {
        Box::new(|v: &f64| if (v - v.round()).abs() < 1e-6 { short(v.round()) } else { String::new() })
    } else {
        Box::new(|v: &f64| short(*v))
    }
}

fn chart<X, Y>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    plot: &Plot,
    series: &[Series],
    x: X,
    y: Y,
    (x_tick, y_tick): (&Tick, &Tick),
) -> Result<(), String>
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
        .x_label_formatter(x_tick)
        .y_label_formatter(y_tick)
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
    fn log_axes_label_only_1_2_3_5_per_decade() {
        let log = tick(Some(3.0), false);
        let labelled: Vec<String> = [100e3, 200e3, 300e3, 400e3, 500e3, 700e3, 1e6, 3e6].iter().map(&*log).collect();
        assert_eq!(labelled, ["100k", "200k", "300k", "", "500k", "", "1M", "3M"]);
        assert_eq!(tick(Some(1.0), false)(&400.0), "400", "a narrow log axis labels every tick");
        let counts = tick(None, true);
        assert_eq!((counts(&2.0), counts(&1.999_999_9), counts(&1.5)), ("2".to_owned(), "2".to_owned(), String::new()));
    }

    #[test]
    fn ranges_hold_every_value() {
        let linear = range([3.0, 7.0].into_iter(), false);
        assert!(linear.start <= 0.0 && linear.end > 7.0);
        let log = range([5.0].into_iter(), true);
        assert!(log.start > 0.0 && log.start < 5.0 && log.end > 5.0);
        let log = range([347.0, 648.0].into_iter(), true);
        assert_eq!(log.start, 100.0, "from a power of ten");
        assert!(log.end > 648.0);
        let empty = range(std::iter::empty(), true);
        assert!(empty.start > 0.0 && empty.end > empty.start);
    }
}
