//! Running compose: the project a file belongs to, the one way every
//! compose call is made ([`compose_cmd`]: spec §7.2's environment and
//! flags), and [`convert`], the only YAML parser involved.

use super::*;

// ---------------------------------------------------------------------------
// Running compose
// ---------------------------------------------------------------------------

/// A compose project: its name (`-p`) and its file (`-f`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    pub file: PathBuf,
}

/// `docker compose -p NAME -f FILE --env-file /dev/null` in the environment
/// of spec §7.2: a fixed `PATH`, `HOME` that leads nowhere, remote
/// `include`s switched off, no other `COMPOSE_*` and no `DOCKER_HOST` (the
/// default socket). Every compose call (config, pull, up, down, ps) starts
/// from this; add the subcommand and its flags.
pub fn compose_cmd(config: &Config, project: &Project) -> Cmd {
    Cmd::new(&config.docker)
        .args(["compose", "-p", &project.name, "-f"])
        .arg(project.file.display().to_string())
        .args(["--env-file", "/dev/null"])
        .env(Env::Only(vec![
            ("PATH".into(), SAFE_PATH.into()),
            ("HOME".into(), COMPOSE_HOME.into()),
            ("COMPOSE_EXPERIMENTAL_GIT_REMOTE".into(), "false".into()),
            ("COMPOSE_EXPERIMENTAL_OCI_REMOTE".into(), "false".into()),
        ]))
}

/// Has compose parse `rendered` and return the resulting project as JSON,
/// with nothing taken from the host: no interpolation, no env files, no
/// path resolution, every profile. The text is written to a file in
/// `work_dir` (a folder that never holds a `.env`) and removed afterwards.
pub fn convert(
    host: &dyn Host,
    config: &Config,
    project_name: &str,
    rendered: &str,
    work_dir: &Path,
) -> Result<Value> {
    if !is_project_name(project_name) {
        return Err(Error::invalid(
            "compose project",
            vec![format!("{project_name:?} is not a project name")],
        ));
    }
    let file = work_dir.join(format!("{project_name}.yml"));
    files::write_atomic(&file, rendered.as_bytes(), 0o600)?;
    let project = Project {
        name: project_name.to_string(),
        file: file.clone(),
    };
    let cmd = compose_cmd(config, &project)
        .args([
            "--profile",
            "*",
            "config",
            "--format",
            "json",
            "--no-interpolate",
            "--no-env-resolution",
            "--no-path-resolution",
        ])
        .timeout(CONVERT_TIMEOUT);
    let result = host.run(&cmd).map_err(missing_tool);
    let removed = files::remove_file_if_exists(&file);
    let out = match result {
        Ok(out) => out,
        Err(Error::Command { reason, stderr, .. }) if reason.starts_with("exit status") => {
            return Err(Error::invalid(
                "docker compose config",
                vec![format!("refused the file: {}", stderr_tail(&stderr))],
            ));
        }
        Err(e) => return Err(e),
    };
    removed?;
    serde_json::from_str(&out.stdout).map_err(|e| {
        Error::invalid(
            "docker compose config",
            vec![format!("printed something that is not JSON ({e})")],
        )
    })
}

/// A compose run that failed because docker or its Compose plugin is not
/// there becomes [`Error::ToolMissing`] (spec §13), so the template is not
/// blamed for it; any other error is returned as it is.
pub fn missing_tool(e: Error) -> Error {
    match &e {
        Error::Command {
            program,
            reason,
            stderr,
            ..
        } => {
            if reason == "program not found" {
                return Error::ToolMissing(format!("docker not found: {program}"));
            }
            let plugin_missing = stderr.contains("is not a docker command")
                || stderr.contains("unknown command: docker compose")
                || stderr.contains("unknown shorthand flag: 'p' in -p");
            if reason.starts_with("exit status") && plugin_missing {
                return Error::ToolMissing(format!(
                    "docker compose plugin not found ({program} compose: {})",
                    stderr_tail(stderr)
                ));
            }
            e
        }
        _ => e,
    }
}

pub(super) fn is_project_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 80
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
