//! The part of ONNX's protobuf schema a feed-forward image model needs, read straight from the
//! wire format: nodes, attributes, initializers, graph inputs and outputs.
//!
//! A hand-written reader rather than generated code: the schema subset is small and fixed, and
//! it keeps the crate free of a protobuf compiler at build time. Every length is checked against
//! the bytes that remain before anything is sliced or allocated, so a corrupt file is an error,
//! never a panic or a huge allocation. Unknown fields are skipped, as protobuf requires.

use crate::{Error, Result};

/// `TensorProto.DataType` values this reader decodes.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;

/// A constant tensor: an initializer or an attribute value.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorProto {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: TensorData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Bytes(Vec<u8>),
    Tensor(TensorProto),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeProto {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

/// A graph input or output: its name and static shape (`None` for a symbolic dimension).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Vec<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphProto {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelProto {
    pub ir_version: i64,
    /// Opset version of the default (`""` / `ai.onnx`) domain.
    pub opset: Option<i64>,
    pub graph: GraphProto,
}

/// One protobuf field as it sits on the wire.
enum Field<'a> {
    Varint(u64),
    /// Read past: no field this reader keeps is a 64-bit fixed value.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn err(&self, msg: &str) -> Error {
        Error::Proto(format!("{}: {msg}", self.what))
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| self.err("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.buf.len() as u64 {
            return Err(self.err(&format!(
                "field of {n} bytes but only {} remain",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n as usize);
        self.buf = rest;
        Ok(head)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Field<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| self.err("field number too large"))?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()?;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(self.take(4)?.try_into().expect("4 bytes")),
            w => return Err(self.err(&format!("unsupported wire type {w}"))),
        };
        Ok(Some((number, field)))
    }
}

fn string(b: &[u8], what: &str) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| Error::Proto(format!("{what}: name is not UTF-8")))
}

/// Repeated int64: packed (one length-delimited run of varints) or one varint per field.
fn push_varints(field: Field, out: &mut Vec<i64>, what: &'static str) -> Result<()> {
    match field {
        Field::Varint(v) => out.push(v as i64),
        Field::Bytes(b) => {
            let mut r = Reader::new(b, what);
            while !r.buf.is_empty() {
                out.push(r.varint()? as i64);
            }
        }
        _ => return Err(Error::Proto(format!("{what}: wrong wire type for int64"))),
    }
    Ok(())
}

/// Repeated float: packed little-endian run or one fixed32 per field.
fn push_floats(field: Field, out: &mut Vec<f32>, what: &'static str) -> Result<()> {
    match field {
        Field::Fixed32(b) => out.push(f32::from_le_bytes(b)),
        Field::Bytes(b) if b.len() % 4 == 0 => out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        ),
        _ => return Err(Error::Proto(format!("{what}: wrong wire type for float"))),
    }
    Ok(())
}

fn bytes<'a>(field: Field<'a>, what: &'static str) -> Result<&'a [u8]> {
    match field {
        Field::Bytes(b) => Ok(b),
        _ => Err(Error::Proto(format!(
            "{what}: expected a length-delimited field"
        ))),
    }
}

fn varint(field: Field, what: &'static str) -> Result<u64> {
    match field {
        Field::Varint(v) => Ok(v),
        _ => Err(Error::Proto(format!("{what}: expected a varint field"))),
    }
}

impl TensorProto {
    fn decode(buf: &[u8]) -> Result<Self> {
        const W: &str = "TensorProto";
        let mut r = Reader::new(buf, W);
        let (mut name, mut dims, mut dtype) = (String::new(), vec![], 0i32);
        let (mut raw, mut floats, mut ints) = (None, vec![], vec![]);
        while let Some((n, f)) = r.next()? {
            match n {
                1 => push_varints(f, &mut dims, W)?,
                2 => dtype = varint(f, W)? as i32,
                4 => push_floats(f, &mut floats, W)?,
                5 | 7 => push_varints(f, &mut ints, W)?,
                8 => name = string(bytes(f, W)?, W)?,
                9 => raw = Some(bytes(f, W)?),
                13 => {
                    return Err(Error::Unsupported(
                        "tensor data stored outside the file (external_data)".into(),
                    ))
                }
                _ => {}
            }
        }
        let count = dims.iter().try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
        let count = count
            .ok_or_else(|| Error::Proto(format!("tensor {name:?}: bad dimensions {dims:?}")))?;
        let data = match (dtype, raw) {
            (FLOAT, Some(b)) => {
                if b.len() as u64 != count * 4 {
                    return Err(Error::Proto(format!(
                        "tensor {name:?}: {} raw bytes for {count} floats",
                        b.len()
                    )));
                }
                let mut v = vec![];
                push_floats(Field::Bytes(b), &mut v, W)?;
                TensorData::F32(v)
            }
            (FLOAT, None) => TensorData::F32(floats),
            (INT64, Some(b)) if b.len() as u64 == count * 8 => TensorData::I64(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            (INT32, Some(b)) if b.len() as u64 == count * 4 => TensorData::I64(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect(),
            ),
            (INT64 | INT32, Some(b)) => {
                return Err(Error::Proto(format!(
                    "tensor {name:?}: {} raw bytes for {count} integers",
                    b.len()
                )))
            }
            (INT64 | INT32, None) => TensorData::I64(ints),
            (t, _) => {
                return Err(Error::Unsupported(format!(
                    "tensor {name:?} has data type {t} (only float, int32 and int64 are read)"
                )))
            }
        };
        let len = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        };
        if len as u64 != count {
            return Err(Error::Proto(format!(
                "tensor {name:?}: {len} values for dimensions {dims:?}"
            )));
        }
        Ok(Self { name, dims, data })
    }
}

