//! The procedural synthetic face set: drawn faces whose expression class and valence/arousal are
//! known functions of the drawn parameters, written in AffectNet's layout so that the default run
//! goes through the same reading and preparation path as the real data set.
//!
//! # What is drawn
//!
//! Each image is a colour scene: a textured background (gradient, random blobs and/or stripes),
//! shoulders, neck, hair, ears and a face outline (an ellipse with a narrower jaw), then brows,
//! eyes with irises, a nose, smile folds and a mouth, a lighting gradient over the face, sometimes
//! (about 5 %) a bar or a hand in front of the face, an exposure gain and sensor noise. The face
//! box is a square covering 50-80 % of the image side at a random position, so cropping matters;
//! the head is rolled (about ±6°, at most 15°) and the features shifted sideways (a small yaw).
//!
//! # Expressions
//!
//! The class (AffectNet code 0..=7) sets a prototype [`Expression`] (see [`prototype`]):
//!
//! | code | class    | look                                                             |
//! |------|----------|------------------------------------------------------------------|
//! | 0    | Neutral  | straight closed mouth, relaxed eyes and brows                    |
//! | 1    | Happy    | wide smile, open with teeth, smile folds                         |
//! | 2    | Sad      | corners down, half-shut eyes, brows with inner ends up           |
//! | 3    | Surprise | round open mouth, wide eyes, brows high                          |
//! | 4    | Fear     | wide stretched open mouth, wide eyes, brows up with inner ends up|
//! | 5    | Disgust  | nose wrinkles, raised upper lip, corners down, narrowed eyes     |
//! | 6    | Anger    | brows low in a "V", glaring eyes, pressed mouth                  |
//! | 7    | Contempt | one-sided smirk (left corner raised) with its dimple             |
//!
//! A sample scales the prototype's distance from neutral by an intensity drawn from [0.8, 1.2]
//! and adds a small Gaussian jitter to each field ([`sample_params`]), so classes vary and overlap
//! a little, while most of the variation is in the nuisance factors ([`Look`]).
//!
//! # Valence and arousal
//!
//! They are functions of the expression parameters only ([`expression_va`]). With
//! `e = eye_open - 0.5` and `relu(x) = max(x, 0)`:
//!
//! ```text
//! valence = clip(0.8 mouth_curve - 0.3 |brow_angle| - 0.3 nose_wrinkle - 0.5 |mouth_asym|)
//! arousal = clip(0.6 e + 0.4 mouth_open + 0.2 brow_raise + 0.5 relu(brow_angle)
//!                + 0.2 nose_wrinkle)
//! ```
//!
//! clipped to [-1, 1]; the CSV label adds Gaussian noise with standard deviation
//! [`LABEL_NOISE`] and clips again. The prototypes land at (valence, arousal): Neutral (0, 0),
//! Happy (0.64, 0.30), Sad (-0.83, -0.22), Surprise (0, 0.79), Fear (-0.49, 0.59),
//! Disgust (-0.79, 0.20), Anger (-0.68, 0.62), Contempt (-0.45, -0.04).
//!
//! # The files
//!
//! [`Layout::AffectNet`] writes `Manually_Annotated_file_lists/{training,validation}.csv` with
//! AffectNet's header and JPEG images (quality 90) under `Manually_Annotated_Images/<sub>/`.
//! Besides the balanced classes, about 2 % extra rows carry codes 8 (None: a blend of two
//! prototypes, with its valence/arousal), 9 (Uncertain: a blend, valence = arousal = -2) and
//! 10 (No-Face: background only, valence = arousal = -2). Each split's CSV is written after its
//! images, and `validation.csv` is the last file of all: a set that has it is complete. [`Layout::Folder`] writes FER-2013's image-folder layout,
//! `{train,test}/<class>/<n>.png`, each image the face box cropped and resized to half the image
//! size (48 px by default, FER-2013's size), codes 0..=7 only.
//!
//! Every image's random stream is seeded from (seed, split, index) alone, so the output is
//! byte-identical for a seed whatever the number of threads.
//!
//! ```
//! use fer_data::synth::{generate, SynthConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let cfg = SynthConfig { train: 16, val: 8, image_size: 64, seed: 7, ..SynthConfig::default() };
//! let summary = generate(dir.path(), &cfg)?;
//! assert_eq!(summary.train.per_code[1], 2); // 16 images over 8 classes
//! assert!(dir.path().join("Manually_Annotated_file_lists/training.csv").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod params;
mod render;
mod rng;
mod write;

pub use params::{
    expression_va, prototype, sample_params, valence_arousal, Expression, FaceParams, Look,
    Occluder, INTENSITY, JITTER,
};
pub use render::{face_box, render, FaceBox, Rendered};
pub use write::{generate, SplitSummary, SynthSummary};

use serde::{Deserialize, Serialize};

/// Standard deviation of the noise added to the valence/arousal labels.
pub const LABEL_NOISE: f32 = 0.025;

/// Which directory layout [`generate`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// AffectNet's CSV lists and image folders.
    #[default]
    #[serde(alias = "affect-net")]
    AffectNet,
    /// FER-2013's `{train,test}/<class>/<n>.png`, already cropped to the face.
    Folder,
}

impl std::str::FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "affectnet" => Ok(Layout::AffectNet),
            "folder" => Ok(Layout::Folder),
            other => Err(format!(
                "unknown layout '{other}' (expected 'affectnet' or 'folder')"
            )),
        }
    }
}

/// What to generate. The default is the set the trainer uses: 8000 training and 1600 validation
/// images (8 classes x 1000 / x 200) of 96 px, seed 0, AffectNet layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Training images of codes 0..=7 (balanced); codes 8-10 come on top.
    pub train: usize,
    /// Training images per code 0..=7 instead of `train` balanced ones (up to 8 counts; missing
    /// codes get none): an imbalanced set, as real ones are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_class_counts: Option<Vec<usize>>,
    /// Validation images of codes 0..=7 (balanced); codes 8-10 come on top.
    pub val: usize,
    /// Side of the square images in pixels (at least [`MIN_IMAGE_SIZE`]).
    pub image_size: u32,
    pub seed: u64,
    pub layout: Layout,
}

/// Below this the features are a few pixels wide and no longer readable.
pub const MIN_IMAGE_SIZE: u32 = 32;

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            train: 8000,
            train_class_counts: None,
            val: 1600,
            image_size: 96,
            seed: 0,
            layout: Layout::AffectNet,
        }
    }
}

/// The folder name of a class code in the folder layout (FER-2013's spelling).
pub fn folder_class_name(code: i64) -> Option<&'static str> {
    const NAMES: [&str; 8] = [
        "neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c).copied())
}
