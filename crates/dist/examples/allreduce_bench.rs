//! All-reduce time and bandwidth for buffers of 1 KiB to 64 MiB:
//!
//! ```text
//! cargo build --release -p fer-dist --features mpi --example allreduce_bench
//! mpirun -np 2 target/release/examples/allreduce_bench
//! ```
//!
//! `busbw` is bytes * 2(n-1)/n / t: the data each rank must send and receive in a ring
//! all-reduce, per second, so that it compares across world sizes and with the link's bandwidth.
//! `algbw` is bytes / t. Rank 0 prints; the times are rank 0's, which leaves each all-reduce only
//! when every rank has contributed.

use std::time::Instant;

use fer_dist::Communicator;

const KIB: usize = 1024;

/// Enough data per size that the timing is not noise, within a few seconds in all.
const BYTES_PER_SIZE: usize = 1 << 30;
const MIN_ITERS: usize = 5;
const MAX_ITERS: usize = 2000;
const WARMUP: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let comm = fer_dist::from_env()?;
    let n = comm.size();
    if comm.is_root() {
        println!(
            "all-reduce (sum, f32) over {n} rank(s), backend {}",
            comm.backend()
        );
        println!(
            "{:>10} {:>7} {:>12} {:>12} {:>12}",
            "bytes", "iters", "time/op us", "algbw GB/s", "busbw GB/s"
        );
    }
    let mut bytes = KIB;
    while bytes <= 64 * KIB * KIB {
        let len = bytes / std::mem::size_of::<f32>();
        // Zeros stay zeros: no overflow to infinity however many times they are summed.
        let mut buf = vec![0.0f32; len];
        // The same count on every rank: each must make the same calls.
        let iters = (BYTES_PER_SIZE / bytes).clamp(MIN_ITERS, MAX_ITERS);
        for _ in 0..WARMUP {
            comm.all_reduce_sum(&mut buf)?;
        }
        comm.barrier()?;
        let started = Instant::now();
        for _ in 0..iters {
            comm.all_reduce_sum(&mut buf)?;
        }
        let per_op = started.elapsed().as_secs_f64() / iters as f64;
        if comm.is_root() {
            let algbw = bytes as f64 / per_op / 1e9;
            let busbw = algbw * 2.0 * (n - 1) as f64 / n as f64;
            println!(
                "{bytes:>10} {iters:>7} {:>12.1} {algbw:>12.2} {busbw:>12.2}",
                per_op * 1e6
            );
        }
        bytes *= 4;
    }
    Ok(())
}
