//! Writes the seed corpora under `fuzz/seeds/<target>/`: small, valid inputs made with the
//! crates' own writers (shards, manifests, checkpoints, configs) or written by hand from the
//! formats' documentation (CSV lists, a tiny ONNX graph). No real face data is involved.
//!
//! Run from `fuzz/`: `cargo run --example make_seeds` (see README.md).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use fer_data::checksum::Checksum;
use fer_data::manifest::{
    Manifest, ShardEntry, SkipReason, SkippedRow, SourceInfo, SplitSummary, FORMAT, FORMAT_V1,
    FORMAT_V2,
};
use fer_data::prepare::ValCarve;
use fer_data::shard::ShardData;
use fer_model::ModelConfig;
use trainer::config::TrainConfig;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    csv_seeds(&root);
    let shards = shard_seeds(&root.join("shard"));
    manifest_seeds(&root.join("manifest"), &shards);
    checkpoint_seeds(&root.join("checkpoint"));
    config_seeds(&root.join("train_config"));
    onnx_seeds(&root.join("onnx_detector"));
    println!("seeds written under {}", root.display());
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn csv_seeds(root: &Path) {
    let header = fer_data::affectnet::COLUMNS.join(",");
    let dir = root.join("affectnet_csv");
    put(
        &dir,
        "rows.csv",
        format!(
            "{header}\n\
             1/a.jpg,10,12,80,80,\"1.0;2.0;3.0\",3,0.5,-0.25\n\
             1/b.jpg,0,0,64,64,,8,-2,-2\n\
             2/c.png,5,5,40,41,,11,0.1,0.1\n\
             2/d.png,x,5,40,41,,1,0.1,0.1\n\
             3/e.jpg,1,2,3\n\
             ,1,2,3,4,,2,0,0\n\
             3/f.jpg,1e3,2.5,30,30,,7,1.5,0\n"
        )
        .as_bytes(),
    );
    let reordered = "expression,subDirectory_filePath,arousal,valence,face_height,face_width,\
                     face_y,face_x,facial_landmarks\n6,q/r.jpg,-0.9,0.9,20,20,1,1,\n";
    put(&dir, "reordered.csv", reordered.as_bytes());
    put(&dir, "header_only.csv", format!("{header}\n").as_bytes());

    let dir = root.join("plain_csv");
    put(
        &dir,
        "boxes_splits.csv",
        b"path,expression,valence,arousal,x,y,w,h,split\n\
          a.png,happy,0.5,0.5,1,1,10,10,train\n\
          b.png,3,,,,,,,val\n\
          c.png,,0.1,-0.1,0,0,5,5,test\n\
          d.png,Angry,-2,-2,,,,,\n\
          e.png,12,0,0,,,,,validation\n\
          f.png,sad,0,0,1,2,3,,train\n\
          \"g,h.png\",neutral,1,-1,,,,,TEST\n\
          i.png,contempt,0,0,,,,,bogus\n",
    );
    put(
        &dir,
        "minimal.csv",
        b"Arousal,PATH,Valence,Expression\n0.2,x/y.jpg,0.3,0\n-0.5,z.jpg,nan,1\n",
    );
}

fn shard(n: usize, size: usize, first_row: i64) -> ShardData {
    let mut d = ShardData::new(size);
    for i in 0..n {
        let img: Vec<u8> = (0..3 * size * size).map(|j| (i * 37 + j) as u8).collect();
        let (class, va) = match i % 3 {
            0 => (i as i64 % 8, f32::NAN),
            1 => (-1, 0.25),
            _ => (2, -0.5),
        };
        d.push(&img, class, va, -va, first_row + i as i64);
    }
    d
}

/// Writes the shard seeds; returns the manifest entries of the first two.
fn shard_seeds(dir: &Path) -> Vec<(ShardData, ShardEntry)> {
    let mut entries = vec![];
    for (name, d) in [
        ("three_4px.safetensors", shard(3, 4, 0)),
        ("one_1px.safetensors", shard(1, 1, 7)),
        ("empty_2px.safetensors", shard(0, 2, 0)),
    ] {
        let bytes = d.to_bytes().unwrap();
        put(dir, name, &bytes);
        entries.push((
            d.clone(),
            ShardEntry {
                file: name.to_string(),
                count: d.len(),
                bytes: Some(bytes.len() as u64),
                checksum: Some(Checksum::of(&bytes)),
            },
        ));
    }
    entries
}

