//! PNG figures of a run, drawn with plotters into memory and written atomically. Text uses the
//! bundled DejaVu Sans, so the pictures look the same on a machine without any system font.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::evaluate::SamplePrediction;
use crate::state::EpochRecord;
use crate::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
pub(crate) const FAMILY: &str = "sans-serif";

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled file is a valid TrueType font; a failure here is a build defect.
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("bundled DejaVuSans.ttf does not parse"));
    });
}

pub(crate) fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Renders `draw` into a `w x h` RGB canvas and writes it as a PNG, atomically.
fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(
        &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>,
) -> Result<()> {
    register_font();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        draw(&root).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| plot_err(path, "buffer size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| plot_err(path, e))?;
    fer_data::atomic::write_atomic(path, png.get_ref())?;
    Ok(())
}

fn s<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Loss (left) and validation metrics (right) per epoch of one stage.
pub fn curves(path: &Path, stage: &str, records: &[&EpochRecord]) -> Result<()> {
    render(path, (1000, 420), |root| {
        let (left, right) = root.split_horizontally(500);
        let n = records.len().max(1) as f64;
        let xs: Vec<f64> = records.iter().map(|r| r.epoch as f64).collect();
        let series: Vec<(&str, Vec<Option<f64>>, RGBColor)> = vec![
            (
                "total",
                records.iter().map(|r| Some(r.train_loss)).collect(),
                BLACK,
            ),
            ("ce", records.iter().map(|r| r.train_ce).collect(), BLUE),
            ("va", records.iter().map(|r| r.train_va).collect(), RED),
            (
                "aux",
                records.iter().map(|r| r.train_aux).collect(),
                RGBColor(0, 150, 0),
            ),
        ];
        line_panel(
            &left,
            &format!("{stage}: training loss"),
            &xs,
            n,
            &series,
            None,
        )?;
        let metrics: Vec<(&str, Vec<Option<f64>>, RGBColor)> = vec![
            (
                "accuracy",
                records.iter().map(|r| r.val_accuracy).collect(),
                BLUE,
            ),
            (
                "macro F1",
                records.iter().map(|r| r.val_macro_f1).collect(),
                RGBColor(0, 150, 0),
            ),
            (
                "CCC valence",
                records.iter().map(|r| r.val_valence_ccc).collect(),
                RED,
            ),
            (
                "CCC arousal",
                records.iter().map(|r| r.val_arousal_ccc).collect(),
                RGBColor(200, 120, 0),
            ),
        ];
        line_panel(
            &right,
            &format!("{stage}: validation"),
            &xs,
            n,
            &metrics,
            Some((0.0, 1.0)),
        )
    })
}

fn line_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    xs: &[f64],
    n: f64,
    series: &[(&str, Vec<Option<f64>>, RGBColor)],
    y_range: Option<(f64, f64)>,
) -> std::result::Result<(), String> {
    let vals = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().flatten().copied());
    let (lo, hi) = y_range.unwrap_or_else(|| {
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if lo.is_finite() {
            (lo.min(0.0), hi * 1.05 + 1e-9)
        } else {
            (0.0, 1.0)
        }
    });
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5..n + 0.5, lo..hi)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(s)?;
    for (name, v, color) in series {
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .zip(v)
            .filter_map(|(x, y)| y.map(|y| (*x, y)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(s)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(s)?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(s)
}

/// Predicted against true valence (left) and arousal (right) on the evaluated split.
pub fn va_scatter(path: &Path, samples: &[SamplePrediction], ccc: (f64, f64)) -> Result<()> {
    render(path, (900, 450), |root| {
        let (l, r) = root.split_horizontally(450);
        let v: Vec<(f64, f64)> = samples
            .iter()
            .filter(|p| p.true_valence.is_finite())
            .map(|p| (p.true_valence as f64, p.valence as f64))
            .collect();
        let a: Vec<(f64, f64)> = samples
            .iter()
            .filter(|p| p.true_arousal.is_finite())
            .map(|p| (p.true_arousal as f64, p.arousal as f64))
            .collect();
        scatter_panel(&l, &format!("valence (CCC {:.3})", ccc.0), &v, RED)?;
        scatter_panel(&r, &format!("arousal (CCC {:.3})", ccc.1), &a, BLUE)
    })
}

fn scatter_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    pts: &[(f64, f64)],
    color: RGBColor,
) -> std::result::Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(-1.05..1.05, -1.05..1.05)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("truth")
        .y_desc("prediction")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(s)?;
    chart
        .draw_series(LineSeries::new(
            vec![(-1.0, -1.0), (1.0, 1.0)],
            BLACK.mix(0.5),
        ))
        .map_err(s)?;
    chart
        .draw_series(
            pts.iter()
                .map(|p| Circle::new(*p, 2, color.mix(0.35).filled())),
        )
        .map_err(s)?;
    Ok(())
}

