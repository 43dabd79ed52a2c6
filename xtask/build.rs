//! Records the build profile and optimisation level for the `bench-train` header.

fn main() {
    for key in ["PROFILE", "OPT_LEVEL"] {
        let value = std::env::var(key).unwrap_or_else(|_| "?".into());
        println!("cargo:rustc-env=XTASK_{key}={value}");
    }
}
