//! The PDD CDF picture of `fs-aware`: one line per mode, x = post-dial delay (ms, log scale
//! would hide the tail that matters, so linear up to the largest p99.9), y = share of calls.
//! SVG through plotters' SVG backend, which writes text as SVG elements and needs no system
//! fonts (a bitmap backend would).

use std::path::Path;

use plotters::prelude::*;

use crate::fs_aware::ModeRun;

pub fn pdd_cdf(runs: &[ModeRun], path: &Path) -> Result<String, String> {
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .filter_map(|r| {
            let h = r.uac.as_ref()?.pdd_hist.as_ref()?;
            if h.is_empty() {
                return None;
            }
            let pts: Vec<(f64, f64)> = (0..=1000)
                .map(|i| {
                    let q = i as f64 / 1000.0;
                    (h.value_at_quantile(q) as f64 / 1000.0, q)
                })
                .collect();
            Some((format!("{} ({} s hb)", r.mode, r.heartbeat_s), pts))
        })
        .collect();
    if series.is_empty() {
        return Err("no PDD data".into());
    }
    let xmax = runs
        .iter()
        .filter_map(|r| r.uac.as_ref()?.pdd_hist.as_ref().map(|h| h.value_at_quantile(0.999) as f64 / 1000.0))
        .fold(1.0f64, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("fs-aware: post-dial delay (INVITE -> first 18x, retries included), CDF", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("PDD (ms)")
        .y_desc("share of calls")
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, GREEN, MAGENTA];
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.into_iter().filter(|(x, _)| *x <= xmax), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(path.display().to_string())
}
