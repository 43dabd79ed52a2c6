use std::path::PathBuf;

/// Everything that can go wrong reading a detector model or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a well-formed ONNX protobuf.
    #[error("malformed ONNX file: {0}")]
    Proto(String),
    /// Well-formed ONNX that this interpreter cannot run (an op or attribute it lacks).
    #[error("unsupported ONNX model: {0}")]
    Unsupported(String),
    /// The graph runs but is not shaped like a BlazeFace detector.
    #[error("not a BlazeFace model: {0}")]
    NotBlazeFace(String),
    /// A node got inputs it cannot combine (names the node).
    #[error("node {node} ({op}): {msg}")]
    Shape {
        node: String,
        op: String,
        msg: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
