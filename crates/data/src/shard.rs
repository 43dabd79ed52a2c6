//! The prepared-dataset shard: one safetensors file holding
//! `images` u8 `[N,3,S,S]`, `expression` i64 `[N]` (-1 = no class), `valence` and `arousal` f32
//! `[N]` (NaN = no value) and `source_row` i64 `[N]` (the row of the source list it came from).
//!
//! Writing is atomic; reading memory-maps the file, validates every dtype and shape, copies the
//! (small) label vectors and serves images straight from the map. [`Shard::open_checked`] also
//! checks the file against its manifest entry (size, content hash, count).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::checksum::Checksum;
use crate::manifest::ShardEntry;
use crate::{atomic, Error, Result};

/// Marker stored in the safetensors metadata so foreign files are recognised as such.
pub const FORMAT: &str = "fer-shard-v1";

/// An in-memory shard, as built by preparation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardData {
    /// Image side `S`.
    pub size: usize,
    /// `N * 3 * S * S` bytes, CHW per image.
    pub images: Vec<u8>,
    pub expression: Vec<i64>,
    pub valence: Vec<f32>,
    pub arousal: Vec<f32>,
    pub source_row: Vec<i64>,
}

impl ShardData {
    pub fn new(size: usize) -> Self {
        ShardData {
            size,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.expression.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expression.is_empty()
    }

    /// Appends one sample; `chw` must hold `3 * S * S` bytes.
    pub fn push(&mut self, chw: &[u8], expression: i64, valence: f32, arousal: f32, row: i64) {
        assert_eq!(
            chw.len(),
            3 * self.size * self.size,
            "image of the wrong size"
        );
        self.images.extend_from_slice(chw);
        self.expression.push(expression);
        self.valence.push(valence);
        self.arousal.push(arousal);
        self.source_row.push(row);
    }

    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let n = self.len();
        let s = self.size;
        let bad = |reason: String| Error::BadShard {
            path: PathBuf::from("<memory>"),
            reason,
        };
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let le64 = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (e, va, ar, sr) = (
            le64(&self.expression),
            le(&self.valence),
            le(&self.arousal),
            le64(&self.source_row),
        );
        let views = [
            ("images", Dtype::U8, vec![n, 3, s, s], &self.images[..]),
            ("expression", Dtype::I64, vec![n], &e[..]),
            ("valence", Dtype::F32, vec![n], &va[..]),
            ("arousal", Dtype::F32, vec![n], &ar[..]),
            ("source_row", Dtype::I64, vec![n], &sr[..]),
        ];
        let mut tensors = Vec::new();
        for (name, dtype, shape, data) in views {
            let view =
                TensorView::new(dtype, shape, data).map_err(|e| bad(format!("{name}: {e}")))?;
            tensors.push((name, view));
        }
        let meta = HashMap::from([("format".to_string(), FORMAT.to_string())]);
        safetensors::serialize(tensors, Some(meta)).map_err(|e| bad(e.to_string()))
    }

    /// Writes the shard atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        atomic::write_atomic(path, &self.to_bytes()?)
    }
}

/// A memory-mapped shard, validated on open.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    images_offset: usize,
    size: usize,
    pub expression: Vec<i64>,
    pub valence: Vec<f32>,
    pub arousal: Vec<f32>,
    pub source_row: Vec<i64>,
}

impl Shard {
    /// Opens and validates a shard; any wrong dtype, shape or length is an error naming the file.
    pub fn open(path: &Path) -> Result<Shard> {
        Shard::from_map(path, map_file(path)?)
    }

