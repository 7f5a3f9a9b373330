//! The harness's pictures: the PDD CDF of `fs-aware` (one line per mode, x = post-dial delay in
//! ms, linear up to the largest p99.9 because a log scale would hide the tail that matters, y =
//! share of calls; SVG) and the RSS-over-time plot of `soak` (PNG, flood phases shaded, legitimate
//! calls per second below). Text needs a real font with plotters' pure-Rust glyph renderer, which
//! keeps it out of the system's font libraries: [`fonts`] registers a TrueType file found on the
//! machine (Debian's fonts-dejavu-core) once per process.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::fs_aware::ModeRun;

/// Where Debian, Fedora and Arch put a sans-serif TrueType font; `FSROUTE_BENCH_FONT` overrides.
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Registers "sans-serif" for every chart; Err says why no text can be drawn (then no chart is).
pub fn fonts() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let env = std::env::var("FSROUTE_BENCH_FONT").ok();
        let path = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS)
            .find(|p| Path::new(p).is_file())
            .ok_or("no TrueType font found for the charts (apt-get install fonts-dejavu-core, or set FSROUTE_BENCH_FONT)")?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        // plotters keeps registered fonts for the life of the process and wants them 'static:
        // one leaked copy per process, registered once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
}

pub fn pdd_cdf(runs: &[ModeRun], path: &Path) -> Result<String, String> {
    fonts()?;
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

/// Colours of the flood phases (one per kind, in `Flood::ALL` order, then "all floods").
const PHASE_COLOURS: [RGBColor; 7] = [
    RGBColor(150, 150, 150),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(240, 228, 66),
    RGBColor(0, 90, 200),
    RGBColor(204, 121, 167),
    RGBColor(213, 94, 0),
];

/// The soak picture (PNG): fsroute's RSS over time on top, with each flood phase shaded in its
/// kind's colour, the call memory entries /status reports on the right axis, and the run's events
/// (a stop of the floods, fsroute's death) as red lines; legitimate calls completed and failed per
/// second below, on the same time axis.
pub fn soak_rss(r: &crate::soak::SoakResult, path: &Path) -> Result<String, String> {
    fonts()?;
    let samples = &r.samples;
    if samples.len() < 2 {
        return Err("fewer than two samples".into());
    }
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let tmax = samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let rss: Vec<(f64, f64)> = samples.iter().filter(|s| s.rss_kib > 0).map(|s| (s.t_s, s.rss_kib as f64 / 1024.0)).collect();
    let ymax = rss.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.15;
    let per_s = |f: fn(&crate::soak::Sample) -> u64| -> Vec<(f64, f64)> {
        samples.windows(2).map(|w| (w[1].t_s, (f(&w[1]).saturating_sub(f(&w[0]))) as f64 / (w[1].t_s - w[0].t_s).max(1e-3))).collect()
    };
    let ok = per_s(|s| s.calls_ok);
    let failed = per_s(|s| s.calls_failed);
    let cmax = ok.iter().chain(&failed).map(|p| p.1).fold(1.0f64, f64::max) * 1.15;

    let root = BitMapBackend::new(path, (1400, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (top, bottom) = root.split_vertically(590);
    let caption = format!(
        "fsroute soak: RSS over {:.0} s ({:.0} calls/s, floods from 127.0.0.66, SIGHUP every {:.0} s)",
        r.params.duration_s, r.params.rate, r.params.hup_every_s
    );
    let entries: Vec<(f64, f64)> = samples.iter().filter_map(|s| Some((s.t_s, s.call_memory_entries? as f64))).collect();
    let emax = entries.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .right_y_label_area_size(80)
        .build_cartesian_2d(0f64..tmax, 0f64..ymax)
        .map_err(e)?
        .set_secondary_coord(0f64..tmax, 0f64..emax);
    chart.configure_mesh().y_desc("RSS (MiB)").draw().map_err(e)?;
    chart.configure_secondary_axes().y_desc("call memory entries (/status)").draw().map_err(e)?;
    let mut labelled = [false; PHASE_COLOURS.len()];
    for span in &r.phases {
        let Some(slot) = span.slot else { continue };
        let c = PHASE_COLOURS[slot % PHASE_COLOURS.len()];
        let band = Rectangle::new([(span.from_s, 0.0), (span.to_s, ymax)], c.mix(0.25).filled());
        let drawn = chart.draw_series(std::iter::once(band)).map_err(e)?;
        if !std::mem::replace(&mut labelled[slot], true) {
            drawn.label(span.phase).legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.mix(0.5).filled()));
        }
    }
    for ev in &r.events {
        chart.draw_series(LineSeries::new([(ev.t_s, 0.0), (ev.t_s, ymax)], RED.stroke_width(2))).map_err(e)?;
    }
    // Entries that come back down while RSS stays up: memory the process keeps, not state it holds.
    let purple = RGBColor(120, 60, 160);
    chart
        .draw_secondary_series(LineSeries::new(entries, purple.stroke_width(1)))
        .map_err(e)?
        .label("call memory entries (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], purple.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(rss, BLACK.stroke_width(2)))
        .map_err(e)?
        .label("fsroute VmRSS")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;

    let mut calls = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, 0f64..cmax)
        .map_err(e)?;
    calls.configure_mesh().y_desc("legitimate calls/s").x_desc("time (s)").draw().map_err(e)?;
    calls
        .draw_series(LineSeries::new(ok, GREEN.stroke_width(1)))
        .map_err(e)?
        .label("completed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN.stroke_width(2)));
    calls
        .draw_series(LineSeries::new(failed, RED.stroke_width(2)))
        .map_err(e)?
        .label("failed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
    calls
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(path.display().to_string())
}
