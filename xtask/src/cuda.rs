//! `cargo xtask cuda-toolchain` and `cargo xtask build-cuda`: a CUDA 13.0 toolchain assembled
//! from NVIDIA's PyPI wheels, so that the `cuda` feature builds on a machine without CUDA (CI, or
//! a CPU machine preparing a binary for a GPU machine that has no Rust).
//!
//! Every wheel keeps its files under `nvidia/cu13/` in the CUDA toolkit's own layout (`bin/`,
//! `include/`, `include/cccl/`, `lib/`, `nvvm/`), and nvcc finds its siblings relative to itself
//! (`bin/nvcc.profile`), so unpacking them all into one folder gives a working toolkit. Two
//! things are missing from the wheels: the unversioned `libX.so` names the linker asks for, and
//! `libcuda.so`, which comes with the driver. The latter is replaced at link time by a stub
//! exporting the driver functions cudarc declares; at run time the driver's own library is used.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

/// The wheels, pinned to CUDA 13.0 (driver 580 or newer runs it). curand and cublas number
/// their own releases: 10.4.0 and 13.0.x are the ones of CUDA 13.0.
const WHEELS: [&str; 8] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-curand==10.4.0.35",
    "nvidia-cublas==13.0.2.14",
];

/// Where the wheels keep the toolkit.
const WHEEL_ROOT: &str = "nvidia/cu13/";

/// Written last: its presence with this content means the folder is complete. Bump the suffix
/// when the recipe changes so that old folders are rebuilt.
const STAMP: &str = ".complete";
const RECIPE_VERSION: &str = "recipe 1";

/// The compute capability the kernels are compiled for when `CUDA_COMPUTE_CAP` is not set:
/// Hopper (H100/H200). Builders have no GPU for nvcc to ask.
const DEFAULT_COMPUTE_CAP: &str = "90";

/// Largest binary we are happy to carry to a GPU machine.
const MAX_BINARY_MIB: f64 = 64.0;

#[derive(clap::Args)]
pub struct ToolchainArgs {
    /// Folder to assemble the toolchain in [default: .cuda at the repository root].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BuildCudaArgs {
    /// Toolchain folder (assembled first if incomplete) [default: .cuda at the repository root].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Cargo target folder of the CUDA build, kept apart from the CPU build's
    /// [default: target/cuda].
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Where to copy the stripped binary [default: target/cuda-bin/trainer].
    #[arg(long)]
    out: Option<PathBuf>,
    /// GPU compute capability of the kernels [default: $CUDA_COMPUTE_CAP, else 90 (Hopper)].
    /// PTX built for one capability runs on it and newer GPUs only.
    #[arg(long)]
    compute_cap: Option<String>,
    /// Only type-check the whole workspace with the cuda feature (`cargo check --workspace
    /// --all-targets --features cuda`; runs the kernel build scripts, links nothing): what CI
    /// runs so that the CUDA code cannot rot.
    #[arg(long)]
    check: bool,
    /// With --check: also type-check the trainer's NCCL backend for data-parallel GPU training
    /// (`--features trainer/nccl`; needs Open MPI and libclang, as the `distributed` feature does).
    #[arg(long, requires = "check")]
    nccl: bool,
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

fn default_dir() -> PathBuf {
    repo_root().join(".cuda")
}

fn stamp_text() -> String {
    format!("{RECIPE_VERSION}\n{}\n", WHEELS.join("\n"))
}

/// Whether `dir` holds a complete toolchain of the current recipe.
fn is_complete(dir: &Path) -> bool {
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp_text())
}

pub fn toolchain(args: ToolchainArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(default_dir);
    ensure_toolchain(&dir)
}