fn summary(d: &ShardData, entry: ShardEntry, skipped: usize) -> SplitSummary {
    let mut class_histogram = vec![0; 8];
    let mut no_class = 0;
    for &e in &d.expression {
        match usize::try_from(e) {
            Ok(c) => class_histogram[c] += 1,
            Err(_) => no_class += 1,
        }
    }
    SplitSummary {
        rows: d.len() + skipped,
        kept: d.len(),
        skipped,
        class_histogram,
        no_class,
        with_va: d.valence.iter().filter(|v| !v.is_nan()).count(),
        shards: vec![entry],
    }
}

fn manifest_seeds(dir: &Path, shards: &[(ShardData, ShardEntry)]) {
    let skipped_row = SkippedRow {
        split: "train".into(),
        row: 4,
        path: "1/e.jpg".into(),
        detail: "expected 9 fields, found 4".into(),
    };
    let mut m = Manifest {
        format: FORMAT.into(),
        source: SourceInfo {
            kind: "csv".into(),
            path: "data/list.csv".into(),
            images: Some("data/images".into()),
        },
        image_size: 4,
        margin: 0.2,
        num_classes: 8,
        class_names: fer_data::labels::EXPRESSION_NAMES[..8]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        class_map: BTreeMap::from([("happy".to_string(), 1)]),
        splits: BTreeMap::from([
            (
                "train".to_string(),
                summary(&shards[0].0, shards[0].1.clone(), 1),
            ),
            (
                "val".to_string(),
                summary(&shards[1].0, shards[1].1.clone(), 0),
            ),
        ]),
        split_origins: BTreeMap::from([
            (
                "train".to_string(),
                "every row (no split column)".to_string(),
            ),
            (
                "val".to_string(),
                "carved from the training rows: 10.0 % of each class, seed 7".to_string(),
            ),
        ]),
        val_carve: Some(ValCarve {
            fraction: 0.1,
            seed: 7,
        }),
        skipped: BTreeMap::from([(SkipReason::MalformedRow, vec![skipped_row])]),
    };
    m.check().unwrap();
    let scratch = std::env::temp_dir().join("fer-fuzz-seeds");
    std::fs::create_dir_all(&scratch).unwrap();
    let save = |name: &str, m: &Manifest| {
        let p = scratch.join(name);
        m.save(&p).unwrap();
        Manifest::load(&p).unwrap();
        put(dir, name, &std::fs::read(&p).unwrap());
    };
    save("v3.json", &m);
    m.format = FORMAT_V2.into();
    for s in m.splits.values_mut() {
        for e in &mut s.shards {
            e.bytes = None;
            e.checksum = None;
        }
    }
    m.val_carve = None;
    save("v2.json", &m);
    m.format = FORMAT_V1.into();
    m.split_origins.clear();
    m.class_map.clear();
    m.source.images = None;
    m.source.kind = "affectnet".into();
    save("v1.json", &m);
}

fn checkpoint_seeds(dir: &Path) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, shape) in [
            ("backbone.conv1.weight", &[2usize, 3, 1, 1][..]),
            ("head.bias", &[8][..]),
        ] {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.125 - 0.5).collect();
            let t = Tensor::from_vec(values, shape, &dev).unwrap();
            data.insert(name.to_string(), candle_core::Var::from_tensor(&t).unwrap());
        }
    }
    let extra = vec![(
        "train.adam.m.head.bias".to_string(),
        Tensor::zeros(8, DType::F32, &dev).unwrap(),
    )];
    let meta = BTreeMap::from([
        ("epoch".to_string(), "3".to_string()),
        ("step".to_string(), "120".to_string()),
    ]);
    let scratch = std::env::temp_dir().join("fer-fuzz-seeds");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut small = ModelConfig::default();
    small.num_classes = 7;
    small.cat_hidden = 4;
    for (name, cfg, extra, meta) in [
        (
            "default_config.safetensors",
            ModelConfig::default(),
            &extra[..],
            &meta,
        ),
        ("small_config.safetensors", small, &[][..], &BTreeMap::new()),
    ] {
        let p = scratch.join(name);
        fer_model::checkpoint::save(&p, &varmap, &cfg, extra, meta).unwrap();
        fer_model::checkpoint::load(&p, &dev).unwrap();
        put(dir, name, &std::fs::read(&p).unwrap());
    }
    // A safetensors file without our metadata: the reader must say it is no checkpoint.
    let t = Tensor::ones((2, 2), DType::F32, &dev).unwrap();
    let foreign = candle_core::safetensors::save(&HashMap::from([("w", t)]), scratch.join("f"));
    foreign.unwrap();
    put(
        dir,
        "foreign.safetensors",
        &std::fs::read(scratch.join("f")).unwrap(),
    );
}

