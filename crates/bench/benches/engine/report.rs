//! The printed table, the JSON file and the `live` chart.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::{
    scenarios::{Sample, K},
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

/// In-flight count and live wait over time, `ours` against `pr1277`.
pub(crate) fn chart(
    path: &Path,
    series: &[(Strategy, Vec<Sample>)],
    window_s: f64,
) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let style = |strategy: Strategy| match strategy {
        Strategy::Ours => BLUE.stroke_width(2),
        Strategy::Pr1277 => RED.stroke_width(2),
        Strategy::Unbounded | Strategy::Devshardd => BLACK.stroke_width(1),
    };
    let x_max =
        series.iter().flat_map(|(_, samples)| samples.iter().map(|s| s.t)).fold(window_s, f64::max);

    let mut slots = ChartBuilder::on(&top)
        .caption("live: validations holding a slot", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..x_max, 0f64..(K as f64 * 1.15))?;
    slots.configure_mesh().x_desc("seconds since live arrivals began").y_desc("slots").draw()?;
    for (strategy, samples) in series {
        let color = style(*strategy);
        slots
            .draw_series(LineSeries::new(samples.iter().map(|s| (s.t, s.in_flight as f64)), color))?
            .label(strategy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    slots.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;

    let y_max = series
        .iter()
        .flat_map(|(_, samples)| samples.iter().filter_map(|s| s.wait_over_service))
        .fold(1.2f64, f64::max)
        * 1.1;
    let mut waits = ChartBuilder::on(&bottom)
        .caption("live: latest wait for a slot / S (goal: p99 <= 1)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    waits.configure_mesh().x_desc("seconds since live arrivals began").y_desc("wait / S").draw()?;
    waits.draw_series(LineSeries::new([(0.0, 1.0), (x_max, 1.0)], BLACK.mix(0.4)))?;
    for (strategy, samples) in series {
        let color = style(*strategy);
        waits
            .draw_series(LineSeries::new(
                samples.iter().filter_map(|s| s.wait_over_service.map(|w| (s.t, w))),
                color,
            ))?
            .label(strategy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    waits.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
