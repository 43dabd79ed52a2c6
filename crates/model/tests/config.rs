//! ModelConfig: the defaults of docs/ARCHITECTURE.md, TOML round trips, and validation errors that name the field.

use fer_model::{ModelConfig, RnnKind, Stem};

#[test]
fn defaults_are_the_design_sizes() {
    let c = ModelConfig::default();
    assert_eq!(c.backbone.depth, 18);
    assert_eq!(c.backbone.width, 1.0);
    assert_eq!(c.backbone.stem, Stem::Imagenet);
    assert_eq!(c.backbone.taps, ["layer2", "layer3", "layer4"]);
    assert_eq!((c.attention.d, c.attention.a), (256, 128));
    assert_eq!((c.rnn.kind, c.rnn.hidden), (RnnKind::Lstm, 128));
    assert_eq!((c.att2_width, c.cat_hidden, c.va_hidden), (64, 128, 128));
    assert_eq!(c.num_classes, 8);
    assert!(!c.no_att1 && !c.no_att2 && c.categorical && c.aux_head);
    assert_eq!(c.z_dim(), 256);
    c.validate().unwrap();
}

#[test]
fn partial_toml_fills_in_defaults() {
    let c = ModelConfig::from_toml_str(
        r#"
        num_classes = 7
        aux_head = true
        [backbone]
        width = 0.5
        stem = "small"
        stem_stride = 2
        [rnn]
        kind = "gru"
        "#,
    )
    .unwrap();
    assert_eq!(c.num_classes, 7);
    assert_eq!(c.backbone.width, 0.5);
    assert_eq!(c.backbone.stem, Stem::Small);
    assert_eq!(c.backbone.stem_stride, 2);
    assert_eq!(c.backbone.depth, 18);
    assert_eq!(c.rnn.kind, RnnKind::Gru);
    assert_eq!(c.rnn.hidden, 128);
    assert_eq!(c.attention.d, 256);
}

#[test]
fn toml_and_json_round_trip() {
    let mut c = ModelConfig::default();
    c.backbone.depth = 50;
    c.backbone.taps = vec!["layer1".into(), "layer4".into()];
    c.no_att2 = true;
    // Without the categorical task there is no auxiliary (categorical) head either.
    c.categorical = false;
    c.aux_head = false;
    c.rnn.kind = RnnKind::Gru;
    let toml = c.to_toml_string().unwrap();
    assert_eq!(ModelConfig::from_toml_str(&toml).unwrap(), c);
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), c);
    assert_eq!(c.z_dim(), 256); // d, not 2h, without the Bi-RNN
}

fn err_of(toml: &str) -> String {
    ModelConfig::from_toml_str(toml).unwrap_err().to_string()
}

#[test]
fn invalid_configs_are_named() {
    let cases = [
        ("[backbone]\ntaps = [\"layer2\", \"layer5\"]", "layer5"),
        (
            "[backbone]\ntaps = [\"layer3\", \"layer2\"]",
            "out of order",
        ),
        ("[backbone]\ntaps = [\"layer3\", \"layer3\"]", "repeated"),
        ("[backbone]\ntaps = []", "taps is empty"),
        ("[backbone]\ndepth = 101", "backbone.depth = 101"),
        ("[backbone]\nwidth = 0.0", "backbone.width = 0"),
        ("[backbone]\nwidth = -1.0", "backbone.width = -1"),
        ("[backbone]\nwidth = nan", "backbone.width = NaN"),
        ("[backbone]\nwidth = 0.001", "no channels"),
        ("[backbone]\nstem_stride = 0", "stem_stride"),
        ("[backbone]\nstem = \"tiny\"", "tiny"),
        ("num_classes = 9", "num_classes = 9"),
        ("[rnn]\nhidden = 0", "rnn.hidden"),
        ("[rnn]\nkind = \"rnn\"", "rnn"),
        ("att2_width = 0", "att2_width"),
        ("categorical = false\naux_head = true", "aux_head"),
        ("hiden = 3", "hiden"),
    ];
    for (toml, needle) in cases {
        let e = err_of(toml);
        assert!(
            e.contains(needle),
            "{toml:?}: {e:?} does not mention {needle:?}"
        );
    }
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.toml");
    std::fs::write(&p, "num_classes = 3\n").unwrap();
    let e = ModelConfig::from_toml_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("model.toml") && e.contains("num_classes = 3"),
        "{e}"
    );
    let e = ModelConfig::from_toml_file(dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
    std::fs::write(&p, "[backbone]\ndepth = 34\n").unwrap();
    assert_eq!(ModelConfig::from_toml_file(&p).unwrap().backbone.depth, 34);
}
