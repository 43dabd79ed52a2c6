//! The photo with every face boxed and labelled (face number, expression, valence/arousal),
//! written as a PNG beside the per-face attention heat maps.

use std::path::Path;

use image::RgbImage;
use plotters::prelude::*;

use crate::plots::{plot_err, register_font, FAMILY};
use crate::Result;

/// One box to draw: `(x, y, w, h)` in photo pixels and its caption.
pub struct Label {
    pub bbox: (f64, f64, f64, f64),
    pub caption: String,
}

/// Distinct, saturated colours that stay readable on skin, sky and dark clothes.
const PALETTE: [RGBColor; 6] = [
    RGBColor(230, 25, 75),
    RGBColor(60, 180, 75),
    RGBColor(0, 130, 200),
    RGBColor(245, 130, 48),
    RGBColor(145, 30, 180),
    RGBColor(240, 50, 230),
];

/// Draws the labels over a copy of `photo` and writes it to `path` (PNG, atomically).
pub fn photo(path: &Path, photo: &RgbImage, labels: &[Label]) -> Result<()> {
    register_font();
    let (w, h) = photo.dimensions();
    let mut buf = photo.as_raw().clone();
    // Lines and text scale with the photo so they read the same on a thumbnail and a 4K frame.
    let stroke = (w.max(h) / 300).max(2);
    let font_px = (w.max(h) as f64 / 40.0).clamp(12.0, 48.0);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let style = TextStyle::from((FAMILY, font_px).into_font()).color(&WHITE);
        for (i, l) in labels.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let (x, y, bw, bh) = l.bbox;
            let (x0, y0) = (x.round() as i32, y.round() as i32);
            let (x1, y1) = ((x + bw).round() as i32, (y + bh).round() as i32);
            root.draw(&Rectangle::new(
                [(x0, y0), (x1, y1)],
                colour.stroke_width(stroke),
            ))
            .map_err(|e| plot_err(path, e))?;
            let (tw, th) = root
                .estimate_text_size(&l.caption, &style)
                .map_err(|e| plot_err(path, e))?;
            let pad = (font_px / 4.0) as i32;
            // Above the box when there is room, else inside its top edge.
            let ty = if y0 - th as i32 - 2 * pad >= 0 {
                y0 - th as i32 - 2 * pad
            } else {
                y0
            };
            let tx = x0.clamp(0, (w as i32 - tw as i32 - 2 * pad).max(0));
            root.draw(&Rectangle::new(
                [
                    (tx, ty),
                    (tx + tw as i32 + 2 * pad, ty + th as i32 + 2 * pad),
                ],
                colour.filled(),
            ))
            .map_err(|e| plot_err(path, e))?;
            root.draw_text(&l.caption, &style, (tx + pad, ty + pad))
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| plot_err(path, "buffer size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| plot_err(path, e))?;
    fer_data::atomic::write_atomic(path, png.get_ref())?;
    Ok(())
}
