//! Prediction on image files: find the faces (the face detector on whole photos, a given box,
//! or the whole image), crop and resize each as the training data was prepared, and report
//! class probabilities and valence/arousal per face.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use fast_image_resize::Resizer;
use fer_data::crop::FaceBox;
use fer_data::decode;
use fer_data::loader::normalize_images;
use fer_detect::DetectOptions;
use fer_model::checkpoint::Checkpoint;
use fer_model::TwoAttTwoMt;
use serde::Serialize;

use crate::annotate;
use crate::evaluate::{predict_batch, BatchPrediction, Tta};
use crate::photos::{self, DetectMode, LazyDetector, Photo};
use crate::plots::{self, AttentionFace};
use crate::state::keys;
use crate::{Error, Result};

/// One line of the output: one face, or one photo without any.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub path: String,
    /// Number of the face in its photo (0 = the detector's most confident); `None` when the
    /// whole image, or the `--box`, was taken as the face.
    pub face: Option<usize>,
    /// The face box `[x, y, w, h]` in photo pixels (before the crop margin); `None` when the
    /// whole image was the face.
    #[serde(rename = "box")]
    pub bbox: Option<[f32; 4]>,
    /// The detector's confidence in the face.
    pub face_score: Option<f32>,
    /// `None` for a model without a categorical head.
    pub expression: Option<String>,
    pub probabilities: Option<BTreeMap<String, f32>>,
    /// `None` (JSON `null`, an empty CSV cell) for a model trained without valence/arousal
    /// labels, whose V/A head never learned.
    pub valence: Option<f32>,
    pub arousal: Option<f32>,
    /// `"no face found"` on the record of a photo the detector found no face in.
    pub note: Option<String>,
}

impl Prediction {
    fn no_face(path: &Path) -> Self {
        Self {
            path: path.display().to_string(),
            face: None,
            bbox: None,
            face_score: None,
            expression: None,
            probabilities: None,
            valence: None,
            arousal: None,
            note: Some("no face found".into()),
        }
    }
}

/// What the checkpoint says about its input.
pub struct InputSpec {
    pub size: usize,
    pub margin: f64,
    pub classes: Vec<String>,
    /// Whether any training stage had a valence/arousal loss.
    pub va_trained: bool,
}

impl InputSpec {
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        let get = |k: &str| {
            ck.meta.get(k).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{}: no `{k}` metadata: not written by `trainer train`",
                    ck.path.display()
                ))
            })
        };
        let bad = |k: &str| Error::Checkpoint(format!("{}: bad `{k}` metadata", ck.path.display()));
        Ok(Self {
            size: get(keys::IMAGE_SIZE)?
                .parse()
                .map_err(|_| bad(keys::IMAGE_SIZE))?,
            margin: get(keys::MARGIN)?.parse().map_err(|_| bad(keys::MARGIN))?,
            classes: serde_json::from_str(get(keys::CLASS_NAMES)?)
                .map_err(|_| bad(keys::CLASS_NAMES))?,
            va_trained: match ck.meta.get(keys::STAGES) {
                Some(s) => {
                    let stages: Vec<String> =
                        serde_json::from_str(s).map_err(|_| bad(keys::STAGES))?;
                    crate::plan::trains_va(&stages)
                }
                None => true,
            },
        })
    }
}

/// Files named on the command line, folders walked recursively (sorted, images only).
pub fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
            .collect::<Result<_>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if decode::has_image_extension(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = vec![];
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::Data(format!(
                "{}: no such file or folder",
                p.display()
            )));
        }
    }
    if out.is_empty() {
        return Err(Error::Data(format!(
            "no images ({}) in the given paths",
            decode::extension_list()
        )));
    }
    Ok(out)
}

