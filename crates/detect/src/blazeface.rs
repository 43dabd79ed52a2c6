//! MediaPipe BlazeFace: letterbox the photo, run the network, decode its 896 anchors, merge
//! overlapping detections, map the boxes back to photo pixels.
//!
//! # The pipeline (as MediaPipe's face detection graph)
//!
//! 1. **Letterbox**: the photo is scaled to fit `S x S` (`S` = 128 for the front model, 256 for
//!    the back model) keeping its aspect ratio — `n = floor(side * S / max(W, H) + 0.5)` — and
//!    centred on black; RGB values map to `[-1, 1]` (`v / 127.5 - 1`).
//! 2. **Anchors**: a 16 x 16 grid with 2 anchors per cell, then an 8 x 8 grid with 6, all of unit
//!    size, centred at `((x + 0.5) / cells, (y + 0.5) / cells)`; 896 in total, in the order of
//!    the network's outputs.
//! 3. **Decode**: score `sigmoid(logit)` (logit clipped to +-100); box centre = anchor +
//!    offset / S, box size = raw / S; six landmarks (eyes, nose, mouth, ears) likewise.
//! 4. **Weighted non-maximum suppression**: detections above the score threshold, by score; each
//!    remaining top detection absorbs every other with IoU above the threshold, and its geometry
//!    becomes their score-weighted mean (MediaPipe's `WEIGHTED` mode), its score the top one.
//! 5. Boxes and landmarks go back through the letterbox to photo pixels.

use std::path::Path;

use image::RgbImage;

use crate::graph::Graph;
use crate::ops::Tensor;
use crate::proto::ModelProto;
use crate::{Error, Result};

/// Anchors per model: `(cells per side, anchors per cell)` for each output head.
const HEADS: [(usize, usize); 2] = [(16, 2), (8, 6)];
/// Values per anchor in the box output: centre offset, size, six landmarks.
const BOX_VALUES: usize = 16;
/// Landmarks per face, in the model's order.
pub const LANDMARKS: [&str; 6] = [
    "right eye",
    "left eye",
    "nose",
    "mouth",
    "right ear",
    "left ear",
];

/// Detection thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectOptions {
    /// Minimum sigmoid score of an anchor. 0.75, the default of the package the weights come
    /// from: at MediaPipe's 0.5 the back model takes a coffee cup's handle for a face (0.68),
    /// while real faces score 0.85-0.94.
    pub score_threshold: f32,
    /// Overlap above which detections are merged (MediaPipe: 0.3).
    pub iou_threshold: f32,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            score_threshold: 0.75,
            iou_threshold: 0.3,
        }
    }
}

/// One face in photo pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Left, top, width, height.
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub score: f32,
    /// `(x, y)` of the [`LANDMARKS`], in order.
    pub landmarks: [[f32; 2]; 6],
}

impl Detection {
    /// Intersection over union of two boxes.
    pub fn iou(&self, other: &Detection) -> f32 {
        iou_xywh(
            [self.x, self.y, self.w, self.h],
            [other.x, other.y, other.w, other.h],
        )
    }
}

fn iou_xywh(a: [f32; 4], b: [f32; 4]) -> f32 {
    let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = ix.max(0.0) * iy.max(0.0);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The network's outputs for all anchors: logits and the 16 box values, fine grid first.
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutput {
    pub scores: Vec<f32>,
    pub boxes: Vec<[f32; BOX_VALUES]>,
}

/// Where the photo sits inside the square network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub left: u32,
    pub top: u32,
    /// Photo pixels per input pixel, across and down.
    pub scale_x: f32,
    pub scale_y: f32,
}

/// A BlazeFace detector read from its ONNX file.
#[derive(Debug, Clone)]
pub struct Detector {
    graph: Graph,
    size: usize,
    anchors: Vec<[f32; 2]>,
}

fn anchors() -> Vec<[f32; 2]> {
    let mut out = vec![];
    for (cells, per_cell) in HEADS {
        for y in 0..cells {
            for x in 0..cells {
                let c = [
                    (x as f32 + 0.5) / cells as f32,
                    (y as f32 + 0.5) / cells as f32,
                ];
                out.extend(std::iter::repeat_n(c, per_cell));
            }
        }
    }
    out
}