    /// [`open`](Self::open), after checking the file against its manifest entry: size and content
    /// hash before parsing (so damage is named as damage, wherever it hit), the sample count
    /// after. Checks whose value the entry lacks (a v2 manifest) are skipped.
    pub fn open_checked(path: &Path, entry: &ShardEntry) -> Result<Shard> {
        let damaged = |reason: String| Error::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let map = map_file(path).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                damaged("missing shard: the manifest lists it but the file is gone".into())
            }
            e => e,
        })?;
        if let Some(expected) = entry.bytes {
            let len = map.len() as u64;
            if len != expected {
                return Err(damaged(format!(
                    "damaged shard: {len} bytes, the manifest records {expected} (cut short or \
                     replaced)"
                )));
            }
        }
        if let Some(expected) = entry.checksum {
            let actual = Checksum::of(&map);
            if actual != expected {
                return Err(Error::ChecksumMismatch {
                    path: path.to_path_buf(),
                    expected,
                    actual,
                });
            }
        }
        let shard = Shard::from_map(path, map)?;
        if shard.len() != entry.count {
            return Err(damaged(format!(
                "damaged shard: holds {} samples, the manifest records {}",
                shard.len(),
                entry.count
            )));
        }
        Ok(shard)
    }

    /// The content hash of the whole file, as the manifest records it.
    pub fn checksum(&self) -> Checksum {
        Checksum::of(&self.map)
    }

    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    fn from_map(path: &Path, map: Mmap) -> Result<Shard> {
        let bad = |reason: String| Error::BadShard {
            path: path.to_path_buf(),
            reason,
        };
        let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        let get = |name: &str, dtype: Dtype| {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
            if t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        let images = get("images", Dtype::U8)?;
        let shape = images.shape().to_vec();
        if shape.len() != 4 || shape[1] != 3 || shape[2] != shape[3] || shape[2] == 0 {
            return Err(bad(format!(
                "tensor `images` has shape {shape:?}, expected [N, 3, S, S]"
            )));
        }
        let (n, size) = (shape[0], shape[2]);
        let vector = |name: &str, dtype: Dtype| -> Result<Vec<u8>> {
            let t = get(name, dtype)?;
            if t.shape() != [n] {
                return Err(bad(format!(
                    "tensor `{name}` has shape {:?}, expected [{n}]",
                    t.shape()
                )));
            }
            Ok(t.data().to_vec())
        };
        let i64s = |b: Vec<u8>| {
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
        };
        let f32s = |b: Vec<u8>| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
        };
        let expression = i64s(vector("expression", Dtype::I64)?);
        let valence = f32s(vector("valence", Dtype::F32)?);
        let arousal = f32s(vector("arousal", Dtype::F32)?);
        let source_row = i64s(vector("source_row", Dtype::I64)?);
        let images_offset = images.data().as_ptr() as usize - map.as_ptr() as usize;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            images_offset,
            size,
            expression,
            valence,
            arousal,
            source_row,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.expression.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expression.is_empty()
    }

    /// Image side `S`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The CHW bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = 3 * self.size * self.size;
        let start = self.images_offset + i * len;
        &self.map[start..start + len]
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: shards are written once by rename and never modified in place.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The shard files of one split folder, in name order (`*.safetensors`, temp files excluded).
pub fn list_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".safetensors") && !name.starts_with('.') {
            paths.push(p);
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, s: usize) -> ShardData {
        let mut d = ShardData::new(s);
        for i in 0..n {
            let img: Vec<u8> = (0..3 * s * s).map(|j| ((i * 31 + j) % 251) as u8).collect();
            let v = if i % 3 == 0 {
                f32::NAN
            } else {
                i as f32 / 10.0
            };
            d.push(&img, i as i64 % 9 - 1, v, -v, 100 + i as i64);
        }
        d
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train/shard-00000.safetensors");
        let d = sample(5, 7);
        d.write(&p).unwrap();
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s.size(), 7);
        for i in 0..5 {
            assert_eq!(s.image(i), &d.images[i * 147..(i + 1) * 147]);
        }
        assert_eq!(s.expression, d.expression);
        assert_eq!(s.source_row, d.source_row);
        for (a, b) in s.valence.iter().zip(&d.valence) {
            assert!(a.to_bits() == b.to_bits());
        }
        assert_eq!(list_shards(&dir.path().join("train")).unwrap(), vec![p]);
    }

    #[test]
    fn wrong_dtype_and_shape_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        let data = [0u8; 4 * 6];
        let views = vec![
            (
                "images",
                TensorView::new(Dtype::U8, vec![2, 3, 2, 2], &data[..]).unwrap(),
            ),
            (
                "expression",
                TensorView::new(Dtype::F32, vec![2], &data[..8]).unwrap(),
            ),
        ];
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let err = Shard::open(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("expression"),
            "{err}"
        );

        let views = vec![(
            "images",
            TensorView::new(Dtype::U8, vec![2, 2, 3, 2], &data[..]).unwrap(),
        )];
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let err = Shard::open(&p).unwrap_err().to_string();
        assert!(err.contains("[N, 3, S, S]"), "{err}");

        std::fs::write(&p, b"not a safetensors file").unwrap();
        assert!(Shard::open(&p).is_err());
    }
}
