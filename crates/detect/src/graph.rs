//! An ONNX graph compiled into a list of steps over numbered value slots, then run.
//!
//! Compilation resolves every name, checks every op and attribute this interpreter supports and
//! works out when each intermediate value is last read, so a run frees activations as soon as
//! nothing needs them and fails early (at load) rather than mid-run on an unknown op.

use std::collections::HashMap;

use crate::ops::{self, ConvSpec, Tensor};
use crate::proto::{AttrValue, ModelProto, NodeProto, TensorData, TensorProto};
use crate::{Error, Result};

#[derive(Debug, Clone)]
enum Value {
    F32(Tensor),
    I64(Vec<i64>),
}

#[derive(Debug, Clone)]
enum Op {
    Conv(ConvSpec),
    Relu,
    Add,
    MaxPool {
        kernel: [usize; 2],
        stride: [usize; 2],
        pads: [usize; 4],
    },
    Transpose(Vec<usize>),
    Concat(i64),
    Reshape,
    ConstantOfShape(f32),
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    name: String,
    op_type: String,
    inputs: Vec<usize>,
    output: usize,
    /// Slots read for the last time by this step: dropped after it.
    frees: Vec<usize>,
}

/// A compiled graph with one float input.
#[derive(Debug, Clone)]
pub struct Graph {
    constants: Vec<Option<Value>>,
    steps: Vec<Step>,
    input_slot: usize,
    pub input_name: String,
    /// The declared input shape (`None` where symbolic).
    pub input_shape: Vec<Option<i64>>,
    outputs: Vec<(String, usize)>,
}

fn ints(node: &NodeProto, name: &str) -> Result<Option<Vec<i64>>> {
    match node.attributes.iter().find(|a| a.name == name) {
        None => Ok(None),
        Some(a) => match &a.value {
            AttrValue::Ints(v) => Ok(Some(v.clone())),
            _ => Err(unsupported(
                node,
                &format!("attribute {name} is not a list of ints"),
            )),
        },
    }
}

fn int(node: &NodeProto, name: &str) -> Result<Option<i64>> {
    match node.attributes.iter().find(|a| a.name == name) {
        None => Ok(None),
        Some(a) => match a.value {
            AttrValue::Int(v) => Ok(Some(v)),
            _ => Err(unsupported(
                node,
                &format!("attribute {name} is not an int"),
            )),
        },
    }
}

fn unsupported(node: &NodeProto, msg: &str) -> Error {
    Error::Unsupported(format!("node {:?} ({}): {msg}", node.name, node.op_type))
}

fn usizes<const N: usize>(
    node: &NodeProto,
    name: &str,
    v: Option<Vec<i64>>,
    default: [usize; N],
) -> Result<[usize; N]> {
    let Some(v) = v else { return Ok(default) };
    let v: Vec<usize> = v
        .iter()
        .map(|&x| usize::try_from(x).ok().filter(|&x| x < 1 << 20))
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported(node, &format!("{name} {v:?} out of range")))?;
    v.try_into().map_err(|v: Vec<usize>| {
        unsupported(node, &format!("{name} has {} values, not {N}", v.len()))
    })
}

