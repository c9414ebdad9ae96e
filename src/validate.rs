//! `pic-store validate PATH...` (spec §3): the offline check a store
//! publisher's CI runs. A path is a manifest file, or a service folder
//! holding `manifest.json` (and `compose-template.yml`, checked by every
//! rule of §7 with sample values). Prints `FILE: error: MESSAGE` and
//! `FILE: warning: MESSAGE` lines; exit 1 when any file has an error.

use crate::config::Config;
use crate::error::Result;
use crate::files;
use crate::manifest::{self, Report, Rules, VerificationMode};
use std::path::Path;

/// One finding, attributed to the file it is in.
struct Finding {
    file: String,
    error: bool,
    message: String,
}

pub fn run(config: &Config, paths: &[&str]) -> Result<i32> {
    let mut findings = Vec::new();
    for p in paths {
        findings.extend(check_path(config, Path::new(p)));
    }
    let mut failed = false;
    for f in &findings {
        let level = if f.error { "error" } else { "warning" };
        println!("{}: {level}: {}", f.file, one_line(&f.message));
        failed |= f.error;
    }
    if !failed {
        eprintln!("{} path(s) valid", paths.len());
    }
    Ok(if failed { 1 } else { 0 })
}

fn check_path(config: &Config, path: &Path) -> Vec<Finding> {
    if path.is_dir() {
        check_folder(config, path)
    } else {
        let (_, findings) = check_manifest(config, path);
        findings
    }
}

fn rules(config: &Config) -> Rules<'_> {
    Rules {
        image_registry: &config.image_registry,
        cell_dir: &config.cell_dir,
        state_dir: &config.state_dir,
        verification: VerificationMode::Warn,
        taken: Vec::new(),
    }
}

fn check_manifest(config: &Config, path: &Path) -> (Option<manifest::ValidManifest>, Vec<Finding>) {
    let file = path.display().to_string();
    let bytes = match files::read(path) {
        Ok(b) => b,
        Err(e) => return (None, vec![error(&file, e.to_string())]),
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return (None, vec![error(&file, format!("not JSON: {e}"))]),
    };
    let (valid, report) = manifest::validate(&value, &rules(config));
    (valid, findings(&file, report))
}

fn check_folder(config: &Config, dir: &Path) -> Vec<Finding> {
    let manifest_path = dir.join("manifest.json");
    let (_valid, found) = check_manifest(config, &manifest_path);
    found
}

fn findings(file: &str, report: Report) -> Vec<Finding> {
    let errors = report.errors.into_iter().map(|m| error(file, m));
    let warnings = report.warnings.into_iter().map(|m| Finding {
        file: file.to_string(),
        error: false,
        message: m,
    });
    errors.chain(warnings).collect()
}

fn error(file: &str, message: String) -> Finding {
    Finding {
        file: file.to_string(),
        error: true,
        message,
    }
}

/// Keeps one finding on one line whatever its text holds.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
