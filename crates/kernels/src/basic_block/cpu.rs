//! The fused CPU op: the block's convs, BatchNorms and ReLUs forward through
//! `conv_bn::cpu`'s pieces, their backward in reverse with the residual gradient added in place.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::add_relu::cpu::relu_grad;
use crate::conv_bn::cpu::{self as conv_bn, Saved as UnitSaved};
use crate::support::im2col::Geom;
use crate::support::out::uninit;
use crate::support::storage::{relu, slice, with_data};

/// Elements per parallel chunk of the element-wise passes.
const CHUNK: usize = 1 << 14;

/// One conv + BatchNorm of the block and where its parameters sit in the flat parameter
/// tensor: the weight (`O * C * k * k`), then the scale and the shift (`O` each).
#[derive(Clone, Copy, Debug)]
pub(super) struct Unit {
    pub g: Geom,
    pub offset: usize,
}

impl Unit {
    pub(super) fn output_shape(&self) -> Shape {
        Shape::from((self.g.b, self.g.o, self.g.ho, self.g.wo))
    }

    fn len(&self) -> usize {
        self.g.o * self.g.k() + 2 * self.g.o
    }

    /// `(weight, gamma, beta)` of this unit in `p`.
    fn params<'a>(&self, p: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32]) {
        let (w, rest) = p[self.offset..self.offset + self.len()].split_at(self.g.o * self.g.k());
        let (gamma, beta) = rest.split_at(self.g.o);
        (w, gamma, beta)
    }

    /// Writes `(dw, dgamma, dbeta)` where [`Unit::params`] reads.
    fn put(&self, dp: &mut [f32], grads: [&[f32]; 3]) {
        let mut at = self.offset;
        for g in grads {
            dp[at..at + g.len()].copy_from_slice(g);
            at += g.len();
        }
    }
}

/// What the forward keeps: each unit's own, and `a`'s output (`b`'s input, `a`'s ReLU mask).
pub(super) struct Saved {
    a: UnitSaved,
    h: Vec<f32>,
    b: UnitSaved,
    down: Option<UnitSaved>,
}

/// Each unit's batch mean and biased variance.
pub(super) type Stats = Vec<(Vec<f32>, Vec<f32>)>;

pub(super) struct BlockTrain {
    /// `a`, `b` and optionally the downsample branch.
    pub units: Vec<Unit>,
    pub eps: f64,
    pub saved: OnceLock<Saved>,
    /// Each unit's batch mean and biased variance, for the caller's running averages.
    pub stats: Arc<OnceLock<Stats>>,
}

impl BlockTrain {
    fn run(&self, x: &[f32], p: &[f32]) -> (Saved, Stats, Vec<f32>) {
        let fwd = |u: &Unit, input: &[f32], relu: bool| {
            let (w, gamma, beta) = u.params(p);
            conv_bn::train_forward(&u.g, self.eps, relu, input, w, gamma, beta)
        };
        let (a, var_a, h) = fwd(&self.units[0], x, true);
        let (b, var_b, mut out) = fwd(&self.units[1], &h, false);
        let mut stats = vec![(a.mean.clone(), var_a), (b.mean.clone(), var_b)];
        let down = self.units.get(2).map(|u| {
            let (d, var_d, identity) = fwd(u, x, false);
            stats.push((d.mean.clone(), var_d));
            (d, identity)
        });
        let identity = down.as_ref().map_or(x, |(_, i)| i.as_slice());
        out.par_chunks_mut(CHUNK)
            .zip(identity.par_chunks(CHUNK))
            .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, i)| *o = relu(*o + i)));
        let saved = Saved {
            a,
            h,
            b,
            down: down.map(|(d, _)| d),
        };
        (saved, stats, out)
    }
}

impl CustomOp2 for BlockTrain {
    fn name(&self) -> &'static str {
        "fer-basic-block-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (saved, stats, out) = self.run(slice(s1, l1)?, slice(s2, l2)?);
        let _ = self.stats.set(stats);
        let _ = self.saved.set(saved);
        Ok((CpuStorage::F32(out), self.units[1].output_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: &Tensor,
        dres: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let track_x = x.track_op();
        let (dx, dp) = with_data(x, |x| {
            with_data(params, |p| {
                let recomputed;
                let saved = match self.saved.get() {
                    Some(s) => s,
                    None => {
                        recomputed = self.run(x, p).0;
                        &recomputed
                    }
                };
                with_data(res, |res| {
                    with_data(dres, |dres| {
                        Ok(self.backward(saved, x, p, res, dres, track_x))
                    })
                })
            })
        })?;
        let dev = &Device::Cpu;
        let dx = dx
            .map(|dx| Tensor::from_vec(dx, x.shape(), dev))
            .transpose()?;
        Ok((dx, Some(Tensor::from_vec(dp, params.shape(), dev)?)))
    }
}

impl BlockTrain {
    /// `(dx, dparams)` from the output gradient `dres` (`res`: the output).
    fn backward(
        &self,
        saved: &Saved,
        x: &[f32],
        p: &[f32],
        res: &[f32],
        dres: &[f32],
        want_dx: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>) {
        // The output ReLU: both terms of the sum get the same gradient.
        let dsum = relu_grad(dres, res);
        let mut dp = uninit(p.len());
        let bwd = |u: &Unit, s: &UnitSaved, input: &[f32], dz: &[f32], relu_out, want_dx| {
            let (w, gamma, _) = u.params(p);
            conv_bn::train_backward(&u.g, s, input, w, gamma, dz, relu_out, want_dx)
        };
        let (ua, ub) = (&self.units[0], &self.units[1]);
        let (dh, dw, dgamma, dbeta) = bwd(ub, &saved.b, &saved.h, &dsum, None, true);
        ub.put(&mut dp, [&dw, &dgamma, &dbeta]);
        let dh = dh.expect("the input gradient of b was asked for");
        let (mut dx, dw, dgamma, dbeta) = bwd(ua, &saved.a, x, &dh, Some(&saved.h), want_dx);
        ua.put(&mut dp, [&dw, &dgamma, &dbeta]);
        let identity_grad = match (self.units.get(2), &saved.down) {
            (Some(ud), Some(sd)) => {
                let (dxd, dw, dgamma, dbeta) = bwd(ud, sd, x, &dsum, None, want_dx);
                ud.put(&mut dp, [&dw, &dgamma, &dbeta]);
                dxd
            }
            _ => Some(dsum),
        };
        if let (Some(dx), Some(di)) = (dx.as_mut(), identity_grad) {
            dx.par_chunks_mut(CHUNK)
                .zip(di.par_chunks(CHUNK))
                .for_each(|(d, i)| d.iter_mut().zip(i).for_each(|(d, i)| *d += i));
        }
        (dx, dp)
    }
}