fn config_seeds(dir: &Path) {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for entry in std::fs::read_dir(configs).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            put(
                dir,
                &p.file_name().unwrap().to_string_lossy(),
                &std::fs::read(&p).unwrap(),
            );
        }
    }
    let full = TrainConfig::default().to_toml().unwrap();
    put(dir, "defaults_written.toml", full.as_bytes());
    put(
        dir,
        "short.toml",
        b"mode = \"joint\"\nseed = 3\n[stage1]\nepochs = 2\nlr = 0.01\n",
    );
}

// --- A tiny ONNX model, encoded by hand from onnx.proto's field numbers. ---

use fer_test_support::protobuf::{len_field as field, varint, varint_field};

fn int_field(number: u64, v: i64) -> Vec<u8> {
    varint_field(number, v as u64)
}

fn packed(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|&x| varint(x as u64)).collect()
}

fn attr_ints(name: &str, v: &[i64]) -> Vec<u8> {
    [field(1, name.as_bytes()), field(8, &packed(v))].concat()
}

fn attr_int(name: &str, v: i64) -> Vec<u8> {
    [field(1, name.as_bytes()), int_field(3, v)].concat()
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut n = vec![];
    for i in inputs {
        n.extend(field(1, i.as_bytes()));
    }
    n.extend(field(2, output.as_bytes()));
    n.extend(field(3, format!("{op}_{output}").as_bytes()));
    n.extend(field(4, op.as_bytes()));
    for a in attrs {
        n.extend(field(5, a));
    }
    n
}

fn float_tensor(name: &str, dims: &[i64]) -> Vec<u8> {
    let n: i64 = dims.iter().product();
    let raw: Vec<u8> = (0..n)
        .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
        .collect();
    [
        field(1, &packed(dims)),
        int_field(2, 1),
        field(8, name.as_bytes()),
        field(9, &raw),
    ]
    .concat()
}

fn int_tensor(name: &str, values: &[i64]) -> Vec<u8> {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    [
        field(1, &packed(&[values.len() as i64])),
        int_field(2, 7),
        field(8, name.as_bytes()),
        field(9, &raw),
    ]
    .concat()
}

fn value_info(name: &str, dims: &[Option<i64>]) -> Vec<u8> {
    let shape: Vec<u8> = dims
        .iter()
        .flat_map(|d| match d {
            Some(v) => field(1, &int_field(1, *v)),
            None => field(1, &field(2, b"batch")),
        })
        .collect();
    let tensor_type = [int_field(1, 1), field(2, &shape)].concat();
    [field(1, name.as_bytes()), field(2, &field(1, &tensor_type))].concat()
}

fn model(side: i64, nodes: &[Vec<u8>], inits: &[Vec<u8>], outputs: &[&str]) -> Vec<u8> {
    let mut g = vec![];
    for n in nodes {
        g.extend(field(1, n));
    }
    for t in inits {
        g.extend(field(5, t));
    }
    g.extend(field(
        11,
        &value_info("input", &[Some(1), Some(side), Some(side), Some(3)]),
    ));
    for o in outputs {
        g.extend(field(12, &value_info(o, &[None, Some(4)])));
    }
    let opset = [field(1, b""), int_field(2, 11)].concat();
    [int_field(1, 7), field(7, &g), field(8, &opset)].concat()
}

fn onnx_seeds(dir: &Path) {
    let full = model(
        32,
        &[
            node(
                "Transpose",
                &["input"],
                "nchw",
                &[attr_ints("perm", &[0, 3, 1, 2])],
            ),
            node(
                "Conv",
                &["nchw", "w", "b"],
                "conv",
                &[
                    attr_ints("strides", &[2, 2]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                    attr_ints("dilations", &[1, 1]),
                    attr_int("group", 1),
                ],
            ),
            node("Relu", &["conv"], "relu", &[]),
            node(
                "MaxPool",
                &["relu"],
                "pool",
                &[
                    attr_ints("kernel_shape", &[2, 2]),
                    attr_ints("strides", &[2, 2]),
                ],
            ),
            node("Add", &["pool", "pool"], "sum", &[]),
            node("Reshape", &["sum", "shape"], "flat", &[]),
            node("ConstantOfShape", &["shape"], "zeros", &[]),
            node("Concat", &["flat", "zeros"], "out", &[attr_int("axis", 1)]),
        ],
        &[
            float_tensor("w", &[4, 3, 3, 3]),
            float_tensor("b", &[4]),
            int_tensor("shape", &[1, -1]),
        ],
        &["out"],
    );
    let fer = fer_detect::Detector::from_bytes(&full).unwrap();
    assert_eq!(fer.input_size(), 32);
    put(dir, "all_ops.onnx", &full);
    let tiny = model(64, &[node("Relu", &["input"], "out", &[])], &[], &["out"]);
    fer_detect::Detector::from_bytes(&tiny).unwrap();
    put(dir, "one_relu.onnx", &tiny);
}