/// Parses `x,y,w,h`.
pub fn parse_box(s: &str) -> Result<FaceBox> {
    let v: Vec<f64> = s
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Config(format!("--box {s:?}: expected four numbers x,y,w,h")))?;
    match v[..] {
        [x, y, w, h] if w > 0.0 && h > 0.0 => Ok(FaceBox { x, y, w, h }),
        _ => Err(Error::Config(format!(
            "--box {s:?}: expected x,y,w,h with w, h > 0"
        ))),
    }
}

/// How `predict` finds and shows the faces.
pub struct PredictOptions<'a> {
    /// One box for every image (pixels); the detector is not used.
    pub user_box: Option<FaceBox>,
    pub detect: DetectMode,
    pub detector: Option<&'a LazyDetector>,
    pub detect_options: DetectOptions,
    /// Attention heat maps of every face, one PNG per face.
    pub heatmaps: Option<&'a Path>,
    /// Every photo with its faces boxed and labelled.
    pub annotate: Option<&'a Path>,
    pub tta: Tta,
}

/// What `predict` did, for the closing line on stderr.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PredictSummary {
    pub images: usize,
    pub faces: usize,
    pub without_face: usize,
    /// Files that could not be read or decoded, with the reason: reported and skipped.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Class probabilities and valence/arousal of a batch of CHW face crops (the mean over the
/// face and its mirror image with `Tta::Flip`), and the first-level attention maps.
fn score_faces(
    model: &TwoAttTwoMt,
    spec: &InputSpec,
    faces: &[&[u8]],
    tta: Tta,
    device: &Device,
) -> Result<BatchPrediction> {
    let x = normalize_images(&faces.concat(), faces.len(), spec.size, device)?;
    predict_batch(model, &x, tta, model.config().num_classes, true)
}