fn compile_op(node: &NodeProto) -> Result<Op> {
    let positive = |v: [usize; 2], what: &str| -> Result<[usize; 2]> {
        if v.contains(&0) {
            return Err(unsupported(node, &format!("{what} {v:?} has a zero")));
        }
        Ok(v)
    };
    Ok(match node.op_type.as_str() {
        "Conv" => {
            if let Some(d) = ints(node, "dilations")? {
                if d.iter().any(|&d| d != 1) {
                    return Err(unsupported(node, &format!("dilations {d:?}")));
                }
            }
            if let Some(p) = node.attributes.iter().find(|a| a.name == "auto_pad") {
                if !matches!(&p.value, AttrValue::Bytes(b) if b == b"NOTSET") {
                    return Err(unsupported(node, "auto_pad"));
                }
            }
            let group = int(node, "group")?.unwrap_or(1);
            if !(1..1 << 20).contains(&group) {
                return Err(unsupported(node, &format!("group {group}")));
            }
            Op::Conv(ConvSpec {
                stride: positive(
                    usizes(node, "strides", ints(node, "strides")?, [1, 1])?,
                    "strides",
                )?,
                pads: usizes(node, "pads", ints(node, "pads")?, [0; 4])?,
                group: group as usize,
            })
        }
        "Relu" => Op::Relu,
        "Add" => Op::Add,
        "MaxPool" => {
            if int(node, "ceil_mode")?.unwrap_or(0) != 0 {
                return Err(unsupported(node, "ceil_mode"));
            }
            let kernel =
                ints(node, "kernel_shape")?.ok_or_else(|| unsupported(node, "no kernel_shape"))?;
            Op::MaxPool {
                kernel: positive(
                    usizes(node, "kernel_shape", Some(kernel), [1, 1])?,
                    "kernel",
                )?,
                stride: positive(
                    usizes(node, "strides", ints(node, "strides")?, [1, 1])?,
                    "strides",
                )?,
                pads: usizes(node, "pads", ints(node, "pads")?, [0; 4])?,
            }
        }
        "Transpose" => {
            let perm = ints(node, "perm")?.ok_or_else(|| unsupported(node, "no perm"))?;
            let perm: Vec<usize> = perm
                .iter()
                .map(|&p| usize::try_from(p).ok())
                .collect::<Option<_>>()
                .ok_or_else(|| unsupported(node, &format!("perm {perm:?}")))?;
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..perm.len()).collect::<Vec<_>>() {
                return Err(unsupported(
                    node,
                    &format!("perm {perm:?} is not a permutation"),
                ));
            }
            Op::Transpose(perm)
        }
        "Concat" => Op::Concat(int(node, "axis")?.ok_or_else(|| unsupported(node, "no axis"))?),
        "Reshape" => Op::Reshape,
        "ConstantOfShape" => {
            let value = match node.attributes.iter().find(|a| a.name == "value") {
                None => 0.0,
                Some(a) => match &a.value {
                    AttrValue::Tensor(TensorProto {
                        data: TensorData::F32(v),
                        ..
                    }) if v.len() == 1 => v[0],
                    _ => return Err(unsupported(node, "value is not one float")),
                },
            };
            Op::ConstantOfShape(value)
        }
        other => {
            return Err(Error::Unsupported(format!(
                "operator {other} (node {:?}); this interpreter runs Conv, Relu, Add, MaxPool, \
                 Transpose, Concat, Reshape and ConstantOfShape",
                node.name
            )))
        }
    })
}

fn constant(t: &TensorProto) -> Result<Value> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()
        .ok_or_else(|| Error::Proto(format!("initializer {:?}: dims {:?}", t.name, t.dims)))?;
    Ok(match &t.data {
        TensorData::F32(v) => Value::F32(Tensor::new(dims, v.clone())),
        TensorData::I64(v) => Value::I64(v.clone()),
    })
}

