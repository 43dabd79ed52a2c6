//! Prediction on image files: crop (optionally by a face box), resize as the training data was
//! prepared, and report class probabilities and valence/arousal per image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use fast_image_resize::Resizer;
use fer_data::crop::{crop_resize_chw, square_crop, whole, FaceBox};
use fer_data::decode;
use fer_data::loader::normalize_images;
use fer_data::manifest::SkipReason;
use fer_model::checkpoint::Checkpoint;
use fer_model::TwoAttTwoMt;
use serde::Serialize;

use crate::evaluate::{mirror, Tta};
use crate::plots::{self, AttentionFace};
use crate::state::keys;
use crate::{Error, Result};

/// One line of the output.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub path: String,
    /// `None` for a model without a categorical head.
    pub expression: Option<String>,
    pub probabilities: Option<BTreeMap<String, f32>>,
    /// `None` (JSON `null`, an empty CSV cell) for a model trained without valence/arousal
    /// labels, whose V/A head never learned.
    pub valence: Option<f32>,
    pub arousal: Option<f32>,
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

/// Decodes (as prepare-data does: any supported format, EXIF orientation applied, within the
/// decoding limits), crops and resizes one image to CHW bytes.
pub fn load_face(
    path: &Path,
    face: Option<FaceBox>,
    spec: &InputSpec,
    resizer: &mut Resizer,
) -> Result<Vec<u8>> {
    let img = decode::read_rgb(path).map_err(|(reason, detail)| match reason {
        // The detail of a read failure names the file already.
        SkipReason::MissingFile | SkipReason::UnreadableFile => Error::Data(detail),
        _ => Error::Data(format!(
            "{}: cannot decode image ({reason}): {detail}",
            path.display()
        )),
    })?;
    let (w, h) = img.dimensions();
    let rect = match face {
        Some(b) => square_crop(b, spec.margin, w, h).map_err(|e| {
            Error::Data(format!(
                "{}: face box does not fit the {w}x{h} image: {e:?}",
                path.display()
            ))
        })?,
        None => whole(w, h),
    };
    Ok(crop_resize_chw(
        resizer,
        img.as_raw(),
        w,
        h,
        rect,
        spec.size as u32,
    ))
}

