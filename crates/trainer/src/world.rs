//! The processes of a data-parallel run, as the training loop sees them.
//!
//! A plain run is a world of one and every call here is free. Under `mpirun` (trainer built with
//! the `distributed` feature) each rank loads its part of every global batch, and before each
//! optimizer step the ranks sum their gradients, each weighted by its share of the batch, so that
//! every rank applies the same update from the same weights. The sums go through fer-dist (MPI,
//! or NCCL between GPUs) in flat buckets, not one call per tensor.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use fer_data::loader::Part;

use crate::{Error, Result};

/// Floats per all-reduce call: large enough that the per-call latency is noise, small enough
/// that the staging buffer stays a few MiB.
const BUCKET: usize = 1 << 20;

/// The ranks of this run and the way to talk to them.
pub struct World {
    comm: Box<dyn fer_dist::Communicator>,
}

impl World {
    /// A world of one.
    pub fn single() -> World {
        World {
            comm: Box::new(fer_dist::Single),
        }
    }

    /// The world this process was started in: MPI's under `mpirun` (with the `distributed`
    /// feature), else a world of one. `FER_DIST_TIMEOUT_S` bounds every collective.
    pub fn from_env() -> Result<World> {
        let comm = fer_dist::from_env().map_err(|e| match cfg!(feature = "distributed") {
            true => dist(e),
            false => Error::Distributed(format!(
                "{e}. The trainer's feature is `distributed`: cargo build --release -p trainer \
                 --features distributed"
            )),
        })?;
        Ok(World { comm })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// This rank's position among the ranks on its machine: the GPU it computes on.
    pub fn local_rank(&self) -> usize {
        self.comm.local_rank()
    }

    /// Rank 0, the one that writes files and logs.
    pub fn is_root(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Which part of every batch this rank loads.
    pub fn part(&self) -> Part {
        Part {
            index: self.rank(),
            count: self.size(),
        }
    }

    /// "mpi, 2 ranks" and the like, for logs and reports.
    pub fn describe(&self) -> String {
        format!("{}, {} ranks", self.comm.backend(), self.size())
    }

    /// Ends every rank of the run at once (a rank that returned instead would leave the others
    /// waiting in their next collective).
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    pub fn barrier(&self) -> Result<()> {
        self.comm.barrier().map_err(dist)
    }

    /// Sums `buf` over the ranks, in place.
    pub fn sum(&self, buf: &mut [f32]) -> Result<()> {
        if self.size() > 1 {
            for chunk in buf.chunks_mut(BUCKET) {
                self.comm.all_reduce_sum(chunk).map_err(dist)?;
            }
        }
        Ok(())
    }

    /// Replaces each variable's gradient by the sum over ranks of `weight` times it (a rank's
    /// weight is its share of the global batch, so the sum is the gradient of the batch mean).
    /// A variable with no gradient on any rank keeps none, as in a single process, so the
    /// optimizer skips it there too; one with a gradient on some ranks only counts zeros for
    /// the others.
    pub fn sum_gradients(&self, grads: &mut GradStore, vars: &[Var], weight: f64) -> Result<()> {
        if self.size() == 1 {
            return crate::grads::scale(grads, vars, weight);
        }
        let mut present: Vec<f32> = vars
            .iter()
            .map(|v| f32::from(u8::from(grads.get(v.as_tensor()).is_some())))
            .collect();
        self.sum(&mut present)?;
        let mut bucket = Vec::with_capacity(BUCKET);
        let mut pending: Vec<&Var> = vec![];
        let w = weight as f32;
        for (v, &p) in vars.iter().zip(&present) {
            if p == 0.0 {
                continue;
            }
            match grads.get(v.as_tensor()) {
                Some(g) => bucket.extend(g.flatten_all()?.to_vec1::<f32>()?.iter().map(|x| x * w)),
                None => bucket.resize(bucket.len() + v.elem_count(), 0.0),
            }
            pending.push(v);
            if bucket.len() >= BUCKET {
                self.flush(&mut bucket, &mut pending, grads)?;
            }
        }
        self.flush(&mut bucket, &mut pending, grads)
    }

    fn flush(
        &self,
        bucket: &mut Vec<f32>,
        vars: &mut Vec<&Var>,
        grads: &mut GradStore,
    ) -> Result<()> {
        if vars.is_empty() {
            return Ok(());
        }
        self.comm.all_reduce_sum(bucket).map_err(dist)?;
        let mut at = 0;
        for v in vars.drain(..) {
            let n = v.elem_count();
            let g = Tensor::from_slice(&bucket[at..at + n], v.shape(), v.device())?;
            grads.insert(v.as_tensor(), g.to_dtype(v.dtype())?);
            at += n;
        }
        bucket.clear();
        Ok(())
    }

    /// Sets every variable of `varmap` to rank 0's value, so all ranks start from the same
    /// weights whatever each built or loaded.
    pub fn broadcast_weights(&self, varmap: &VarMap) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let vars: Vec<Var> = sorted(varmap).into_iter().map(|(_, v)| v).collect();
        let mut buf = flatten(&vars)?;
        for chunk in buf.chunks_mut(BUCKET) {
            self.comm.broadcast(chunk, 0).map_err(dist)?;
        }
        set_from(&vars, &buf)
    }

    /// Replaces the BatchNorm running statistics by their mean over ranks (each rank's follow
    /// its own batches, as PyTorch's DDP keeps them), before an evaluation or a checkpoint.
    pub fn average_running_stats(&self, varmap: &VarMap) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let stats: Vec<Var> = sorted(varmap)
            .into_iter()
            .filter(|(n, _)| fer_model::is_running_stat(n))
            .map(|(_, v)| v)
            .collect();
        let mut buf = flatten(&stats)?;
        self.sum(&mut buf)?;
        let n = self.size() as f32;
        buf.iter_mut().for_each(|x| *x /= n);
        set_from(&stats, &buf)
    }
}

/// The values of `vars`, end to end.
fn flatten(vars: &[Var]) -> Result<Vec<f32>> {
    let mut buf = Vec::with_capacity(vars.iter().map(|v| v.elem_count()).sum());
    for v in vars {
        buf.extend(v.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(buf)
}

/// Sets `vars` from `buf`, laid out as [`flatten`] lays them.
fn set_from(vars: &[Var], buf: &[f32]) -> Result<()> {
    let mut at = 0;
    for v in vars {
        let n = v.elem_count();
        let t = Tensor::from_slice(&buf[at..at + n], v.shape(), v.device())?;
        v.set(&t.to_dtype(v.dtype())?)?;
        at += n;
    }
    Ok(())
}

fn sorted(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn dist(e: fer_dist::Error) -> Error {
    Error::Distributed(e.to_string())
}
