//! `cargo xtask verify-data DIR`: checks a prepared folder against its manifest — every shard
//! present, its size, content hash, sample count and labels, each split's counts, no unlisted
//! shard files — printing one line per shard, and fails on any problem.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use fer_data::integrity::{
    check_shard, compare_split, unlisted_shards, unverified_note, ShardStats,
};
use fer_data::manifest::{self, Manifest};
use fer_data::prepare::SPLITS;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Prepared folder (the one holding manifest.json).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let problems = verify(&args.dir, &mut std::io::stdout().lock(), true)?;
    if !problems.is_empty() {
        anyhow::bail!(
            "{}: {} problem(s), listed above; re-run prepare-data with the same options, which \
             re-makes only the bad shards",
            args.dir.display(),
            problems.len()
        );
    }
    Ok(())
}

/// Checks `dir` shard by shard, writing a line per shard and a summary to `out`; returns the
/// problems found, one line each, naming the file or split concerned.
pub fn verify(dir: &Path, out: &mut dyn Write, progress: bool) -> anyhow::Result<Vec<String>> {
    let m = Manifest::load(&dir.join(manifest::FILE_NAME))
        .with_context(|| format!("{} is not a prepared dataset folder", dir.display()))?;
    let mut problems = Vec::new();
    if let Some(note) = unverified_note(dir, &m) {
        problems.push(note);
    }
    // Known splits in their usual order, then any others the manifest names.
    let mut names: Vec<&str> = SPLITS
        .iter()
        .copied()
        .filter(|s| m.splits.contains_key(*s))
        .collect();
    names.extend(
        m.splits
            .keys()
            .map(String::as_str)
            .filter(|s| !SPLITS.contains(s)),
    );
    let total: u64 = names
        .iter()
        .flat_map(|s| m.splits[*s].shards.iter().map(move |e| (s, e)))
        .map(|(s, e)| {
            e.bytes.unwrap_or_else(|| {
                std::fs::metadata(dir.join(s).join(&e.file)).map_or(0, |md| md.len())
            })
        })
        .sum();
    let bar = fer_data::progress::bar(
        progress,
        total,
        "verifying",
        fer_data::progress::Unit::Bytes,
    );
    let start = Instant::now();
    let mut shards = 0;
    for name in names {
        let summary = &m.splits[name];
        let mut found = ShardStats::default();
        let mut all_read = true;
        for e in &summary.shards {
            let shown = format!("{name}/{}", e.file);
            let line = match check_shard(dir, name, e, m.num_classes) {
                Ok(stats) => {
                    found.add(&stats);
                    let hash = stats
                        .checksum
                        .map_or_else(|| "no checksum recorded".into(), |c| c.to_string());
                    format!("ok   {shown}  {} samples  {hash}", stats.samples)
                }
                Err(err) => {
                    all_read = false;
                    problems.push(err.to_string());
                    format!("BAD  {shown}  {err}")
                }
            };
            bar.suspend(|| writeln!(out, "{line}"))?;
            bar.inc(e.bytes.unwrap_or(0));
            shards += 1;
        }
        // A split with an unreadable shard has counts that cannot add up: that shard is the
        // problem already reported.
        if all_read {
            problems.extend(compare_split(name, summary, &found));
        }
    }
    bar.finish_and_clear();
    for extra in unlisted_shards(dir, &m)? {
        problems.push(fer_data::integrity::unlisted_error(&extra).to_string());
    }
    let secs = start.elapsed().as_secs_f64();
    writeln!(
        out,
        "{shards} shards, {:.2} GB read in {secs:.2} s ({:.2} GB/s)",
        total as f64 / 1e9,
        total as f64 / 1e9 / secs.max(1e-9)
    )?;
    if problems.is_empty() {
        writeln!(out, "{}: all shards match the manifest", dir.display())?;
    } else {
        for p in &problems {
            writeln!(out, "problem: {p}")?;
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fer_data::prepare::{prepare, PrepareConfig, Source};
    use fer_data::shard::Shard;
    use fer_data::synth::{generate, SynthConfig};

    fn prepared(root: &Path) -> PathBuf {
        let raw = root.join("raw");
        let synth = SynthConfig {
            train: 16,
            val: 8,
            image_size: 32,
            ..SynthConfig::default()
        };
        generate(&raw, &synth).unwrap();
        let out = root.join("prepared");
        let config = PrepareConfig {
            size: 16,
            shard_size: 6,
            threads: 1,
            ..PrepareConfig::default()
        };
        prepare(&Source::AffectNet { root: raw }, &out, &config).unwrap();
        out
    }

    fn check(dir: &Path) -> (Vec<String>, String) {
        let mut text = Vec::new();
        let problems = verify(dir, &mut text, false).unwrap();
        (problems, String::from_utf8(text).unwrap())
    }

    #[test]
    fn a_good_folder_passes_and_a_flipped_pixel_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let out = prepared(tmp.path());
        let (problems, text) = check(&out);
        assert!(problems.is_empty(), "{text}");
        let m = Manifest::load(&out.join(manifest::FILE_NAME)).unwrap();
        let listed: usize = m.splits.values().map(|s| s.shards.len()).sum();
        assert!(listed >= 4, "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("ok ")).count(),
            listed
        );
        assert!(text.contains(&format!("{listed} shards")), "{text}");

        // One byte of the second image of a train shard, found by its content.
        let bad = out.join("train/shard-00001.safetensors");
        let pixels = Shard::open(&bad).unwrap().image(1).to_vec();
        let mut bytes = std::fs::read(&bad).unwrap();
        let at = bytes
            .windows(pixels.len())
            .position(|w| w == pixels)
            .unwrap();
        bytes[at + pixels.len() / 2] ^= 1;
        std::fs::write(&bad, bytes).unwrap();

        let (problems, text) = check(&out);
        assert_eq!(problems.len(), 1, "{text}");
        let p = &problems[0];
        assert!(
            p.contains("train/shard-00001.safetensors")
                && p.contains("content hash")
                && p.contains("re-run prepare-data"),
            "{p}"
        );
        assert!(
            text.contains("BAD  train/shard-00001.safetensors"),
            "{text}"
        );
        assert!(run(VerifyArgs { dir: out }).is_err());
    }

    #[test]
    fn counts_that_disagree_with_the_manifest_are_problems() {
        let tmp = tempfile::tempdir().unwrap();
        let out = prepared(tmp.path());
        let path = out.join(manifest::FILE_NAME);
        let mut m = Manifest::load(&path).unwrap();
        // Move one sample from the first class to "no class": still a consistent manifest, but
        // not what the shards hold.
        let val = m.splits.get_mut("val").unwrap();
        let c = val.class_histogram.iter().position(|&n| n > 0).unwrap();
        val.class_histogram[c] -= 1;
        val.no_class += 1;
        m.save(&path).unwrap();
        let (problems, text) = check(&out);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("split val") && p.contains("class histogram")),
            "{text}"
        );

        // A v2 manifest (no checksums) cannot vouch for its shards.
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["format"] = "fer-prepared-v2".into();
        for split in json["splits"].as_object_mut().unwrap().values_mut() {
            for e in split["shards"].as_array_mut().unwrap() {
                e.as_object_mut().unwrap().remove("checksum");
            }
        }
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let (problems, text) = check(&out);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("without shard checksums")),
            "{text}"
        );
    }
}
