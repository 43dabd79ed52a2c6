//! Training-time image augmentation on CHW images: horizontal flip, random resized crop and small
//! rotation (one bilinear affine warp), and colour jitter (brightness, contrast, saturation).
//!
//! Images are `3 x S x S`, channel-major, with values on the 0..=255 scale (u8 sources or f32).
//! The output always has the input's size. Every random choice is drawn once into an
//! [`AugmentParams`] from a caller-supplied RNG, so a sample's augmentation is a pure function of
//! its RNG seed.
//!
//! ```
//! use fer_data::augment::{apply, AugmentConfig, AugmentParams};
//! use rand::SeedableRng;
//!
//! let size = 8;
//! let src: Vec<u8> = (0..3 * size * size).map(|i| (i % 256) as u8).collect();
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let params = AugmentParams::sample(&AugmentConfig::default(), size, &mut rng);
//! let mut out = vec![0f32; src.len()];
//! apply(&src, size, &params, &mut out);
//! assert!(out.iter().all(|v| (0.0..=255.0).contains(v)));
//!
//! // Evaluation: no augmentation returns the input unchanged.
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let none = AugmentParams::sample(&AugmentConfig::none(), size, &mut rng);
//! apply(&src, size, &none, &mut out);
//! assert!(out.iter().zip(&src).all(|(o, s)| *o == *s as f32));
//! ```

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What augmentation to draw for each training sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Master switch; `false` leaves every image untouched whatever the other fields say.
    pub enabled: bool,
    /// Probability of a horizontal flip.
    pub hflip: f64,
    pub random_resized_crop: CropConfig,
    /// Random shift by a whole number of pixels in `[-pad_crop, pad_crop]` along each axis,
    /// the uncovered border taking the fill colour: torchvision's `RandomCrop(S, padding =
    /// pad_crop)`. 0 disables it.
    pub pad_crop: usize,
    /// Rotation angle drawn uniformly from `[-rotation_degrees, rotation_degrees]`.
    pub rotation_degrees: f64,
    pub color_jitter: ColorJitter,
}

/// Random resized crop: a box of `scale` times the image area and aspect ratio (w/h) in `ratio`
/// (drawn log-uniformly), resampled to the full image size. `[1, 1]` and `[1, 1]` disable it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CropConfig {
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
}

/// Colour jitter strengths: each factor is drawn uniformly from `[max(0, 1 - x), 1 + x]`, as in
/// torchvision's `ColorJitter`. Zero disables that component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            enabled: true,
            hflip: 0.5,
            random_resized_crop: CropConfig::default(),
            pad_crop: 0,
            rotation_degrees: 10.0,
            color_jitter: ColorJitter::default(),
        }
    }
}

impl Default for CropConfig {
    fn default() -> Self {
        CropConfig {
            scale: [0.8, 1.0],
            ratio: [0.9, 1.1],
        }
    }
}

impl Default for ColorJitter {
    fn default() -> Self {
        ColorJitter {
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
        }
    }
}

impl CropConfig {
    /// The crop that always takes the whole image.
    pub fn full() -> Self {
        CropConfig {
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
        }
    }
}

impl ColorJitter {
    /// No colour change.
    pub fn none() -> Self {
        ColorJitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all (evaluation, prediction).
    pub fn none() -> Self {
        AugmentConfig {
            enabled: false,
            hflip: 0.0,
            random_resized_crop: CropConfig::full(),
            pad_crop: 0,
            rotation_degrees: 0.0,
            color_jitter: ColorJitter::none(),
        }
    }

    /// Rejects values that would make sampling meaningless (NaN, empty ranges, probabilities
    /// outside [0, 1]).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Config(format!("augment: {reason}")));
        let finite = |x: f64| x.is_finite();
        if !(0.0..=1.0).contains(&self.hflip) {
            return bad(format!("hflip = {} is not a probability", self.hflip));
        }
        let [s0, s1] = self.random_resized_crop.scale;
        if !(finite(s0) && finite(s1) && 0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            return bad(format!(
                "random_resized_crop.scale = [{s0}, {s1}] must satisfy 0 < lo <= hi <= 1"
            ));
        }
        let [r0, r1] = self.random_resized_crop.ratio;
        if !(finite(r0) && finite(r1) && 0.0 < r0 && r0 <= r1) {
            return bad(format!(
                "random_resized_crop.ratio = [{r0}, {r1}] must satisfy 0 < lo <= hi"
            ));
        }
        if !(finite(self.rotation_degrees) && self.rotation_degrees >= 0.0) {
            return bad(format!(
                "rotation_degrees = {} must be >= 0",
                self.rotation_degrees
            ));
        }
        let j = &self.color_jitter;
        for (name, v) in [
            ("brightness", j.brightness),
            ("contrast", j.contrast),
            ("saturation", j.saturation),
        ] {
            if !(finite(v) && v >= 0.0) {
                return bad(format!("color_jitter.{name} = {v} must be >= 0"));
            }
        }
        Ok(())
    }
}