impl Detector {
    /// Reads a BlazeFace `.onnx` file (front 128 px or back 256 px).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let graph = Graph::compile(&ModelProto::decode(bytes)?)?;
        let size = match graph.input_shape[..] {
            [_, Some(h), Some(w), Some(3)] if h == w && (32..=4096).contains(&h) => h as usize,
            ref s => {
                return Err(Error::NotBlazeFace(format!(
                    "input {:?} has shape {s:?}, expected [1, S, S, 3]",
                    graph.input_name
                )))
            }
        };
        Ok(Self {
            graph,
            size,
            anchors: anchors(),
        })
    }

    /// The side of the square network input, in pixels.
    pub fn input_size(&self) -> usize {
        self.size
    }

    /// Runs the network on an `S x S x 3` input already scaled to `[-1, 1]` (row-major HWC).
    pub fn raw(&self, hwc: &[f32]) -> Result<RawOutput> {
        let s = self.size;
        if hwc.len() != s * s * 3 {
            return Err(Error::NotBlazeFace(format!(
                "input of {} values for a {s}x{s}x3 model",
                hwc.len()
            )));
        }
        let outs = self
            .graph
            .run(Tensor::new(vec![1, s, s, 3], hwc.to_vec()))?;
        let find = |shape: [usize; 3]| -> Result<&Tensor> {
            outs.iter()
                .map(|(_, t)| t)
                .find(|t| t.shape == shape)
                .ok_or_else(|| {
                    let shapes: Vec<_> = outs.iter().map(|(n, t)| (n, &t.shape)).collect();
                    Error::NotBlazeFace(format!("no output of shape {shape:?} among {shapes:?}"))
                })
        };
        let (mut scores, mut boxes) = (vec![], vec![]);
        for (cells, per_cell) in HEADS {
            let n = cells * cells * per_cell;
            scores.extend_from_slice(&find([1, n, 1])?.data);
            boxes.extend(
                find([1, n, BOX_VALUES])?
                    .data
                    .chunks_exact(BOX_VALUES)
                    .map(|c| <[f32; BOX_VALUES]>::try_from(c).expect("16 values")),
            );
        }
        Ok(RawOutput { scores, boxes })
    }

    /// The network input for a photo, and where the photo went in it.
    pub fn letterbox(&self, img: &RgbImage) -> (Vec<f32>, Letterbox) {
        let s = self.size as u32;
        let (w, h) = img.dimensions();
        let fit = |side: u32| {
            ((side as f64 * s as f64 / w.max(h) as f64 + 0.5).floor() as u32).clamp(1, s)
        };
        let (nw, nh) = (fit(w), fit(h));
        let small = image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle);
        let (left, top) = ((s - nw) / 2, (s - nh) / 2);
        let mut hwc = vec![-1f32; (s * s * 3) as usize];
        for (y, row) in small.as_raw().chunks_exact(nw as usize * 3).enumerate() {
            let start = ((top as usize + y) * s as usize + left as usize) * 3;
            for (d, &v) in hwc[start..start + row.len()].iter_mut().zip(row) {
                *d = v as f32 / 127.5 - 1.0;
            }
        }
        let lb = Letterbox {
            left,
            top,
            scale_x: w as f32 / nw as f32,
            scale_y: h as f32 / nh as f32,
        };
        (hwc, lb)
    }

    /// Decodes raw outputs into merged detections in input-normalised coordinates (`[0, 1]`
    /// across the square input): `[cx, cy, w, h, landmarks...]` and the score.
    pub fn decode(&self, raw: &RawOutput, opts: &DetectOptions) -> Vec<(f32, [f32; BOX_VALUES])> {
        let inv = 1.0 / self.size as f32;
        let mut found: Vec<(f32, [f32; BOX_VALUES])> = raw
            .scores
            .iter()
            .zip(&raw.boxes)
            .zip(&self.anchors)
            .filter_map(|((&logit, b), a)| {
                let score = 1.0 / (1.0 + (-logit.clamp(-100.0, 100.0)).exp());
                if score.is_nan() || score < opts.score_threshold {
                    return None;
                }
                let mut g = [0f32; BOX_VALUES];
                g[0] = a[0] + b[0] * inv;
                g[1] = a[1] + b[1] * inv;
                g[2] = b[2] * inv;
                g[3] = b[3] * inv;
                for k in 0..6 {
                    g[4 + 2 * k] = a[0] + b[4 + 2 * k] * inv;
                    g[5 + 2 * k] = a[1] + b[5 + 2 * k] * inv;
                }
                Some((score, g))
            })
            .collect();
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        weighted_nms(found, opts.iou_threshold)
    }

    /// Every face in the photo, best first.
    pub fn detect(&self, img: &RgbImage, opts: &DetectOptions) -> Result<Vec<Detection>> {
        let (input, lb) = self.letterbox(img);
        let raw = self.raw(&input)?;
        let s = self.size as f32;
        let px = |v: f32, off: u32, scale: f32| (v * s - off as f32) * scale;
        Ok(self
            .decode(&raw, opts)
            .into_iter()
            .map(|(score, g)| {
                let (w, h) = (g[2] * s * lb.scale_x, g[3] * s * lb.scale_y);
                let mut landmarks = [[0f32; 2]; 6];
                for (k, m) in landmarks.iter_mut().enumerate() {
                    *m = [
                        px(g[4 + 2 * k], lb.left, lb.scale_x),
                        px(g[5 + 2 * k], lb.top, lb.scale_y),
                    ];
                }
                Detection {
                    x: px(g[0], lb.left, lb.scale_x) - w / 2.0,
                    y: px(g[1], lb.top, lb.scale_y) - h / 2.0,
                    w,
                    h,
                    score,
                    landmarks,
                }
            })
            .collect())
    }
}