impl Graph {
    pub fn compile(model: &ModelProto) -> Result<Self> {
        let g = &model.graph;
        let mut slots: HashMap<&str, usize> = HashMap::new();
        let mut constants: Vec<Option<Value>> = vec![];
        for t in &g.initializers {
            slots.insert(&t.name, constants.len());
            constants.push(Some(constant(t)?));
        }
        let inputs: Vec<_> = g
            .inputs
            .iter()
            .filter(|i| !slots.contains_key(i.name.as_str()))
            .collect();
        let [input] = inputs[..] else {
            return Err(Error::Unsupported(format!(
                "{} graph inputs (one image input expected)",
                inputs.len()
            )));
        };
        let input_slot = constants.len();
        slots.insert(&input.name, input_slot);
        constants.push(None);
        let mut steps = vec![];
        for node in &g.nodes {
            let op = compile_op(node)?;
            let arity = match op {
                Op::Conv(_) => 2..=3,
                Op::Relu | Op::ConstantOfShape(_) | Op::MaxPool { .. } | Op::Transpose(_) => 1..=1,
                Op::Add | Op::Reshape => 2..=2,
                Op::Concat(_) => 1..=usize::MAX,
            };
            if !arity.contains(&node.inputs.len()) || node.outputs.len() != 1 {
                return Err(unsupported(
                    node,
                    &format!(
                        "{} inputs, {} outputs",
                        node.inputs.len(),
                        node.outputs.len()
                    ),
                ));
            }
            let inputs =
                node.inputs
                    .iter()
                    .map(|n| {
                        slots.get(n.as_str()).copied().ok_or_else(|| {
                            unsupported(node, &format!("input {n:?} is never produced"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
            let output = constants.len();
            slots.insert(&node.outputs[0], output);
            constants.push(None);
            steps.push(Step {
                op,
                name: node.name.clone(),
                op_type: node.op_type.clone(),
                inputs,
                output,
                frees: vec![],
            });
        }
        let outputs = g
            .outputs
            .iter()
            .map(|o| {
                slots
                    .get(o.name.as_str())
                    .map(|&s| (o.name.clone(), s))
                    .ok_or_else(|| {
                        Error::Unsupported(format!("output {:?} is never produced", o.name))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        // Last reader of every non-constant, non-output slot frees it.
        let mut last = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            for &slot in &s.inputs {
                last.insert(slot, i);
            }
        }
        for (slot, i) in last {
            let is_output = outputs.iter().any(|(_, s)| *s == slot);
            if constants[slot].is_none() && !is_output {
                steps[i].frees.push(slot);
            }
        }
        Ok(Self {
            constants,
            steps,
            input_slot,
            input_name: input.name.clone(),
            input_shape: input.shape.clone(),
            outputs,
        })
    }

    /// Runs the graph; returns the outputs in the graph's order, with their names.
    pub fn run(&self, input: Tensor) -> Result<Vec<(String, Tensor)>> {
        let mut live: Vec<Option<Value>> = vec![None; self.constants.len()];
        live[self.input_slot] = Some(Value::F32(input));
        for s in &self.steps {
            let get = |i: usize| -> Result<&Value> {
                let slot = s.inputs[i];
                live[slot]
                    .as_ref()
                    .or(self.constants[slot].as_ref())
                    .ok_or_else(|| self.err(s, "an input was never computed"))
            };
            let f32_in = |i: usize| -> Result<&Tensor> {
                match get(i)? {
                    Value::F32(t) => Ok(t),
                    Value::I64(_) => Err(self.err(s, &format!("input {i} is an integer tensor"))),
                }
            };
            let i64_in = |i: usize| -> Result<&Vec<i64>> {
                match get(i)? {
                    Value::I64(v) => Ok(v),
                    Value::F32(_) => Err(self.err(s, &format!("input {i} is a float tensor"))),
                }
            };
            let out = match &s.op {
                Op::Conv(spec) => {
                    let (x, w) = (f32_in(0)?, f32_in(1)?);
                    let b = if s.inputs.len() == 3 {
                        Some(f32_in(2)?)
                    } else {
                        None
                    };
                    self.check_conv(s, x, w, b, spec)?;
                    ops::conv2d(x, w, b.map(|b| &b.data[..]), *spec)
                }
                Op::Relu => {
                    let mut t = f32_in(0)?.clone();
                    t.data.iter_mut().for_each(|v| *v = v.max(0.0));
                    t
                }
                Op::Add => {
                    let (a, b) = (f32_in(0)?, f32_in(1)?);
                    if a.shape != b.shape {
                        return Err(self.err(
                            s,
                            &format!("shapes {:?} and {:?} (no broadcasting)", a.shape, b.shape),
                        ));
                    }
                    let data = a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect();
                    Tensor::new(a.shape.clone(), data)
                }
                Op::MaxPool {
                    kernel,
                    stride,
                    pads,
                } => {
                    let x = f32_in(0)?;
                    let fits = x.shape.len() == 4
                        && ops::out_size(x.shape[2], pads[0] + pads[2], kernel[0], stride[0])
                            .is_some()
                        && ops::out_size(x.shape[3], pads[1] + pads[3], kernel[1], stride[1])
                            .is_some();
                    if !fits {
                        return Err(
                            self.err(s, &format!("window {kernel:?} on input {:?}", x.shape))
                        );
                    }
                    ops::max_pool2d(x, *kernel, *stride, *pads)
                }
                Op::Transpose(perm) => {
                    let x = f32_in(0)?;
                    if perm.len() != x.shape.len() {
                        return Err(
                            self.err(s, &format!("perm {perm:?} on rank {}", x.shape.len()))
                        );
                    }
                    ops::transpose(x, perm)
                }
                Op::Concat(axis) => {
                    let xs = (0..s.inputs.len())
                        .map(f32_in)
                        .collect::<Result<Vec<_>>>()?;
                    let rank = xs[0].shape.len() as i64;
                    let axis = if *axis < 0 { axis + rank } else { *axis };
                    let ok = (0..rank).contains(&axis)
                        && xs.iter().all(|t| {
                            t.shape.len() == rank as usize
                                && t.shape
                                    .iter()
                                    .zip(&xs[0].shape)
                                    .enumerate()
                                    .all(|(d, (a, b))| d == axis as usize || a == b)
                        });
                    if !ok {
                        let shapes: Vec<_> = xs.iter().map(|t| &t.shape).collect();
                        return Err(self.err(s, &format!("cannot join {shapes:?} on axis {axis}")));
                    }
                    ops::concat(&xs, axis as usize)
                }
                Op::Reshape => {
                    let x = f32_in(0)?;
                    let shape =
                        ops::reshape_target(&x.shape, i64_in(1)?).map_err(|m| self.err(s, &m))?;
                    Tensor::new(shape, x.data.clone())
                }
                Op::ConstantOfShape(v) => {
                    let dims = i64_in(0)?;
                    let shape: Vec<usize> = dims
                        .iter()
                        .map(|&d| usize::try_from(d).ok().filter(|&d| d < 1 << 24))
                        .collect::<Option<_>>()
                        .ok_or_else(|| self.err(s, &format!("shape {dims:?}")))?;
                    let n = shape
                        .iter()
                        .try_fold(1usize, |a, &d| a.checked_mul(d))
                        .filter(|&n| n < 1 << 28);
                    let n =
                        n.ok_or_else(|| self.err(s, &format!("shape {dims:?} is too large")))?;
                    Tensor::new(shape, vec![*v; n])
                }
            };
            live[s.output] = Some(Value::F32(out));
            for &f in &s.frees {
                live[f] = None;
            }
        }
        self.outputs
            .iter()
            .map(|(name, slot)| {
                match live[*slot].take().or_else(|| self.constants[*slot].clone()) {
                    Some(Value::F32(t)) => Ok((name.clone(), t)),
                    _ => Err(Error::Unsupported(format!(
                        "output {name:?} is not a float tensor"
                    ))),
                }
            })
            .collect()
    }

    fn err(&self, s: &Step, msg: &str) -> Error {
        Error::Shape {
            node: s.name.clone(),
            op: s.op_type.clone(),
            msg: msg.to_string(),
        }
    }

    fn check_conv(
        &self,
        s: &Step,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        spec: &ConvSpec,
    ) -> Result<()> {
        let bad = |m: String| Err(self.err(s, &m));
        let ([_, c, h, wd], [m, cg, kh, kw]) = (&x.shape[..], &w.shape[..]) else {
            return bad(format!(
                "input {:?}, weight {:?}: both must be 4-D",
                x.shape, w.shape
            ));
        };
        if cg * spec.group != *c || m % spec.group != 0 {
            return bad(format!(
                "weight {:?} with group {} on {c} channels",
                w.shape, spec.group
            ));
        }
        if b.is_some_and(|b| b.data.len() != *m) {
            return bad(format!(
                "bias of {} values for {m} filters",
                b.map_or(0, |b| b.len())
            ));
        }
        let p = spec.pads;
        if ops::out_size(*h, p[0] + p[2], *kh, spec.stride[0]).is_none()
            || ops::out_size(*wd, p[1] + p[3], *kw, spec.stride[1]).is_none()
        {
            return bad(format!(
                "kernel {kh}x{kw} larger than the padded {h}x{wd} input"
            ));
        }
        Ok(())
    }
}
