//! The printed table, the JSON file and the charts of `live` and `slow_executors`.

use std::path::Path;

use plotters::{coord::Shift, prelude::*};
use serde_json::Value;

use crate::{
    scenarios::{Sample, K},
    slow_executors::BusyPoint,
    strategy::{BoxError, Strategy},
};

/// Every scalar under `value`, as (dotted path, value), in the map's order.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&path, inner, out);
            }
        }
        scalar => out.push((prefix.to_owned(), scalar.clone())),
    }
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// One row per figure, one column per strategy that has figures in `scenarios`.
pub(crate) fn table(results: &Value, scenarios: &[&str]) -> String {
    let strategies: Vec<Strategy> = Strategy::ALL
        .into_iter()
        .filter(|strategy| {
            scenarios.iter().any(|scenario| {
                results.get(strategy.name()).and_then(|s| s.get(scenario)).is_some()
            })
        })
        .collect();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for scenario in scenarios {
        let mut paths: Vec<String> = Vec::new();
        let mut columns: Vec<Vec<(String, Value)>> = Vec::new();
        for &strategy in &strategies {
            let mut flat = Vec::new();
            if let Some(figures) = results.get(strategy.name()).and_then(|s| s.get(scenario)) {
                flatten(scenario, figures, &mut flat);
            }
            for (path, _) in &flat {
                if !paths.contains(path) {
                    paths.push(path.clone());
                }
            }
            columns.push(flat);
        }
        for path in paths {
            let cells = columns
                .iter()
                .map(|flat| cell(flat.iter().find(|(p, _)| *p == path).map(|(_, v)| v)))
                .collect();
            rows.push((path, cells));
        }
    }
    let width = rows.iter().map(|(path, _)| path.len()).max().unwrap_or(10);
    // Long notes overflow their column rather than widen every column.
    let cell_width = rows
        .iter()
        .flat_map(|(_, cells)| cells.iter().map(String::len))
        .filter(|len| *len <= 16)
        .max()
        .unwrap_or(9)
        .max(9);
    let mut out = format!("{:width$}", "figure");
    for strategy in &strategies {
        out.push_str(&format!("  {:>cell_width$}", strategy.name()));
    }
    out.push('\n');
    for (path, cells) in rows {
        out.push_str(&format!("{path:width$}"));
        for cell in cells {
            out.push_str(&format!("  {cell:>cell_width$}"));
        }
        out.push('\n');
    }
    out
}

/// One panel of a chart: a line per strategy over the chart's x axis.
struct Panel<'a> {
    caption: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    y_max: f64,
    /// A horizontal line at this height: the goal.
    reference: Option<f64>,
    lines: Vec<(Strategy, Vec<(f64, f64)>)>,
}

fn style(strategy: Strategy) -> ShapeStyle {
    match strategy {
        Strategy::Ours => BLUE.stroke_width(2),
        Strategy::Pr1277 => RED.stroke_width(2),
        Strategy::Unbounded | Strategy::Devshardd => BLACK.stroke_width(1),
    }
}

fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    x_max: f64,
    panel: &Panel<'_>,
) -> Result<(), BoxError> {
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..x_max, 0f64..panel.y_max)?;
    chart.configure_mesh().x_desc(panel.x_desc).y_desc(panel.y_desc).draw()?;
    if let Some(y) = panel.reference {
        chart.draw_series(LineSeries::new([(0.0, y), (x_max, y)], BLACK.mix(0.4)))?;
    }
    for (strategy, points) in &panel.lines {
        let color = style(*strategy);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color))?
            .label(strategy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    Ok(())
}

/// `live`: in-flight count and live wait over time, `ours` against `pr1277`.
pub(crate) fn chart(
    path: &Path,
    series: &[(Strategy, Vec<Sample>)],
    window_s: f64,
) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let x_max =
        series.iter().flat_map(|(_, samples)| samples.iter().map(|s| s.t)).fold(window_s, f64::max);
    let x_desc = "seconds since live arrivals began";
    let slots = Panel {
        caption: "live: validations holding a slot",
        x_desc,
        y_desc: "slots",
        y_max: K as f64 * 1.15,
        reference: None,
        lines: series
            .iter()
            .map(|(strategy, samples)| {
                (*strategy, samples.iter().map(|s| (s.t, s.in_flight as f64)).collect())
            })
            .collect(),
    };
    draw(&top, x_max, &slots)?;
    let waits = Panel {
        caption: "live: latest wait for a slot / S (goal: p99 <= 1)",
        x_desc,
        y_desc: "wait / S",
        y_max: series
            .iter()
            .flat_map(|(_, samples)| samples.iter().filter_map(|s| s.wait_over_service))
            .fold(1.2f64, f64::max)
            * 1.1,
        reference: Some(1.0),
        lines: series
            .iter()
            .map(|(strategy, samples)| {
                let points =
                    samples.iter().filter_map(|s| s.wait_over_service.map(|w| (s.t, w))).collect();
                (*strategy, points)
            })
            .collect(),
    };
    draw(&bottom, x_max, &waits)?;
    root.present()?;
    Ok(())
}

/// `slow_executors`: the ML node's busy fraction over time, `ours` against `pr1277`.
pub(crate) fn busy_chart(
    path: &Path,
    series: &[(Strategy, Vec<BusyPoint>)],
) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (960, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|&(t, _)| t))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.02;
    let busy = Panel {
        caption: "slow_executors: replays in flight / K, mean per bin (goal: ml_busy >= 0.95)",
        x_desc: "seconds since the first admission",
        y_desc: "busy fraction",
        y_max: 1.1,
        reference: Some(0.95),
        lines: series.to_vec(),
    };
    draw(&root, x_max, &busy)?;
    root.present()?;
    Ok(())
}
