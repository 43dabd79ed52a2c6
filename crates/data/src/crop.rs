//! Face cropping and resizing: the one place that decides which pixels of a source image become
//! the `S x S` training crop.
//!
//! # The box rule
//!
//! Given a face box `(x, y, w, h)` (pixels, `w, h > 0`) in a `W x H` image and a margin `m`:
//!
//! 1. grow the box by `m * w` left and right and `m * h` top and bottom, then make it square
//!    around the box centre `(cx, cy) = (x + w/2, y + h/2)`: `side = max(w, h) * (1 + 2m)`;
//! 2. round to whole pixels: `side_px = floor(side + 0.5)`, at most `min(W, H)`, at least 1;
//! 3. `left = floor(cx - side_px/2 + 0.5)`, then shifted into `[0, W - side_px]`; `top` likewise
//!    with `cy` and `H`.
//!
//! Shifting (rather than cutting) at the image border keeps the crop square, so the face is never
//! squashed; only when the square is larger than the image does it shrink to fit. A box that does
//! not overlap the image at all is rejected ([`BoxError::Outside`]).
//!
//! The crop is cut out first and then resized to `S x S` with a bilinear convolution filter whose
//! support grows with the reduction factor (antialiased, as Pillow's
//! `img.crop(box).resize((S, S), Image.BILINEAR)`; the filter never reads pixels outside the
//! crop), and returned as CHW bytes.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// A face box as annotated in the source (pixels, may be fractional).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// An integer pixel rectangle inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// Why a face box cannot be cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxError {
    /// Width or height is not a positive finite number.
    Degenerate,
    /// The box does not overlap the image.
    Outside,
}

/// The square crop of `face` with `margin` in a `width x height` image (see the module docs).
pub fn square_crop(face: FaceBox, margin: f64, width: u32, height: u32) -> Result<Rect, BoxError> {
    let FaceBox { x, y, w, h } = face;
    if !(x.is_finite() && y.is_finite() && w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0) {
        return Err(BoxError::Degenerate);
    }
    let (wf, hf) = (width as f64, height as f64);
    if width == 0 || height == 0 || x >= wf || y >= hf || x + w <= 0.0 || y + h <= 0.0 {
        return Err(BoxError::Outside);
    }
    let side = (w.max(h) * (1.0 + 2.0 * margin) + 0.5).floor();
    let side = side.clamp(1.0, width.min(height) as f64) as u32;
    let place = |centre: f64, extent: u32| -> u32 {
        let start = (centre - side as f64 / 2.0 + 0.5).floor();
        start.clamp(0.0, (extent - side) as f64) as u32
    };
    Ok(Rect {
        left: place(x + w / 2.0, width),
        top: place(y + h / 2.0, height),
        width: side,
        height: side,
    })
}

/// Resizes `rect` of a packed RGB image (`width x height`, HWC) to `size x size` and returns it
/// as CHW bytes. `resizer` holds scratch buffers; reuse one per thread.
pub fn crop_resize_chw(
    resizer: &mut Resizer,
    rgb: &[u8],
    width: u32,
    height: u32,
    rect: Rect,
    size: u32,
) -> Vec<u8> {
    debug_assert_eq!(rgb.len(), (width * height * 3) as usize);
    // Copy the crop out first: resizing with a crop window would let the filter read pixels
    // beyond the window's edges, so the result would depend on what surrounds the face.
    let row = width as usize * 3;
    let mut cut = Vec::with_capacity((rect.width * rect.height * 3) as usize);
    for y in rect.top..rect.top + rect.height {
        let start = y as usize * row + rect.left as usize * 3;
        cut.extend_from_slice(&rgb[start..start + rect.width as usize * 3]);
    }
    let src = ImageRef::new(rect.width, rect.height, &cut, PixelType::U8x3)
        .expect("a buffer of width * height * 3 bytes");
    let mut dst = Image::new(size, size, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    resizer
        .resize(&src, &mut dst, &options)
        .expect("source and destination are both U8x3");
    hwc_to_chw(dst.buffer(), (size * size) as usize)
}

/// The whole-image rectangle (for sources whose images are already face crops).
pub fn whole(width: u32, height: u32) -> Rect {
    Rect {
        left: 0,
        top: 0,
        width,
        height,
    }
}

fn hwc_to_chw(hwc: &[u8], pixels: usize) -> Vec<u8> {
    let mut chw = vec![0u8; 3 * pixels];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[pixels + i] = px[1];
        chw[2 * pixels + i] = px[2];
    }
    chw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(x: f64, y: f64, w: f64, h: f64) -> FaceBox {
        FaceBox { x, y, w, h }
    }

    #[test]
    fn interior_box_grows_and_squares() {
        // 10x20 box at (40,30), margin 0.1: side = 20 * 1.2 = 24, centre (45,40) -> left 33, top 28.
        let r = square_crop(fb(40.0, 30.0, 10.0, 20.0), 0.1, 200, 100).unwrap();
        assert_eq!(
            r,
            Rect {
                left: 33,
                top: 28,
                width: 24,
                height: 24
            }
        );
    }

    #[test]
    fn border_boxes_shift_or_shrink() {
        // Near the top-left corner: shifted to 0, still square.
        let r = square_crop(fb(1.0, 2.0, 10.0, 10.0), 0.5, 50, 40).unwrap();
        assert_eq!((r.left, r.top, r.width, r.height), (0, 0, 20, 20));
        // Near the bottom-right corner: shifted to end at the border.
        let r = square_crop(fb(45.0, 35.0, 10.0, 10.0), 0.5, 50, 40).unwrap();
        assert_eq!((r.left, r.top, r.width, r.height), (30, 20, 20, 20));
        // Larger than the image: shrinks to the short side.
        let r = square_crop(fb(0.0, 0.0, 50.0, 40.0), 0.2, 50, 40).unwrap();
        assert_eq!((r.left, r.top, r.width, r.height), (5, 0, 40, 40));
    }

    #[test]
    fn bad_boxes_are_rejected() {
        assert_eq!(
            square_crop(fb(50.0, 0.0, 5.0, 5.0), 0.1, 50, 40),
            Err(BoxError::Outside)
        );
        assert_eq!(
            square_crop(fb(-5.0, 0.0, 5.0, 5.0), 0.1, 50, 40),
            Err(BoxError::Outside)
        );
        assert_eq!(
            square_crop(fb(1.0, 1.0, 0.0, 5.0), 0.1, 50, 40),
            Err(BoxError::Degenerate)
        );
        assert_eq!(
            square_crop(fb(1.0, f64::NAN, 3.0, 5.0), 0.1, 50, 40),
            Err(BoxError::Degenerate)
        );
    }

    #[test]
    fn same_size_crop_is_a_copy_in_chw() {
        let (w, h) = (5u32, 4u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let rect = Rect {
            left: 1,
            top: 1,
            width: 3,
            height: 3,
        };
        let chw = crop_resize_chw(&mut Resizer::new(), &rgb, w, h, rect, 3);
        for c in 0..3 {
            for yy in 0..3 {
                for xx in 0..3 {
                    let src = rgb[(((yy + 1) * w + xx + 1) * 3 + c) as usize];
                    assert_eq!(chw[(c * 9 + yy * 3 + xx) as usize], src);
                }
            }
        }
    }
}