impl Attribute {
    fn decode(buf: &[u8]) -> Result<Self> {
        const W: &str = "AttributeProto";
        let mut r = Reader::new(buf, W);
        let mut name = String::new();
        let (mut value, mut ints, mut floats) = (None, vec![], vec![]);
        while let Some((n, f)) = r.next()? {
            match n {
                1 => name = string(bytes(f, W)?, W)?,
                2 => match f {
                    Field::Fixed32(b) => value = Some(AttrValue::Float(f32::from_le_bytes(b))),
                    _ => return Err(Error::Proto(format!("{W}: float attribute wire type"))),
                },
                3 => value = Some(AttrValue::Int(varint(f, W)? as i64)),
                4 => value = Some(AttrValue::Bytes(bytes(f, W)?.to_vec())),
                5 => value = Some(AttrValue::Tensor(TensorProto::decode(bytes(f, W)?)?)),
                7 => push_floats(f, &mut floats, W)?,
                8 => push_varints(f, &mut ints, W)?,
                _ => {}
            }
        }
        let value = match value {
            Some(v) => v,
            None if !floats.is_empty() => AttrValue::Floats(floats),
            // An empty list is written as no field at all, so it reads as empty ints.
            None => AttrValue::Ints(ints),
        };
        Ok(Self { name, value })
    }
}

impl NodeProto {
    fn decode(buf: &[u8]) -> Result<Self> {
        const W: &str = "NodeProto";
        let mut r = Reader::new(buf, W);
        let mut node = NodeProto::default();
        while let Some((n, f)) = r.next()? {
            match n {
                1 => node.inputs.push(string(bytes(f, W)?, W)?),
                2 => node.outputs.push(string(bytes(f, W)?, W)?),
                3 => node.name = string(bytes(f, W)?, W)?,
                4 => node.op_type = string(bytes(f, W)?, W)?,
                5 => node.attributes.push(Attribute::decode(bytes(f, W)?)?),
                7 => {
                    let domain = string(bytes(f, W)?, W)?;
                    if !domain.is_empty() && domain != "ai.onnx" {
                        return Err(Error::Unsupported(format!("operator domain {domain:?}")));
                    }
                }
                _ => {}
            }
        }
        Ok(node)
    }
}

