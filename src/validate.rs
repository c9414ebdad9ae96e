//! `pic-store validate PATH...` (spec §3): the offline check a store
//! publisher's CI runs. A path is a manifest file, or a service folder
//! holding `manifest.json` (and `compose-template.yml`, checked by every
//! rule of §7 with sample values). Prints `FILE: error: MESSAGE` and
//! `FILE: warning: MESSAGE` lines; exit 1 when any file has an error.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::host::RealHost;
use crate::manifest::{self, Report, Rules, VerificationMode};
use crate::out::outln;
use std::path::Path;

/// One finding, attributed to the file it is in.
struct Finding {
    file: String,
    error: bool,
    message: String,
}

pub fn run(config: &Config, paths: &[&str]) -> Result<i32> {
    let scratch = scratch_config(config)?;
    let config = scratch.as_ref().map(|(c, _)| c).unwrap_or(config);
    let mut findings = Vec::new();
    for p in paths {
        match check_path(config, Path::new(p)) {
            Ok(found) => findings.extend(found),
            Err(e) => {
                if let Some((_, dir)) = &scratch {
                    let _ = files::remove_dir_all_if_exists(dir);
                }
                return Err(e);
            }
        }
    }
    let mut failed = false;
    for f in &findings {
        let level = if f.error { "error" } else { "warning" };
        outln!("{}: {level}: {}", f.file, one_line(&f.message));
        failed |= f.error;
    }
    if !failed {
        eprintln!("{} path(s) valid", paths.len());
    }
    if let Some((_, dir)) = scratch {
        let _ = files::remove_dir_all_if_exists(&dir);
    }
    Ok(if failed { 1 } else { 0 })
}

/// A publisher's CI runs `validate` without the cell's state folder: when
/// `PIC_STATE_DIR` cannot be written, templates are checked against a
/// private temporary one instead.
fn scratch_config(config: &Config) -> Result<Option<(Config, std::path::PathBuf)>> {
    if files::create_dir_all(&config.state_dir.join("tmp")).is_ok() {
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("pic-store-validate-{}", std::process::id()));
    files::create_dir_all(&dir)?;
    let mut c = config.clone();
    c.state_dir = dir.clone();
    Ok(Some((c, dir)))
}

/// A manifest file, a service folder, a store (`index.json` and
/// `services/`), or a folder of service folders.
/// A missing docker or Compose plugin is an error of the run, not a
/// finding about the template (spec §13).
fn check_path(config: &Config, path: &Path) -> Result<Vec<Finding>> {
    if !path.is_dir() {
        let (_, findings) = check_manifest(config, path);
        return Ok(findings);
    }
    if path.join("manifest.json").exists() {
        return check_folder(config, path);
    }
    let services = if path.join("services").is_dir() {
        path.join("services")
    } else {
        path.to_path_buf()
    };
    let folders = match service_folders(&services) {
        Ok(f) => f,
        Err(e) => return Ok(vec![error(&path.display().to_string(), e.to_string())]),
    };
    if folders.is_empty() {
        let msg = "holds no manifest.json, services/ folder or service folders".to_string();
        return Ok(vec![error(&path.display().to_string(), msg)]);
    }
    let mut found = Vec::new();
    for f in &folders {
        found.extend(check_folder(config, f)?);
    }
    Ok(found)
}

/// The sub-folders of `dir` that hold a `manifest.json`, sorted.
fn service_folders(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| crate::error::Error::io("read folder", dir, e))?;
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    out.sort();
    Ok(out)
}

fn rules(config: &Config) -> Rules<'_> {
    Rules {
        image_registry: &config.image_registry,
        cell_dir: &config.cell_dir,
        state_dir: &config.state_dir,
        mount_roots: &config.host_mount_roots,
        verification: VerificationMode::Warn,
        taken: Vec::new(),
    }
}

/// The manifest's JSON (`None` when it cannot be read as JSON) and what
/// the validator found in it.
fn check_manifest(config: &Config, path: &Path) -> (Option<serde_json::Value>, Vec<Finding>) {
    let file = path.display().to_string();
    let bytes = match files::read(path) {
        Ok(b) => b,
        Err(e) => return (None, vec![error(&file, e.to_string())]),
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return (None, vec![error(&file, format!("not JSON: {e}"))]),
    };
    let (_, report) = manifest::validate(&value, &rules(config));
    (Some(value), findings(&file, report))
}

/// The manifest, then the template rendered with sample values (the pool's
/// first address; instance values for instanceable services; each
/// setting's default or a value of its type) and checked by every rule of
/// spec §7 through `docker compose config`. The template is checked even
/// when the manifest has errors, with samples for what the manifest cannot
/// give, so one run lists every error of both files (spec §7 item 6).
fn check_folder(config: &Config, dir: &Path) -> Result<Vec<Finding>> {
    let (value, mut found) = check_manifest(config, &dir.join("manifest.json"));
    let manifest_ok = value.is_some() && !found.iter().any(|f| f.error);
    let template_path = dir.join("compose-template.yml");
    let file = template_path.display().to_string();
    let template = match files::read_to_string(&template_path) {
        Ok(t) => t,
        Err(e) => {
            found.push(error(&file, e.to_string()));
            return Ok(found);
        }
    };
    let folder_id = dir.file_name().and_then(|n| n.to_str());
    let value = value.unwrap_or_else(|| serde_json::json!({}));
    let Some(mut m) = manifest::best_effort(&value, &rules(config), folder_id) else {
        return Ok(found);
    };
    if let Some(id) = folder_id.filter(|_| manifest_ok) {
        if id != m.id.as_str() {
            found.push(error(
                &dir.join("manifest.json").display().to_string(),
                format!("id {:?} differs from its folder name {id:?}", m.id.as_str()),
            ));
        }
    }
    let samples = crate::compose::Vars::sample_settings(&m);
    for setting in &mut m.settings {
        if setting.default.is_none() {
            setting.default = samples.get(&setting.name).cloned();
        }
    }
    let ip = (!m.instanceable).then_some(config.service_pool.first);
    if let Err(e) = crate::ops::prepare_doc(&RealHost, config, &m, &template, ip) {
        if matches!(e, Error::ToolMissing(_)) {
            return Err(e);
        }
        let messages = match e.details() {
            d if d.is_empty() => vec![e.to_string()],
            d => d,
        };
        found.extend(messages.into_iter().map(|m| error(&file, m)));
    }
    Ok(found)
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