/// A crop box in continuous source-pixel coordinates (pixel `i` covers `[i, i + 1)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl CropBox {
    /// The whole `size x size` image.
    pub fn full(size: usize) -> Self {
        let s = size as f64;
        CropBox {
            x: 0.0,
            y: 0.0,
            w: s,
            h: s,
        }
    }
}

/// The random choices for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentParams {
    pub flip: bool,
    pub crop: CropBox,
    /// Counter-clockwise as displayed (row 0 at the top), in degrees.
    pub angle_deg: f64,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

/// `lo + (hi - lo) * u`: exact `lo` when the range is empty, which keeps disabled components
/// exactly neutral.
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

impl AugmentParams {
    /// Leaves the image unchanged.
    pub fn identity(size: usize) -> Self {
        AugmentParams {
            flip: false,
            crop: CropBox::full(size),
            angle_deg: 0.0,
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
        }
    }

    /// Draws the parameters for one `size x size` image. Always consumes the same number of
    /// draws for a given config, so parameters depend only on the RNG's seed. The shift of
    /// `pad_crop` is drawn last, and only when it is on, so configs without it draw as before.
    pub fn sample<R: Rng + ?Sized>(cfg: &AugmentConfig, size: usize, rng: &mut R) -> Self {
        if !cfg.enabled {
            return Self::identity(size);
        }
        let flip = rng.random::<f64>() < cfg.hflip;
        let crop = sample_crop(&cfg.random_resized_crop, size, rng);
        let angle_deg = uniform(rng, -cfg.rotation_degrees, cfg.rotation_degrees);
        let j = &cfg.color_jitter;
        let mut factor = |x: f64| uniform(rng, (1.0 - x).max(0.0), 1.0 + x) as f32;
        let brightness = factor(j.brightness);
        let contrast = factor(j.contrast);
        let saturation = factor(j.saturation);
        let mut crop = crop;
        if cfg.pad_crop > 0 {
            let p = cfg.pad_crop as i64;
            crop.x += rng.random_range(-p..=p) as f64;
            crop.y += rng.random_range(-p..=p) as f64;
        }
        AugmentParams {
            flip,
            crop,
            angle_deg,
            brightness,
            contrast,
            saturation,
        }
    }

    /// True when the warp would reproduce the source pixel for pixel.
    pub fn is_geometric_identity(&self, size: usize) -> bool {
        self.angle_deg == 0.0 && self.crop == CropBox::full(size)
    }
}

/// torchvision's RandomResizedCrop: up to ten tries at a box of the drawn area and aspect that
/// fits, else the largest centred box whose aspect is within range. Boxes are continuous since
/// the warp interpolates anyway.
fn sample_crop<R: Rng + ?Sized>(cfg: &CropConfig, size: usize, rng: &mut R) -> CropBox {
    let s = size as f64;
    let area = s * s;
    let (lr0, lr1) = (cfg.ratio[0].ln(), cfg.ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, cfg.scale[0], cfg.scale[1]);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = (target * aspect).sqrt();
        let h = (target / aspect).sqrt();
        // A hair of slack so rounding of sqrt never rejects the exact full-image box.
        if w > 0.0 && h > 0.0 && w <= s + 1e-9 && h <= s + 1e-9 {
            let (w, h) = (w.min(s), h.min(s));
            let x = uniform(rng, 0.0, s - w);
            let y = uniform(rng, 0.0, s - h);
            return CropBox { x, y, w, h };
        }
    }
    let aspect = 1.0f64.clamp(cfg.ratio[0], cfg.ratio[1]);
    let (w, h) = if aspect >= 1.0 {
        (s, s / aspect)
    } else {
        (s * aspect, s)
    };
    CropBox {
        x: (s - w) / 2.0,
        y: (s - h) / 2.0,
        w,
        h,
    }
}