/// MediaPipe's weighted NMS over detections sorted by score (highest first).
fn weighted_nms(
    mut rest: Vec<(f32, [f32; BOX_VALUES])>,
    iou_threshold: f32,
) -> Vec<(f32, [f32; BOX_VALUES])> {
    let xywh = |g: &[f32; BOX_VALUES]| [g[0] - g[2] / 2.0, g[1] - g[3] / 2.0, g[2], g[3]];
    let mut out = vec![];
    while let Some(&(top_score, top)) = rest.first() {
        let (group, others): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(_, g)| iou_xywh(xywh(&top), xywh(g)) > iou_threshold);
        let mut mean = top;
        if group.len() > 1 {
            let total: f32 = group.iter().map(|(s, _)| s).sum();
            mean = [0f32; BOX_VALUES];
            for (s, g) in &group {
                for (m, v) in mean.iter_mut().zip(g) {
                    *m += s * v;
                }
            }
            mean.iter_mut().for_each(|m| *m /= total);
        }
        out.push((top_score, mean));
        rest = others;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_mediapipe_order() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        // Fine grid: two anchors per cell, row-major; coarse grid starts at index 512.
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[32], [0.5 / 16.0, 1.5 / 16.0]);
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], [1.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }

    #[test]
    fn weighted_nms_averages_overlaps_by_score() {
        // Two overlapping boxes (IoU 2/3) and one far away; by hand: the merged centre is
        // (0.75 * 0.5 + 0.25 * 0.54) / 1.0 = 0.51.
        let g = |cx: f32| {
            let mut g = [0f32; BOX_VALUES];
            g[..4].copy_from_slice(&[cx, 0.5, 0.2, 0.2]);
            g
        };
        let merged = weighted_nms(vec![(0.75, g(0.5)), (0.25, g(0.54)), (0.2, g(0.9))], 0.3);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].0, 0.75);
        assert!((merged[0].1[0] - 0.51).abs() < 1e-6, "{}", merged[0].1[0]);
        assert_eq!(merged[1], (0.2, g(0.9)));
    }

    #[test]
    fn iou_by_hand() {
        // 2x2 boxes offset by 1 in x: intersection 2, union 6.
        assert!((iou_xywh([0., 0., 2., 2.], [1., 0., 2., 2.]) - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(iou_xywh([0., 0., 1., 1.], [5., 5., 1., 1.]), 0.0);
    }
}