impl ValueInfo {
    fn decode(buf: &[u8]) -> Result<Self> {
        const W: &str = "ValueInfoProto";
        let mut r = Reader::new(buf, W);
        let mut info = ValueInfo::default();
        while let Some((n, f)) = r.next()? {
            match n {
                1 => info.name = string(bytes(f, W)?, W)?,
                // TypeProto.tensor_type (1) -> Tensor.shape (2) -> Shape.dim (1) -> dim_value (1)
                2 => {
                    let mut ty = Reader::new(bytes(f, W)?, W);
                    while let Some((1, tensor)) = ty.next()? {
                        let mut t = Reader::new(bytes(tensor, W)?, W);
                        while let Some((n, shape)) = t.next()? {
                            if n != 2 {
                                continue;
                            }
                            let mut s = Reader::new(bytes(shape, W)?, W);
                            while let Some((1, dim)) = s.next()? {
                                let mut d = Reader::new(bytes(dim, W)?, W);
                                let mut value = None;
                                while let Some((n, v)) = d.next()? {
                                    if n == 1 {
                                        value = Some(varint(v, W)? as i64);
                                    }
                                }
                                info.shape.push(value);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

impl GraphProto {
    fn decode(buf: &[u8]) -> Result<Self> {
        const W: &str = "GraphProto";
        let mut r = Reader::new(buf, W);
        let mut g = GraphProto::default();
        while let Some((n, f)) = r.next()? {
            match n {
                1 => g.nodes.push(NodeProto::decode(bytes(f, W)?)?),
                5 => g.initializers.push(TensorProto::decode(bytes(f, W)?)?),
                11 => g.inputs.push(ValueInfo::decode(bytes(f, W)?)?),
                12 => g.outputs.push(ValueInfo::decode(bytes(f, W)?)?),
                _ => {}
            }
        }
        Ok(g)
    }
}

impl ModelProto {
    /// Parses a whole `.onnx` file's bytes.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        const W: &str = "ModelProto";
        let mut r = Reader::new(buf, W);
        let mut m = ModelProto::default();
        let mut graph = None;
        while let Some((n, f)) = r.next()? {
            match n {
                1 => m.ir_version = varint(f, W)? as i64,
                7 => graph = Some(GraphProto::decode(bytes(f, W)?)?),
                // OperatorSetIdProto: domain (1), version (2)
                8 => {
                    let mut o = Reader::new(bytes(f, W)?, W);
                    let (mut domain, mut version) = (String::new(), None);
                    while let Some((n, v)) = o.next()? {
                        match n {
                            1 => domain = string(bytes(v, W)?, W)?,
                            2 => version = Some(varint(v, W)? as i64),
                            _ => {}
                        }
                    }
                    if domain.is_empty() || domain == "ai.onnx" {
                        m.opset = version;
                    }
                }
                _ => {}
            }
        }
        m.graph = graph.ok_or_else(|| Error::Proto("no graph in the model".into()))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bytes come from an encoder written from protobuf's encoding guide, independent of
    // the reader.
    use fer_test_support::protobuf::{len_field, varint as varint_bytes, varint_field};

    #[test]
    fn varints_match_the_protobuf_spec_examples() {
        // From the protobuf encoding guide: 150 is 96 01; 1 is 01; 300 is ac 02.
        for (bytes, v) in [
            (&[0x96u8, 0x01][..], 150u64),
            (&[0x01], 1),
            (&[0xac, 0x02], 300),
        ] {
            assert_eq!(Reader::new(bytes, "t").varint().unwrap(), v);
            assert_eq!(varint_bytes(v), bytes);
        }
    }

    #[test]
    fn float_tensor_from_raw_bytes() {
        let mut t = varint_field(1, 2);
        t.extend(varint_field(1, 3));
        t.extend(varint_field(2, 1));
        t.extend(len_field(8, b"w"));
        let raw: Vec<u8> = (0..6)
            .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
            .collect();
        t.extend(len_field(9, &raw));
        let got = TensorProto::decode(&t).unwrap();
        assert_eq!(got.name, "w");
        assert_eq!(got.dims, vec![2, 3]);
        assert_eq!(
            got.data,
            TensorData::F32(vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
        );
    }

    #[test]
    fn packed_int64_tensor_and_attributes() {
        let packed: Vec<u8> = [1u64, 4, 64, 64]
            .iter()
            .flat_map(|&v| varint_bytes(v))
            .collect();
        let mut t = varint_field(1, 4);
        t.extend(varint_field(2, 7));
        t.extend(len_field(7, &packed));
        let got = TensorProto::decode(&t).unwrap();
        assert_eq!(got.data, TensorData::I64(vec![1, 4, 64, 64]));

        let mut a = len_field(1, b"pads");
        a.extend(len_field(8, &packed));
        let got = Attribute::decode(&a).unwrap();
        assert_eq!(got.value, AttrValue::Ints(vec![1, 4, 64, 64]));
    }

    #[test]
    fn a_length_past_the_end_is_an_error_not_an_allocation() {
        // Claims a 2^40-byte node inside a 10-byte buffer.
        let mut m = varint_bytes((7 << 3) | 2);
        m.extend(varint_bytes(1 << 40));
        m.extend([0u8; 4]);
        let err = ModelProto::decode(&m).unwrap_err().to_string();
        assert!(err.contains("bytes but only 4 remain"), "{err}");
    }

    #[test]
    fn a_tensor_whose_data_disagrees_with_its_dims_is_refused() {
        let mut t = varint_field(1, 1_000_000_000_000);
        t.extend(varint_field(2, 1));
        t.extend(len_field(9, &[0u8; 8]));
        let err = TensorProto::decode(&t).unwrap_err().to_string();
        assert!(
            err.contains("8 raw bytes for 1000000000000 floats"),
            "{err}"
        );
    }
}