/// Runs the whole pipeline (warp, flip, colour jitter) from `src` into `dst` (0..=255 scale).
/// Out-of-image areas of the warp take `fill`.
pub fn apply_with_fill<T: Copy + Into<f32>>(
    src: &[T],
    size: usize,
    params: &AugmentParams,
    fill: [f32; 3],
    dst: &mut [f32],
) {
    let n = 3 * size * size;
    assert_eq!(src.len(), n, "source is not 3 x {size} x {size}");
    assert_eq!(dst.len(), n, "destination is not 3 x {size} x {size}");
    if params.is_geometric_identity(size) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = (*s).into();
        }
    } else {
        warp(src, size, &params.crop, params.angle_deg, fill, dst);
    }
    if params.flip {
        hflip(dst, size);
    }
    color_jitter(
        dst,
        size,
        params.brightness,
        params.contrast,
        params.saturation,
    );
}

/// [`apply_with_fill`] with the ImageNet mean colour as fill, so uncovered corners become zero
/// after normalisation instead of a hard black edge.
pub fn apply<T: Copy + Into<f32>>(src: &[T], size: usize, params: &AugmentParams, dst: &mut [f32]) {
    apply_with_fill(src, size, params, mean_fill(), dst);
}

/// The ImageNet mean on the 0..=255 scale.
pub fn mean_fill() -> [f32; 3] {
    crate::loader::IMAGENET_MEAN.map(|m| m * 255.0)
}

/// Resamples the crop box, rotated by `angle_deg` about its centre, onto the full `size x size`
/// output with bilinear interpolation. The rotation acts in output space (crop-and-resize, then
/// rotate), matching torchvision's `RandomResizedCrop` followed by `RandomRotation`.
pub fn warp<T: Copy + Into<f32>>(
    src: &[T],
    size: usize,
    crop: &CropBox,
    angle_deg: f64,
    fill: [f32; 3],
    dst: &mut [f32],
) {
    let plane = size * size;
    assert_eq!(src.len(), 3 * plane, "source is not 3 x {size} x {size}");
    assert_eq!(
        dst.len(),
        3 * plane,
        "destination is not 3 x {size} x {size}"
    );
    let s = size as f64;
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    // Exact values at multiples of 90 degrees keep those rotations free of drift.
    let snap = |v: f64| if v.abs() < 1e-12 { 0.0 } else { v };
    let (sin, cos) = (snap(sin), snap(cos));
    let (sx, sy) = (crop.w / s, crop.h / s);
    let (cx, cy) = (crop.x + crop.w / 2.0, crop.y + crop.h / 2.0);
    let half = s / 2.0;
    // The map is affine: index coordinate = base(v) + u * step. Written per row rather than
    // accumulated, so whole-pixel steps (identity, quarter turns) stay exact.
    let (step_x, step_y) = (cos * sx, sin * sy);
    let ex0 = 0.5 - half;
    let (src_r, rest) = src.split_at(plane);
    let (src_g, src_b) = rest.split_at(plane);
    let (dst_r, rest) = dst.split_at_mut(plane);
    let (dst_g, dst_b) = rest.split_at_mut(plane);
    let last = size as i64 - 1;
    for v in 0..size {
        let ey = v as f64 + 0.5 - half;
        // Image rows grow downwards, so this rotation turns the content counter-clockwise.
        let base_x = cx - 0.5 + sx * (cos * ex0 - sin * ey);
        let base_y = cy - 0.5 + sy * (sin * ex0 + cos * ey);
        for u in 0..size {
            let px = base_x + step_x * u as f64;
            let py = base_y + step_y * u as f64;
            let (x0, y0) = (px.floor(), py.floor());
            let (fx, fy) = ((px - x0) as f32, (py - y0) as f32);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let w = [
                (1.0 - fx) * (1.0 - fy),
                fx * (1.0 - fy),
                (1.0 - fx) * fy,
                fx * fy,
            ];
            let o = v * size + u;
            if x0 >= 0 && y0 >= 0 && x0 < last && y0 < last {
                let i = y0 as usize * size + x0 as usize;
                let idx = [i, i + 1, i + size, i + size + 1];
                dst_r[o] = blend(src_r, idx, w);
                dst_g[o] = blend(src_g, idx, w);
                dst_b[o] = blend(src_b, idx, w);
            } else {
                let inside = |x: i64, y: i64| (0..=last).contains(&x) && (0..=last).contains(&y);
                let corners = [(x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)];
                let idx =
                    corners.map(|(x, y)| inside(x, y).then(|| y as usize * size + x as usize));
                dst_r[o] = blend_edge(src_r, idx, w, fill[0]);
                dst_g[o] = blend_edge(src_g, idx, w, fill[1]);
                dst_b[o] = blend_edge(src_b, idx, w, fill[2]);
            }
        }
    }
}

