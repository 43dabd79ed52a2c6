//! `trainer` with no arguments: the synthetic set, both stages, a report.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fer_data::prepare::{prepare, PrepareConfig, Source};
use fer_data::synth::{generate, SynthConfig};

use crate::cli::train_and_report;
use crate::config::TrainConfig;
use crate::train::TrainArgs;
use crate::{report, Error, Result};

/// Side of the prepared synthetic faces.
pub const DEFAULT_SIZE: usize = 48;
pub const RAW: &str = "data/synthetic-raw";
pub const PREPARED: &str = "data/synthetic";

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time, from the civil-from-days algorithm.
pub fn timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn run() -> Result<()> {
    let t0 = Instant::now();
    let raw = Path::new(RAW);
    if !raw
        .join("Manually_Annotated_file_lists/validation.csv")
        .is_file()
    {
        eprintln!("generating the synthetic face set into {RAW} ...");
        generate(raw, &SynthConfig::default())?;
    }
    let prepared = Path::new(PREPARED);
    let manifest = prepared.join(fer_data::manifest::FILE_NAME);
    if manifest.is_file() {
        let m = fer_data::prepare::load_manifest(prepared)?;
        if m.image_size != DEFAULT_SIZE {
            return Err(Error::Data(format!(
                "{PREPARED} holds {} px faces, the default run uses {DEFAULT_SIZE} px: delete {PREPARED} to rebuild it",
                m.image_size
            )));
        }
    } else {
        eprintln!("preparing {RAW} into {PREPARED} ({DEFAULT_SIZE} px) ...");
        let cfg = PrepareConfig {
            size: DEFAULT_SIZE,
            ..PrepareConfig::default()
        };
        prepare(
            &Source::AffectNet {
                root: raw.to_path_buf(),
            },
            prepared,
            &cfg,
        )?;
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = Path::new("runs").join(format!("default-{}", timestamp(secs)));
    let metrics = train_and_report(TrainArgs {
        world: std::rc::Rc::new(crate::world::World::single()),
        data: prepared.to_path_buf(),
        out,
        config: Some(TrainConfig::default_cpu()),
        resume: false,
        device: candle_core::Device::Cpu,
        stop_after_epochs: None,
        fault_nan_step: None,
    })?;
    if let Some(m) = metrics {
        println!("{}", report::table(&m));
    }
    eprintln!("total time {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::timestamp(0), "19700101-000000");
        // 2024-02-29 12:34:56 UTC (a leap day).
        assert_eq!(super::timestamp(1_709_210_096), "20240229-123456");
    }
}