/// Row-normalised confusion matrix (rows = truth), counts printed in the cells.
pub fn confusion(path: &Path, cm: &[Vec<u64>], classes: &[String]) -> Result<()> {
    let k = cm.len();
    let cell = 64i32;
    let (x0, y0) = (130i32, 60i32);
    let w = (x0 + cell * k as i32 + 20) as u32;
    let h = (y0 + cell * k as i32 + 110) as u32;
    render(path, (w, h), |root| {
        let title = TextStyle::from((FAMILY, 20).into_font()).color(&BLACK);
        root.draw_text(
            "confusion matrix (rows: truth, columns: prediction)",
            &title,
            (10, 15),
        )
        .map_err(s)?;
        let small = TextStyle::from((FAMILY, 13).into_font()).color(&BLACK);
        for (i, row) in cm.iter().enumerate() {
            let total: u64 = row.iter().sum::<u64>().max(1);
            for (j, &c) in row.iter().enumerate() {
                let f = c as f64 / total as f64;
                let shade = (255.0 * (1.0 - f)) as u8;
                let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    RGBColor(shade, shade, 255).filled(),
                ))
                .map_err(s)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    BLACK.mix(0.3),
                ))
                .map_err(s)?;
                let color = if f > 0.5 { WHITE } else { BLACK };
                let txt = TextStyle::from((FAMILY, 14).into_font()).color(&color);
                root.draw_text(&c.to_string(), &txt, (x + 8, y + cell / 2 - 7))
                    .map_err(s)?;
            }
            let name = classes.get(i).map(String::as_str).unwrap_or("?");
            root.draw_text(name, &small, (10, y0 + i as i32 * cell + cell / 2 - 7))
                .map_err(s)?;
        }
        for j in 0..k {
            let name = classes.get(j).map(String::as_str).unwrap_or("?");
            let rotated = TextStyle::from((FAMILY, 13).into_font())
                .color(&BLACK)
                .transform(FontTransform::Rotate90);
            root.draw_text(
                name,
                &rotated,
                (
                    x0 + j as i32 * cell + cell / 2 + 6,
                    y0 + cell * k as i32 + 6,
                ),
            )
            .map_err(s)?;
        }
        Ok(())
    })
}

/// One face and its first-level attention maps (one per tapped layer).
pub struct AttentionFace {
    /// CHW u8, `size x size`.
    pub image: Vec<u8>,
    pub size: usize,
    /// Each map `[h][w]`, summing to 1.
    pub maps: Vec<(usize, usize, Vec<f32>)>,
    pub caption: String,
}