#[inline(always)]
fn blend<T: Copy + Into<f32>>(plane: &[T], idx: [usize; 4], w: [f32; 4]) -> f32 {
    plane[idx[0]].into() * w[0]
        + plane[idx[1]].into() * w[1]
        + plane[idx[2]].into() * w[2]
        + plane[idx[3]].into() * w[3]
}

/// Border case: corners outside the image count as `fill`.
fn blend_edge<T: Copy + Into<f32>>(
    plane: &[T],
    idx: [Option<usize>; 4],
    w: [f32; 4],
    fill: f32,
) -> f32 {
    let mut acc = 0.0;
    for k in 0..4 {
        let v = idx[k].map_or(fill, |i| plane[i].into());
        acc += v * w[k];
    }
    acc
}

/// Mirrors every row in place.
pub fn hflip<T>(chw: &mut [T], size: usize) {
    assert_eq!(
        chw.len(),
        3 * size * size,
        "image is not 3 x {size} x {size}"
    );
    for row in chw.chunks_exact_mut(size) {
        row.reverse();
    }
}

/// ITU-R 601 luma with torchvision's rounding (`rgb_to_grayscale`), so jitter matches it.
const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

/// torchvision's colour jitter in a fixed order (brightness, contrast, saturation), each a blend
/// `f * img + (1 - f) * other` clamped to 0..=255; `other` is black, the image's mean grey, and
/// the pixel's grey. Written as a blend so that a factor of 1 returns the input bit for bit.
pub fn color_jitter(chw: &mut [f32], size: usize, brightness: f32, contrast: f32, saturation: f32) {
    let plane = size * size;
    assert_eq!(chw.len(), 3 * plane, "image is not 3 x {size} x {size}");
    let clamp = |v: f32| v.clamp(0.0, 255.0);
    if brightness != 1.0 {
        for v in chw.iter_mut() {
            *v = clamp(brightness * *v);
        }
    }
    if contrast != 1.0 {
        let mut sum = 0.0f64;
        for i in 0..plane {
            sum += grey(chw, plane, i) as f64;
        }
        let mean = (sum / plane as f64) as f32;
        let other = (1.0 - contrast) * mean;
        for v in chw.iter_mut() {
            *v = clamp(contrast * *v + other);
        }
    }
    if saturation != 1.0 {
        for i in 0..plane {
            let other = (1.0 - saturation) * grey(chw, plane, i);
            for c in 0..3 {
                let v = &mut chw[c * plane + i];
                *v = clamp(saturation * *v + other);
            }
        }
    }
}

fn grey(chw: &[f32], plane: usize, i: usize) -> f32 {
    LUMA[0] * chw[i] + LUMA[1] * chw[plane + i] + LUMA[2] * chw[2 * plane + i]
}
