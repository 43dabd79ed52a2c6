//! The fused eval-mode CPU op: conv, then BatchNorm with the running statistics (+ ReLU) on each
//! block of the conv's output while it is in cache; the backward recomputes the conv output.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::batch_norm::cpu as batch_norm;
use crate::conv2d::cpu::{self as conv, Epilogue};
use crate::support::im2col::Geom;
use crate::support::storage::slice;

pub(super) struct ConvBnEval {
    pub g: Geom,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub relu: bool,
}

impl CustomOp3 for ConvBnEval {
    fn name(&self) -> &'static str {
        "fer-conv-bn-eval"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, gb) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (gamma, beta) = gb.split_at(self.g.o);
        let (scale, shift) = batch_norm::affine(&self.mean, &self.invstd, gamma, beta);
        let epilogue = Epilogue {
            scale: &scale,
            shift: &shift,
            relu: self.relu,
        };
        let y = conv::forward_then(&self.g, x, w, Some(&epilogue));
        let g = &self.g;
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        res: &Tensor,
        dres: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        super::cpu::grads(x, w, gb, res, dres, |x, w, gb, res, dres, track_x| {
            let y = conv::forward(&g, x, w);
            let relu_out = self.relu.then_some(res);
            let (mean, invstd, gamma) = (&self.mean, &self.invstd, &gb[..g.o]);
            let (dy, dgamma, dbeta) = batch_norm::backward::<false>(
                super::cpu::dims(&g),
                &y,
                dres,
                relu_out,
                mean,
                invstd,
                gamma,
            );
            let (dx, dw) = conv::backward(&g, x, &dy, w, track_x, None);
            (dx, dw, dgamma, dbeta)
        })
    }
}
