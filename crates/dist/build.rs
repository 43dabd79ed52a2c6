fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "mpi")]
    mpi_shim();
}

/// Compiles `src/mpi_shim.c`, which hands Rust the value of `MPI_IN_PLACE` (rsmpi's bindings
/// cannot export it: it is a cast macro, `(void *) 1` in Open MPI, `(void *) -1` in MPICH).
/// Probed the way mpi-sys probes, so that both see the same mpi.h.
#[cfg(feature = "mpi")]
fn mpi_shim() {
    println!("cargo:rerun-if-changed=src/mpi_shim.c");
    let lib = match build_probe_mpi::probe() {
        Ok(lib) => lib,
        Err(errs) => {
            for err in &errs {
                println!("cargo:warning=MPI probe: {err}");
            }
            panic!("fer-dist's `mpi` feature needs an MPI library (mpicc on PATH, or pkg-config)");
        }
    };
    let mut build = cc::Build::new();
    build.file("src/mpi_shim.c");
    match lib.mpicc {
        Some(mpicc) => {
            build.compiler(mpicc);
        }
        None => {
            for dir in &lib.include_paths {
                build.include(dir);
            }
        }
    }
    build.compile("fer_dist_mpi_shim");
}