/// Assembles the toolchain in `dir` unless it is complete already.
fn ensure_toolchain(dir: &Path) -> anyhow::Result<()> {
    if is_complete(dir) {
        println!(
            "cuda-toolchain: {} is complete (CUDA 13.0); nothing to do",
            dir.display()
        );
        return Ok(());
    }
    let started = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    check_pip()?;

    // Kept until the end, so that a rerun after a failure does not download again (pip skips
    // files it finds there).
    let wheels = dir.join(".wheels");
    println!("cuda-toolchain: downloading {} wheels", WHEELS.len());
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off"])
        .arg("--dest")
        .arg(&wheels)
        .args(WHEELS)
        .stdin(Stdio::null())
        .status()
        .context("running python3 -m pip download")?;
    if !status.success() {
        bail!(
            "pip could not download the CUDA wheels ({status}; its message is above). They come \
             from PyPI: check the network, or a proxy in pip's configuration. Wanted: {}",
            WHEELS.join(" ")
        );
    }
    let downloaded = dir_size(&wheels)?;
    println!(
        "cuda-toolchain: {:.0} MiB of wheels; unpacking into {}",
        downloaded as f64 / MIB,
        dir.display()
    );
    unpack(&wheels, &dir)?;
    link_unversioned(&dir.join("lib"))?;
    build_libcuda_stub(&dir)?;
    check_nvcc(&dir)?;
    fs::remove_dir_all(&wheels).with_context(|| format!("removing {}", wheels.display()))?;
    fer_data::atomic::write_atomic(&dir.join(STAMP), stamp_text().as_bytes())?;
    println!(
        "cuda-toolchain: CUDA 13.0 ready in {} ({:.0} MiB, {:.0} s); build with \
         `cargo xtask build-cuda`",
        dir.display(),
        dir_size(&dir)? as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

fn check_pip() -> anyhow::Result<()> {
    let out = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => bail!(
            "cuda-toolchain needs python3 with pip to download NVIDIA's CUDA wheels from PyPI, \
             and python3 could not be run: {e}"
        ),
        Ok(o) if !o.status.success() => bail!(
            "cuda-toolchain needs pip to download NVIDIA's CUDA wheels from PyPI, and \
             `python3 -m pip --version` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => Ok(()),
    }
}

/// Unpacks the `nvidia/cu13/` part of every wheel in `wheels` into `dir`, keeping the
/// executable bits (Python's zipfile does not).
fn unpack(wheels: &Path, dir: &Path) -> anyhow::Result<()> {
    const SCRIPT: &str = r#"
import os, sys, zipfile
src, dst, root = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
for name in sorted(os.listdir(src)):
    if not name.endswith(".whl"):
        continue
    with zipfile.ZipFile(os.path.join(src, name)) as z:
        for info in z.infolist():
            if not info.filename.startswith(root) or info.is_dir():
                continue
            rel = info.filename[len(root):]
            if rel.startswith(".metadata/"):
                continue
            out = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            tmp = out + ".part"
            with z.open(info) as f, open(tmp, "wb") as g:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    g.write(chunk)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(tmp, mode if mode else 0o644)
            os.replace(tmp, out)
            n += 1
print(n)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(wheels)
        .arg(dir)
        .arg(WHEEL_ROOT)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running python3 to unpack the wheels")?;
    if !out.status.success() {
        bail!(
            "unpacking the wheels of {} into {} failed ({})",
            wheels.display(),
            dir.display(),
            out.status
        );
    }
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    if n == 0 {
        bail!(
            "the wheels in {} hold no {WHEEL_ROOT} files: not the CUDA 13 wheels?",
            wheels.display()
        );
    }
    Ok(())
}

/// `libcublas.so -> libcublas.so.13` and the like: the wheels ship only the versioned names,
/// which is what programs load, but `-lcublas` looks for the plain one.
fn link_unversioned(lib: &Path) -> anyhow::Result<()> {
    let entries = fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, _version)) = name.split_once(".so.") else {
            continue;
        };
        let link = lib.join(format!("{stem}.so"));
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(name, &link)
                .with_context(|| format!("linking {} to {name}", link.display()))?;
        }
    }
    Ok(())
}

/// Compiles `lib/stubs/libcuda.so` (soname `libcuda.so.1`, as the driver's) with one empty
/// function per driver function cudarc declares, read from cudarc's sources.
fn build_libcuda_stub(dir: &Path) -> anyhow::Result<()> {
    let sys = cudarc_driver_sys()?;
    let text = fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("pub unsafe fn "))
        .filter_map(|l| l.split('(').next())
        .filter(|n| n.starts_with("cu"))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 100 {
        bail!(
            "{}: found only {} driver functions; cudarc's layout changed?",
            sys.display(),
            names.len()
        );
    }
    let stubs = dir.join("lib/stubs");
    fs::create_dir_all(&stubs).with_context(|| format!("creating {}", stubs.display()))?;
    let c_file = stubs.join("libcuda_stub.c");
    let c: String = names
        .iter()
        .map(|n| format!("void {n}(void) {{}}\n"))
        .collect();
    fer_data::atomic::write_atomic(&c_file, c.as_bytes())?;
    let so = stubs.join("libcuda.so");
    let tmp = stubs.join("libcuda.so.part");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&tmp)
        .arg(&c_file)
        .status()
        .context("running gcc to build the libcuda stub (a C compiler is needed)")?;
    if !status.success() {
        bail!("gcc failed to build {} ({status})", so.display());
    }
    fs::rename(&tmp, &so).with_context(|| format!("writing {}", so.display()))?;
    println!(
        "cuda-toolchain: link-time stub {} ({} driver functions)",
        so.display(),
        names.len()
    );
    Ok(())
}