/// Predicts every face of every image: one record per face, one "no face found" record per
/// photo without any; unreadable files are reported on stderr and skipped.
pub fn predict(
    model: &TwoAttTwoMt,
    spec: &InputSpec,
    images: &[PathBuf],
    how: &PredictOptions,
    device: &Device,
) -> Result<(Vec<Prediction>, PredictSummary)> {
    let mut resizer = Resizer::new();
    let mut out = vec![];
    let mut summary = PredictSummary::default();
    let taps = model.config().backbone.taps.clone();
    let name = |k: usize| {
        spec.classes
            .get(k)
            .cloned()
            .unwrap_or_else(|| format!("class{k}"))
    };
    // Photos in chunks, so the faces of several photos share one forward pass while only a few
    // decoded photos are held for the annotated copies.
    const PHOTOS_PER_CHUNK: usize = 16;
    for (chunk_no, chunk) in images.chunks(PHOTOS_PER_CHUNK).enumerate() {
        let mut photos = vec![];
        for path in chunk {
            let mut photo = photos::load(
                path,
                how.user_box,
                how.detect,
                how.detector,
                &how.detect_options,
                spec,
                &mut resizer,
            )?;
            if how.annotate.is_none() {
                photo.drop_image();
            }
            photos.push(photo);
        }
        let crops: Vec<&[u8]> = photos
            .iter()
            .flat_map(|p| match p {
                Photo::Faces { faces, .. } => faces.iter().map(|f| &f.chw[..]).collect(),
                _ => vec![],
            })
            .collect();
        let mut scores = vec![];
        for batch in crops.chunks(32) {
            scores.push((
                batch.len(),
                score_faces(model, spec, batch, how.tta, device)?,
            ));
        }
        // (batch, row) of every crop, in order.
        let mut rows = scores
            .iter()
            .enumerate()
            .flat_map(|(b, (n, _))| (0..*n).map(move |i| (b, i)));
        for (i, photo) in photos.into_iter().enumerate() {
            summary.images += 1;
            let photo_no = chunk_no * PHOTOS_PER_CHUNK + i;
            let (path, image, faces) = match photo {
                Photo::Unreadable { path, reason } => {
                    eprintln!("skipped {}: {reason}", path.display());
                    summary.unreadable.push((path, reason));
                    continue;
                }
                Photo::NoFace { path } => {
                    summary.without_face += 1;
                    out.push(Prediction::no_face(&path));
                    continue;
                }
                Photo::Faces { path, image, faces } => (path, image, faces),
            };
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            let mut labels = vec![];
            for face in faces {
                let (b, row) = rows.next().expect("one score row per crop");
                let s = &scores[b].1;
                let (expression, probabilities) = match &s.scores {
                    Some(p) => {
                        let k = model.config().num_classes;
                        let r = &p[row * k..(row + 1) * k];
                        let k = r
                            .iter()
                            .enumerate()
                            .fold(0, |best, (k, &x)| if x > r[best] { k } else { best });
                        let map: BTreeMap<String, f32> =
                            r.iter().enumerate().map(|(k, &x)| (name(k), x)).collect();
                        (Some(name(k)), Some(map))
                    }
                    None => (None, None),
                };
                let (v, a) = (s.valence[row], s.arousal[row]);
                let class = match (&expression, &probabilities) {
                    (Some(e), Some(p)) => format!("{e} {:.2}", p[e]),
                    _ => "-".into(),
                };
                let caption = match spec.va_trained {
                    true => format!("{class} | V {v:+.2} A {a:+.2}"),
                    false => class,
                };
                let suffix = face.index.map_or(String::new(), |k| format!("-face{k}"));
                if let Some(dir) = how.heatmaps {
                    let maps = s
                        .alpha
                        .iter()
                        .map(|t| -> Result<(usize, usize, Vec<f32>)> {
                            let (_, h, w) = t.dims3()?;
                            Ok((h, w, t.get(row)?.flatten_all()?.to_vec1::<f32>()?))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    plots::attention(
                        &dir.join(format!("{photo_no:04}-{stem}{suffix}.png")),
                        &[AttentionFace {
                            image: face.chw.clone(),
                            size: spec.size,
                            maps,
                            caption: caption.clone(),
                        }],
                        &taps,
                    )?;
                }
                if let Some(b) = face.bbox {
                    let number = face.index.map_or(String::new(), |k| format!("{} ", k + 1));
                    labels.push(annotate::Label {
                        bbox: (b.x, b.y, b.w, b.h),
                        caption: format!("{number}{caption}"),
                    });
                }
                summary.faces += 1;
                out.push(Prediction {
                    path: path.display().to_string(),
                    face: face.index,
                    bbox: face
                        .bbox
                        .map(|b| [b.x as f32, b.y as f32, b.w as f32, b.h as f32]),
                    face_score: face.score,
                    expression,
                    probabilities,
                    valence: spec.va_trained.then_some(v),
                    arousal: spec.va_trained.then_some(a),
                    note: None,
                });
            }
            if let (Some(dir), Some(image)) = (how.annotate, &image) {
                annotate::photo(
                    &dir.join(format!("{photo_no:04}-{stem}.png")),
                    image,
                    &labels,
                )?;
            }
        }
    }
    Ok((out, summary))
}

/// JSON lines, or CSV (see [`predictions_csv`]) by the file extension.
pub fn format_predictions(
    preds: &[Prediction],
    out: Option<&Path>,
    classes: &[String],
) -> Result<String> {
    let csv = match out.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => true,
        Some(e) if e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json") => false,
        None if out.is_none() => false,
        _ => {
            return Err(Error::Config(format!(
                "--out {}: use a .jsonl or .csv file name",
                out.map(|p| p.display().to_string()).unwrap_or_default()
            )))
        }
    };
    if csv {
        return predictions_csv(preds, classes);
    }
    let mut s = String::new();
    for p in preds {
        s.push_str(&serde_json::to_string(p).map_err(|e| Error::Config(e.to_string()))?);
        s.push('\n');
    }
    Ok(s)
}

/// One row per face: path, face number, box, detector score, expression, valence, arousal, one
/// probability per class, note; the cells that do not apply (no detector, no V/A head, no
/// categorical head, no face) are empty.
fn predictions_csv(preds: &[Prediction], classes: &[String]) -> Result<String> {
    let err = |e: &dyn std::fmt::Display| Error::Config(format!("writing CSV: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "path",
        "face",
        "x",
        "y",
        "w",
        "h",
        "face_score",
        "expression",
        "valence",
        "arousal",
    ]
    .map(String::from)
    .to_vec();
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    header.push("note".into());
    w.write_record(&header).map_err(|e| err(&e))?;
    let cell = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
    for p in preds {
        let mut row = vec![
            p.path.clone(),
            p.face.map_or(String::new(), |k| k.to_string()),
        ];
        row.extend((0..4).map(|k| cell(p.bbox.map(|b| b[k]))));
        row.extend([
            cell(p.face_score),
            p.expression.clone().unwrap_or_default(),
            cell(p.valence),
            cell(p.arousal),
        ]);
        row.extend(
            classes
                .iter()
                .map(|c| cell(p.probabilities.as_ref().and_then(|m| m.get(c)).copied())),
        );
        row.push(p.note.clone().unwrap_or_default());
        w.write_record(&row).map_err(|e| err(&e))?;
    }
    let bytes = w.into_inner().map_err(|e| err(&e))?;
    String::from_utf8(bytes).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fer_data::crop::{crop_resize_chw, whole};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/tests/fixtures/formats")
            .join(name)
    }

    /// The crop `predict` classifies for a whole image, or why the file was skipped.
    fn load_face(
        path: &Path,
        spec: &InputSpec,
        rz: &mut Resizer,
    ) -> std::result::Result<Vec<u8>, String> {
        let opts = DetectOptions::default();
        match photos::load(path, None, DetectMode::Off, None, &opts, spec, rz).unwrap() {
            Photo::Faces { mut faces, .. } => Ok(faces.remove(0).chw),
            Photo::Unreadable { reason, .. } => Err(reason),
            Photo::NoFace { .. } => unreachable!("no detector"),
        }
    }

    fn spec(size: usize) -> InputSpec {
        InputSpec {
            size,
            margin: 0.0,
            classes: vec![],
            va_trained: true,
        }
    }

    #[test]
    fn faces_decode_as_prepare_data_decodes_them() {
        // The same face in four formats, one of them stored sideways with an EXIF tag: the
        // network sees what prepare-data put in the shards.
        let mut rz = Resizer::new();
        // Pillow's decoding of the lossless files (24x16), made with the fixtures.
        let pillow = std::fs::read(fixture("face.png.rgb")).unwrap();
        let want = crop_resize_chw(&mut rz, &pillow, 24, 16, whole(24, 16), 8);
        for f in ["face.png", "face.bmp", "face.tiff", "face.webp", "face.gif"] {
            assert_eq!(
                load_face(&fixture(f), &spec(8), &mut rz).unwrap(),
                want,
                "{f}"
            );
        }
        let turned = load_face(&fixture("orient-6.jpg"), &spec(8), &mut rz).unwrap();
        let rgb = decode::read_rgb(&fixture("orient-6.jpg")).unwrap();
        assert_eq!(
            rgb.dimensions(),
            (16, 24),
            "the EXIF rotation was not applied"
        );
        assert_eq!(
            turned,
            crop_resize_chw(&mut rz, rgb.as_raw(), 16, 24, whole(16, 24), 8)
        );
    }

    #[test]
    fn a_bomb_or_a_non_image_is_skipped_with_its_reason() {
        let mut rz = Resizer::new();
        let e = load_face(&fixture("bomb-side.png"), &spec(8), &mut rz).unwrap_err();
        assert!(e.contains("image too large"), "{e}");
        let e = load_face(&fixture("expected.json"), &spec(8), &mut rz).unwrap_err();
        assert!(e.contains("undecodable image"), "{e}");
        let e = load_face(&fixture("gone.png"), &spec(8), &mut rz).unwrap_err();
        assert!(e.contains("gone.png"), "{e}");
    }

    #[test]
    fn folders_offer_every_format_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "A.JPG", "b.Png", "c.BMP", "d.tif", "e.TIFF", "f.webp", "g.GIF", "h.jpeg",
        ];
        for n in names.iter().chain(&["notes.txt", "i.png.bak"]) {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        let found = collect_images(&[dir.path().to_path_buf()]).unwrap();
        let found: Vec<String> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, names);
    }

    #[test]
    fn box_parsing() {
        let b = parse_box("1,2.5,30,40").unwrap();
        assert_eq!((b.x, b.y, b.w, b.h), (1.0, 2.5, 30.0, 40.0));
        assert!(parse_box("1,2,3").is_err());
        assert!(parse_box("1,2,0,4").is_err());
        assert!(parse_box("a,b,c,d")
            .unwrap_err()
            .to_string()
            .contains("x,y,w,h"));
    }

    #[test]
    fn csv_and_jsonl() {
        let mut probs = BTreeMap::new();
        probs.insert("Happy".to_string(), 0.75f32);
        probs.insert("Sad".to_string(), 0.25f32);
        let p = vec![Prediction {
            path: "a,b.png".into(),
            face: Some(1),
            bbox: Some([10.5, 20.0, 30.0, 32.25]),
            face_score: Some(0.875),
            expression: Some("Happy".into()),
            probabilities: Some(probs),
            valence: Some(0.5),
            arousal: Some(-0.25),
            note: None,
        }];
        let classes = vec!["Happy".to_string(), "Sad".to_string()];
        let csv = format_predictions(&p, Some(Path::new("x.csv")), &classes).unwrap();
        assert_eq!(
            csv,
            "path,face,x,y,w,h,face_score,expression,valence,arousal,p_Happy,p_Sad,note\n\
             \"a,b.png\",1,10.5,20,30,32.25,0.875,Happy,0.5,-0.25,0.75,0.25,\n"
        );
        let js = format_predictions(&p, None, &classes).unwrap();
        let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
        assert_eq!(v["probabilities"]["Sad"], 0.25);
        assert!(format_predictions(&p, Some(Path::new("x.txt")), &classes).is_err());
        // A model without a trained V/A head: empty cells and nulls.
        let q = vec![Prediction {
            valence: None,
            arousal: None,
            ..p[0].clone()
        }];
        let csv = format_predictions(&q, Some(Path::new("x.csv")), &classes).unwrap();
        assert!(csv.ends_with(",Happy,,,0.75,0.25,\n"), "{csv}");
        // A photo without a face: one record that says so.
        let none = vec![Prediction::no_face(Path::new("empty.jpg"))];
        let csv = format_predictions(&none, Some(Path::new("x.csv")), &classes).unwrap();
        assert!(
            csv.ends_with("\nempty.jpg,,,,,,,,,,,,no face found\n"),
            "{csv}"
        );
        let js = format_predictions(&none, None, &classes).unwrap();
        let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
        assert_eq!(v["note"], "no face found");
        assert!(v["box"].is_null() && v["expression"].is_null());
        let js = format_predictions(&q, None, &classes).unwrap();
        let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
        assert!(v["valence"].is_null() && v["arousal"].is_null());
    }

    #[test]
    fn csv_paths_survive_a_csv_reader() {
        let path = "dir/\"odd\", name\nwith a line break.png";
        let p = vec![Prediction {
            valence: Some(0.5),
            arousal: Some(-0.25),
            ..Prediction::no_face(Path::new(path))
        }];
        let classes = vec!["Happy".to_string()];
        let text = format_predictions(&p, Some(Path::new("x.CSV")), &classes).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 1);
        let row: Vec<&str> = rows[0].iter().collect();
        assert_eq!(
            row,
            [
                path,
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "0.5",
                "-0.25",
                "",
                "no face found"
            ]
        );
    }
}
