//! `snf plot`: validation NLL vs epoch and vs training time (Fig. 5), per-layer gradient
//! angles (Fig. 3), as PNG.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;
use snf::train::EpochRecord;

use crate::error::{CliError, Result};
use crate::run::RunDir;

#[derive(clap::Args)]
pub struct Args {
    /// Run folders (each with metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output folder [default: the first run folder].
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.runs[0].clone());
    std::fs::create_dir_all(&out).map_err(|e| crate::error::io(&out, e))?;
    let files = plot_runs(&a.runs, &out)?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; should registration fail anyway, text is drawn
        // without it and the drawing reports the error.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const COLORS: [RGBColor; 6] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// Series `i` of `n`: the six-colour palette while it suffices, else `n` hues spread
/// evenly around the colour wheel (so 18 angle series get 18 colours).
fn color_of(i: usize, n: usize) -> RGBColor {
    if n <= COLORS.len() {
        return COLORS[i % COLORS.len()];
    }
    let h = i as f64 / n as f64 * 6.0;
    let x = 1.0 - (h % 2.0 - 1.0).abs();
    let (r, g, b) = match h as usize {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    // darkened (value 0.8) so the lines stand out on white
    let c = |v: f64| (v * 204.0) as u8;
    RGBColor(c(r), c(g), c(b))
}

struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// Write the three plots for `runs` into `out`; returns the files written.
pub fn plot_runs(runs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    let mut data = Vec::new();
    for r in runs {
        let name = r.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| r.display().to_string());
        data.push((name, RunDir::new(r.clone()).read_metrics()?));
    }
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let by_epoch: Vec<Series> =
        data.iter().map(|(n, h)| Series { label: n.clone(), points: h.iter().map(|r| (r.epoch as f64, r.val_nll)).filter(finite).collect() }).collect();
    let by_time: Vec<Series> = data
        .iter()
        .map(|(n, h)| {
            let mut t = 0.0;
            let points = h
                .iter()
                .map(|r: &EpochRecord| {
                    t += r.train_seconds;
                    (t, r.val_nll)
                })
                .filter(finite)
                .collect();
            Series { label: n.clone(), points }
        })
        .collect();
    let mut angles = Vec::new();
    for (n, h) in &data {
        let mut layers: Vec<usize> = h.iter().flat_map(|r| r.angles.iter().map(|a| a.0)).collect();
        layers.sort_unstable();
        layers.dedup();
        for k in layers {
            for (what, w_only) in [("all blocks", false), ("W only", true)] {
                let points = h
                    .iter()
                    .filter_map(|r| {
                        let list = if w_only { &r.angles_w } else { &r.angles };
                        list.iter().find(|a| a.0 == k).map(|a| (r.epoch as f64, a.1))
                    })
                    .filter(finite)
                    .collect();
                angles.push(Series { label: format!("{n} layer {k} ({what})"), points });
            }
        }
    }
    let mut files = vec![out.join("nll_vs_epoch.png"), out.join("nll_vs_time.png")];
    line_chart(&files[0], "Validation NLL vs epoch", "epoch", "validation NLL (nats)", &by_epoch, false)?;
    line_chart(&files[1], "Validation NLL vs training time", "training time (s)", "validation NLL (nats)", &by_time, false)?;
    // exact-gradient runs have no second gradient to compare with: no angle plot
    let stale = out.join("angles.png");
    if angles.iter().any(|s| !s.points.is_empty()) {
        line_chart(&stale, "SNF vs exact gradient angle (Fig. 3)", "epoch", "angle (degrees, log scale)", &angles, true)?;
        files.push(stale);
    } else if stale.is_file() {
        std::fs::remove_file(&stale).map_err(|e| crate::error::io(&stale, e))?;
    }
    Ok(files)
}

fn line_chart(path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Series], log_y: bool) -> Result<()> {
    if log_y {
        // a log axis needs positive values; an angle of exactly 0 is drawn at the floor
        let floor = |s: &Series| Series { label: s.label.clone(), points: s.points.iter().map(|&(x, y)| (x, y.max(1e-4))).collect() };
        let series: Vec<Series> = series.iter().map(floor).collect();
        return draw(path, title, x_desc, y_desc, &series, true);
    }
    draw(path, title, x_desc, y_desc, series, false)
}

fn draw(path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Series], log_y: bool) -> Result<()> {
    let err = |e: String| CliError::Image { path: path.display().to_string(), reason: e };
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in pts() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let tmp = path.with_extension("tmp.png");
    let root = BitMapBackend::new(&tmp, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let builder = |root| {
        let mut b = ChartBuilder::on(root);
        b.caption(title, ("sans-serif", 24)).margin(16).x_label_area_size(48).y_label_area_size(80);
        b
    };
    if log_y {
        let (y0, y1) = (y0 / 1.5, (y1 * 1.5).max(y0 * 3.0));
        let chart = builder(&root).build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(|e| err(e.to_string()))?;
        finish(chart, x_desc, y_desc, series, &err)?;
    } else {
        // at least half a nat (or 0.5 % of the value) either side: one epoch is one
        // point, not a zoom into rounding noise
        let pad = ((y1 - y0) * 0.05).max(y1.abs().max(y0.abs()) * 0.005).max(0.5);
        let chart = builder(&root).build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad)).map_err(|e| err(e.to_string()))?;
        finish(chart, x_desc, y_desc, series, &err)?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    drop(root);
    std::fs::rename(&tmp, path).map_err(|e| crate::error::io(path, e))
}

fn finish<'a, Y>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    err: &dyn Fn(String) -> CliError,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    {
        {
            chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).label_style(("sans-serif", 15)).draw().map_err(|e| err(e.to_string()))?;
            for (i, s) in series.iter().enumerate() {
                let color = color_of(i, series.len());
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| err(e.to_string()))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(e.to_string()))?;
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .draw()
                    .map_err(|e| err(e.to_string()))?;
            }
        }
    }
    Ok(())
}
