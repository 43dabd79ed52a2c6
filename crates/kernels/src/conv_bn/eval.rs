//! The fused eval-mode CPU op: conv, then BatchNorm with the running statistics (+ ReLU) on each
//! block of the conv's output while it is in cache; the backward recomputes the conv output.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use crate::batch_norm::cpu::{self as batch_norm, Dims};
use crate::conv2d::cpu::{self as conv, Epilogue};
use crate::support::im2col::Geom;
use crate::support::storage::{slice, with_data};

pub(super) struct ConvBnEval {
    pub g: Geom,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub relu: bool,
}

impl ConvBnEval {
    fn dims(&self) -> Dims {
        Dims {
            b: self.g.b,
            c: self.g.o,
            s: self.g.n(),
        }
    }
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
        let track_x = x.track_op();
        let (dx, dw, dgb) = with_data(x, |x| {
            with_data(w, |w| {
                with_data(gb, |gb| {
                    let y = conv::forward(&g, x, w);
                    let (dy, dgamma, dbeta) = with_data(res, |res| {
                        with_data(dres, |dres| {
                            let relu_out = self.relu.then_some(res);
                            Ok(batch_norm::backward::<false>(
                                self.dims(),
                                &y,
                                dres,
                                relu_out,
                                &self.mean,
                                &self.invstd,
                                &gb[..g.o],
                            ))
                        })
                    })?;
                    let (dx, dw) = conv::backward(&g, x, &dy, w, track_x, None);
                    Ok((dx, dw, [dgamma, dbeta].concat()))
                })
            })
        })?;
        let dev = &Device::Cpu;
        let dx = dx
            .map(|dx| Tensor::from_vec(dx, x.shape(), dev))
            .transpose()?;
        Ok((
            dx,
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(dgb, gb.shape(), dev)?),
        ))
    }
}