/// Predicts every image, in batches; writes heat maps (of the face as given) when `heatmaps` is
/// set. With `Tta::Flip` the probabilities and valence/arousal are the mean of the face's and
/// its mirror image's.
pub fn predict(
    model: &TwoAttTwoMt,
    spec: &InputSpec,
    images: &[PathBuf],
    face: Option<FaceBox>,
    heatmaps: Option<&Path>,
    tta: Tta,
    device: &Device,
) -> Result<Vec<Prediction>> {
    let mut resizer = Resizer::new();
    let mut out = vec![];
    let taps = model.config().backbone.taps.clone();
    for (chunk_no, chunk) in images.chunks(32).enumerate() {
        let faces: Vec<Vec<u8>> = chunk
            .iter()
            .map(|p| load_face(p, face, spec, &mut resizer))
            .collect::<Result<_>>()?;
        let n = faces.len();
        let x = normalize_images(&faces.concat(), n, spec.size, device)?;
        let o = model.forward(&x, false)?;
        let probs_of = |o: &fer_model::ModelOutput| -> Result<Option<Vec<Vec<f32>>>> {
            Ok(match &o.logits {
                Some(l) => {
                    Some(candle_nn::ops::softmax(&l.to_dtype(DType::F32)?, 1)?.to_vec2::<f32>()?)
                }
                None => None,
            })
        };
        let mut probs = probs_of(&o)?;
        let (mut v, mut a) = (o.valence.to_vec1::<f32>()?, o.arousal.to_vec1::<f32>()?);
        if tta == Tta::Flip {
            let m = model.forward(&mirror(&x)?, false)?;
            let mean = |x: &mut [f32], y: &[f32]| {
                for (p, q) in x.iter_mut().zip(y) {
                    *p = 0.5 * (*p + q);
                }
            };
            if let (Some(p), Some(q)) = (&mut probs, probs_of(&m)?) {
                for (pr, qr) in p.iter_mut().zip(&q) {
                    mean(pr, qr);
                }
            }
            mean(&mut v, &m.valence.to_vec1::<f32>()?);
            mean(&mut a, &m.arousal.to_vec1::<f32>()?);
        }
        for (i, path) in chunk.iter().enumerate() {
            let (expression, probabilities) = match &probs {
                Some(p) => {
                    let row = &p[i];
                    let k = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (k, &x)| if x > row[b] { k } else { b });
                    let name = |k: usize| {
                        spec.classes
                            .get(k)
                            .cloned()
                            .unwrap_or_else(|| format!("class{k}"))
                    };
                    let map = row.iter().enumerate().map(|(k, &x)| (name(k), x)).collect();
                    (Some(name(k)), Some(map))
                }
                None => (None, None),
            };
            if let Some(dir) = heatmaps {
                let maps = o
                    .alpha
                    .iter()
                    .map(|t| -> Result<(usize, usize, Vec<f32>)> {
                        let (_, h, w) = t.dims3()?;
                        Ok((h, w, t.get(i)?.flatten_all()?.to_vec1::<f32>()?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
                let file = dir.join(format!("{:04}-{stem}.png", chunk_no * 32 + i));
                let caption = if spec.va_trained {
                    format!(
                        "{} | V {:+.2} A {:+.2}",
                        expression.as_deref().unwrap_or("-"),
                        v[i],
                        a[i]
                    )
                } else {
                    expression.clone().unwrap_or_else(|| "-".into())
                };
                plots::attention(
                    &file,
                    &[AttentionFace {
                        image: faces[i].clone(),
                        size: spec.size,
                        maps,
                        caption,
                    }],
                    &taps,
                )?;
            }
            out.push(Prediction {
                path: path.display().to_string(),
                expression,
                probabilities,
                valence: spec.va_trained.then_some(v[i]),
                arousal: spec.va_trained.then_some(a[i]),
            });
        }
    }
    Ok(out)
}

/// JSON lines, or CSV (`path,expression,valence,arousal,p_<class>...`) by the file extension.
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

/// One row per face: path, expression, valence, arousal, then one probability per class; the
/// cells a model cannot fill (no V/A head, no categorical head) are empty.
fn predictions_csv(preds: &[Prediction], classes: &[String]) -> Result<String> {
    let err = |e: &dyn std::fmt::Display| Error::Config(format!("writing CSV: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "path".to_string(),
        "expression".into(),
        "valence".into(),
        "arousal".into(),
    ];
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    w.write_record(&header).map_err(|e| err(&e))?;
    let cell = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
    for p in preds {
        let mut row = vec![
            p.path.clone(),
            p.expression.clone().unwrap_or_default(),
            cell(p.valence),
            cell(p.arousal),
        ];
        row.extend(
            classes
                .iter()
                .map(|c| cell(p.probabilities.as_ref().and_then(|m| m.get(c)).copied())),
        );
        w.write_record(&row).map_err(|e| err(&e))?;
    }
    let bytes = w.into_inner().map_err(|e| err(&e))?;
    String::from_utf8(bytes).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/tests/fixtures/formats")
            .join(name)
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
        // The same face in five formats, and one stored sideways with an EXIF tag: the
        // network sees what prepare-data put in the shards.
        let mut rz = Resizer::new();
        // Pillow's decoding of the lossless files (24x16), made with the fixtures.
        let pillow = std::fs::read(fixture("face.png.rgb")).unwrap();
        let want = crop_resize_chw(&mut rz, &pillow, 24, 16, whole(24, 16), 8);
        for f in ["face.png", "face.bmp", "face.tiff", "face.webp", "face.gif"] {
            assert_eq!(
                load_face(&fixture(f), None, &spec(8), &mut rz).unwrap(),
                want,
                "{f}"
            );
        }
        let turned = load_face(&fixture("orient-6.jpg"), None, &spec(8), &mut rz).unwrap();
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
    fn a_bomb_or_a_non_image_is_an_error_naming_the_file() {
        let mut rz = Resizer::new();
        let e = load_face(&fixture("bomb-side.png"), None, &spec(8), &mut rz)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bomb-side.png") && e.contains("image too large"),
            "{e}"
        );
        let e = load_face(&fixture("expected.json"), None, &spec(8), &mut rz)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected.json") && e.contains("undecodable image"),
            "{e}"
        );
        let e = load_face(&fixture("gone.png"), None, &spec(8), &mut rz)
            .unwrap_err()
            .to_string();
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
            expression: Some("Happy".into()),
            probabilities: Some(probs),
            valence: Some(0.5),
            arousal: Some(-0.25),
        }];
        let classes = vec!["Happy".to_string(), "Sad".to_string()];
        let csv = format_predictions(&p, Some(Path::new("x.csv")), &classes).unwrap();
        assert_eq!(
            csv,
            "path,expression,valence,arousal,p_Happy,p_Sad\n\"a,b.png\",Happy,0.5,-0.25,0.75,0.25\n"
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
        assert!(csv.ends_with("\"a,b.png\",Happy,,,0.75,0.25\n"), "{csv}");
        let js = format_predictions(&q, None, &classes).unwrap();
        let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
        assert!(v["valence"].is_null() && v["arousal"].is_null());
    }

    #[test]
    fn csv_paths_survive_a_csv_reader() {
        let path = "dir/\"odd\", name\nwith a line break.png";
        let p = vec![Prediction {
            path: path.into(),
            expression: None,
            probabilities: None,
            valence: Some(0.5),
            arousal: Some(-0.25),
        }];
        let classes = vec!["Happy".to_string()];
        let text = format_predictions(&p, Some(Path::new("x.CSV")), &classes).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 1);
        let row: Vec<&str> = rows[0].iter().collect();
        assert_eq!(row, [path, "", "0.5", "-0.25", ""]);
    }
}