/// cudarc's driver bindings, from the sources cargo downloads for the `cuda` build.
fn cudarc_driver_sys() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--features",
            "trainer/cuda",
        ])
        .arg("--manifest-path")
        .arg(repo_root().join("Cargo.toml"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .context("cargo metadata lists no cudarc package (is candle's cuda feature gone?)")?;
    let sys = Path::new(manifest)
        .with_file_name("src")
        .join("driver/sys/mod.rs");
    if !sys.is_file() {
        bail!(
            "{} is missing: cudarc's sources are not downloaded (run `cargo fetch`)",
            sys.display()
        );
    }
    Ok(sys)
}

fn check_nvcc(dir: &Path) -> anyhow::Result<()> {
    let nvcc = dir.join("bin/nvcc");
    let out = Command::new(&nvcc)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("release 13.0") {
        bail!(
            "{} --version did not report CUDA 13.0:\n{text}{}",
            nvcc.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn build(args: BuildCudaArgs) -> anyhow::Result<()> {
    let root = repo_root();
    let dir = args.dir.unwrap_or_else(default_dir);
    ensure_toolchain(&dir)?;
    let dir = dir.canonicalize()?;
    let target_dir = args.target_dir.unwrap_or_else(|| root.join("target/cuda"));
    let out = args
        .out
        .unwrap_or_else(|| root.join("target/cuda-bin/trainer"));
    let cap = args
        .compute_cap
        .or_else(|| std::env::var("CUDA_COMPUTE_CAP").ok())
        .unwrap_or_else(|| DEFAULT_COMPUTE_CAP.to_string());

    let started = Instant::now();
    if args.check {
        let features = if args.nccl {
            "cuda,trainer/nccl"
        } else {
            "cuda"
        };
        let status = cuda_cargo(&dir, &cap)
            .args([
                "check",
                "--workspace",
                "--all-targets",
                "--features",
                features,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&root)
            .status()
            .context("running cargo check")?;
        if !status.success() {
            bail!("cargo check --features {features} failed ({status})");
        }
        println!(
            "build-cuda --check: the workspace type-checks with CUDA ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let mut cmd = cuda_cargo(&dir, &cap);
    // Without the default AVX-512 CPU GEMM kernels: the binary must stay under the cap.
    cmd.args(["build", "--release", "-p", "trainer", "--bin", "trainer"])
        .args(["--no-default-features", "--features", "cuda"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    println!(
        "build-cuda: cargo build --release -p trainer --no-default-features --features cuda \
         (compute capability {cap}, target {})",
        target_dir.display()
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("the CUDA build failed ({status})");
    }
    let built = target_dir.join("release/trainer");
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = out.with_extension("part");
    fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    let mib = fs::metadata(&out)?.len() as f64 / MIB;
    println!(
        "build-cuda: {} ({mib:.1} MiB, built in {:.0} s). On a GPU machine it needs the driver \
         and the CUDA 13 libraries (cudart, cublas, cublasLt, curand, nvrtc) in LD_LIBRARY_PATH",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if mib > MAX_BINARY_MIB {
        bail!(
            "{} is {mib:.1} MiB, over {MAX_BINARY_MIB} MiB",
            out.display()
        );
    }
    Ok(())
}

/// A cargo command whose build scripts find the toolchain in `dir`: nvcc for candle-kernels
/// (cudaforge reads NVCC, then PATH), the libraries and the driver stub for cudarc (it searches
/// `$CUDA_ROOT/lib` and `lib/stubs`), and `LD_LIBRARY_PATH` so that the linker resolves the
/// libraries' own dependencies (libcublas needs libcublasLt).
fn cuda_cargo(dir: &Path, compute_cap: &str) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.env("PATH", prepend(&dir.join("bin"), "PATH"))
        .env(
            "LD_LIBRARY_PATH",
            prepend(&dir.join("lib"), "LD_LIBRARY_PATH"),
        )
        .env("NVCC", dir.join("bin/nvcc"))
        .env("CUDA_ROOT", dir)
        .env("CUDA_COMPUTE_CAP", compute_cap)
        // The ones cudarc reads before CUDA_ROOT would point elsewhere.
        .env_remove("CUDA_HOME")
        .env_remove("CUDA_PATH");
    cmd
}

fn prepend(path: &Path, var: &str) -> OsString {
    let mut parts = vec![path.to_path_buf()];
    if let Some(old) = std::env::var_os(var) {
        parts.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(parts).expect("paths without ':'")
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unversioned_names_point_at_the_versioned_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for f in [
            "libcublas.so.13",
            "libnvrtc-builtins.so.13.0",
            "libnvvm.so.4",
        ] {
            fs::write(dir.join(f), b"").unwrap();
        }
        fs::write(dir.join("libcurand.so"), b"mine").unwrap();
        fs::write(dir.join("libcurand.so.10"), b"").unwrap();
        link_unversioned(dir).unwrap();
        let target = |n: &str| fs::read_link(dir.join(n)).unwrap();
        assert_eq!(target("libcublas.so"), Path::new("libcublas.so.13"));
        assert_eq!(
            target("libnvrtc-builtins.so"),
            Path::new("libnvrtc-builtins.so.13.0")
        );
        assert_eq!(target("libnvvm.so"), Path::new("libnvvm.so.4"));
        // An existing plain name is left alone.
        assert_eq!(fs::read(dir.join("libcurand.so")).unwrap(), b"mine");
    }

    #[test]
    fn stamp_decides_completeness() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(!is_complete(dir));
        fs::write(dir.join(STAMP), "recipe 0\n").unwrap();
        assert!(!is_complete(dir), "an older recipe is not complete");
        fer_data::atomic::write_atomic(&dir.join(STAMP), stamp_text().as_bytes()).unwrap();
        assert!(is_complete(dir));
    }
}