/// A grid: one row per face, the face then each attention map over it (red = attended).
pub fn attention(path: &Path, faces: &[AttentionFace], tap_names: &[String]) -> Result<()> {
    let cell = 128usize;
    let cols = 1 + faces.iter().map(|f| f.maps.len()).max().unwrap_or(0);
    let (top, left_pad) = (40usize, 10usize);
    let w = (left_pad + cols * (cell + 10)) as u32;
    let h = (top + faces.len() * (cell + 30)) as u32;
    render(path, (w, h), |root| {
        let title = TextStyle::from((FAMILY, 16).into_font()).color(&BLACK);
        let mut heads = vec!["face".to_string()];
        heads.extend(tap_names.iter().map(|t| format!("attention {t}")));
        for (c, name) in heads.iter().enumerate() {
            root.draw_text(name, &title, ((left_pad + c * (cell + 10)) as i32, 12))
                .map_err(s)?;
        }
        for (r, face) in faces.iter().enumerate() {
            let y0 = top + r * (cell + 30);
            for c in 0..cols {
                let x0 = left_pad + c * (cell + 10);
                let map = if c == 0 { None } else { face.maps.get(c - 1) };
                if c > 0 && map.is_none() {
                    continue;
                }
                for y in 0..cell {
                    for x in 0..cell {
                        let (sx, sy) = (x * face.size / cell, y * face.size / cell);
                        let px = |ch: usize| {
                            face.image[ch * face.size * face.size + sy * face.size + sx] as f32
                        };
                        let rgb = [px(0), px(1), px(2)];
                        let out = match map {
                            None => rgb,
                            Some((mh, mw, m)) => {
                                let v = sample_map(
                                    m,
                                    *mh,
                                    *mw,
                                    x as f32 / cell as f32,
                                    y as f32 / cell as f32,
                                );
                                let gray = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
                                let a = 0.75 * v;
                                [
                                    gray * (1.0 - a) + 255.0 * a,
                                    gray * (1.0 - a),
                                    gray * (1.0 - a) + 40.0 * a,
                                ]
                            }
                        };
                        root.draw_pixel(
                            ((x0 + x) as i32, (y0 + y) as i32),
                            &RGBColor(out[0] as u8, out[1] as u8, out[2] as u8),
                        )
                        .map_err(s)?;
                    }
                }
            }
            let cap = TextStyle::from((FAMILY, 13).into_font()).color(&BLACK);
            root.draw_text(
                &face.caption,
                &cap,
                (left_pad as i32, (y0 + cell + 4) as i32),
            )
            .map_err(s)?;
        }
        Ok(())
    })
}

/// Bilinear lookup of a map at relative position (u, v), scaled so the map's maximum is 1.
fn sample_map(m: &[f32], h: usize, w: usize, u: f32, v: f32) -> f32 {
    let max = m.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
    let fx = (u * w as f32 - 0.5).clamp(0.0, (w - 1) as f32);
    let fy = (v * h as f32 - 0.5).clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (dx, dy) = (fx - x0 as f32, fy - y0 as f32);
    let at = |x: usize, y: usize| m[y * w + x];
    let top = at(x0, y0) * (1.0 - dx) + at(x1, y0) * dx;
    let bot = at(x0, y1) * (1.0 - dx) + at(x1, y1) * dx;
    (top * (1.0 - dy) + bot * dy) / max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lookup_hits_corners_and_normalises() {
        // 2x2 map: the maximum (0.4) maps to 1, bilinear in between.
        let m = [0.1, 0.2, 0.3, 0.4];
        assert!((sample_map(&m, 2, 2, 0.0, 0.0) - 0.25).abs() < 1e-6);
        assert!((sample_map(&m, 2, 2, 0.99, 0.99) - 1.0).abs() < 1e-6);
        // Centre: mean of the four, / max.
        assert!((sample_map(&m, 2, 2, 0.5, 0.5) - 0.625).abs() < 1e-6);
    }

    #[test]
    fn figures_are_png_files_with_ink() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cm.png");
        confusion(
            &p,
            &[vec![5, 1], vec![0, 7]],
            &["Neutral".into(), "Happy".into()],
        )
        .unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        // Text and cells were drawn: plenty of non-white pixels, and dark ones (glyphs).
        let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
        assert!(non_white > 2000, "{non_white}");
        assert!(dark > 100, "{dark}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
