//! With the `cuda` feature, compiles `cuda/fer_kernels.cu` to PTX (text, a few tens of KiB:
//! the driver JIT-compiles it for the GPU at load time, so the binary stays small). Without the
//! feature nothing happens and no CUDA toolkit is needed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda/fer_kernels.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    // PTX for a virtual architecture runs on that one and every newer GPU.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let ptx = out.join("fer_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("cuda/fer_kernels.cu")
        .arg("-o")
        .arg(&ptx)
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (the cuda feature needs a CUDA toolkit): {e}"));
    assert!(
        status.success(),
        "{nvcc} failed on cuda/fer_kernels.cu ({status})"
    );
}
