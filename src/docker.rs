//! Plain `docker` calls (not compose): the cell network, the addresses on
//! it, image digests and presence, `docker exec` for provision hooks, and
//! removal of a compose project's leftovers by label when its file is gone.

use crate::config::{Config, NETWORK_SUBNET};
use crate::error::{Error, Result};
use crate::host::{Cmd, Host};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

const QUICK: Duration = Duration::from_secs(30);

fn docker(config: &Config) -> Cmd {
    Cmd::new(&config.docker).timeout(QUICK)
}

/// Makes `PIC_NETWORK` (172.20.0.0/24) when it does not exist. Returns
/// whether it made it.
pub fn ensure_network(host: &dyn Host, config: &Config) -> Result<bool> {
    if network_exists(host, config)? {
        return Ok(false);
    }
    let (net, prefix) = NETWORK_SUBNET;
    let made = host.run(
        &docker(config)
            .args(["network", "create", "--driver", "bridge", "--subnet"])
            .arg(format!("{net}/{prefix}"))
            .arg(&config.network)
            .allow_failure(),
    )?;
    if made.success() {
        log::info!("created docker network {}", config.network);
        return Ok(true);
    }
    // Another process may be making it at this moment.
    for _ in 0..20 {
        if network_exists(host, config)? {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    Err(Error::failed(
        format!("create docker network {}", config.network),
        crate::error::stderr_tail(&made.stderr),
    ))
}

fn network_exists(host: &dyn Host, config: &Config) -> Result<bool> {
    let out = host.run(
        &docker(config)
            .args(["network", "inspect", "--format", "{{.Name}}"])
            .arg(&config.network)
            .allow_failure(),
    )?;
    Ok(out.success())
}

/// The IPv4 addresses containers hold on `PIC_NETWORK` (empty when the
/// network does not exist yet).
pub fn network_ips(host: &dyn Host, config: &Config) -> Result<BTreeSet<Ipv4Addr>> {
    let out = host.run(
        &docker(config)
            .args([
                "network",
                "inspect",
                "--format",
                "{{range .Containers}}{{.IPv4Address}} {{end}}",
            ])
            .arg(&config.network)
            .allow_failure(),
    )?;
    if !out.success() {
        return Ok(BTreeSet::new());
    }
    Ok(out
        .stdout
        .split_whitespace()
        .filter_map(|a| a.split('/').next())
        .filter_map(|a| a.parse().ok())
        .collect())
}

/// The repo digests (`REPO@sha256:...`) of a local image; empty when the
/// image is not present.
pub fn repo_digests(host: &dyn Host, config: &Config, image: &str) -> Result<Vec<String>> {
    let out = host.run(
        &docker(config)
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .RepoDigests}}",
                image,
            ])
            .allow_failure(),
    )?;
    if !out.success() {
        return Ok(Vec::new());
    }
    serde_json::from_str::<Option<Vec<String>>>(out.stdout.trim())
        .map(Option::unwrap_or_default)
        .map_err(|e| Error::failed(format!("read the digests of {image}"), e))
}

pub fn image_present(host: &dyn Host, config: &Config, image: &str) -> Result<bool> {
    let out = host.run(
        &docker(config)
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .allow_failure(),
    )?;
    Ok(out.success())
}

/// Runs a provision hook inside the service's container.
pub fn exec(
    host: &dyn Host,
    config: &Config,
    container: &str,
    argv: &[String],
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let cmd = Cmd::new(&config.docker)
        .timeout(timeout)
        .args(["exec", container])
        .args(argv.iter().cloned());
    host.run_with_progress(&cmd, progress).map(|_| ())
}

/// Names of the containers of a compose project, running or not.
pub fn project_containers(host: &dyn Host, config: &Config, project: &str) -> Result<Vec<String>> {
    let out = host.run(
        &docker(config)
            .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
            .arg(format!("label=com.docker.compose.project={project}")),
    )?;
    Ok(out.stdout.lines().map(str::to_string).collect())
}

/// Removes a project's containers and networks by label: the way to clean
/// up after a crash that left containers but no compose file.
pub fn remove_project_by_label(host: &dyn Host, config: &Config, project: &str) -> Result<()> {
    let label = format!("label=com.docker.compose.project={project}");
    let ids = host.run(&docker(config).args(["ps", "-aq", "--filter"]).arg(&label))?;
    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
    if !ids.is_empty() {
        host.run(
            &docker(config)
                .args(["rm", "-f", "-v"])
                .args(ids.iter().copied()),
        )?;
    }
    let nets = host.run(
        &docker(config)
            .args(["network", "ls", "-q", "--filter"])
            .arg(&label),
    )?;
    let nets: Vec<&str> = nets.stdout.split_whitespace().collect();
    if !nets.is_empty() {
        host.run(
            &docker(config)
                .args(["network", "rm"])
                .args(nets.iter().copied()),
        )?;
    }
    Ok(())
}

/// Names of the running containers of a compose project.
pub fn running_containers(host: &dyn Host, config: &Config, project: &str) -> Result<Vec<String>> {
    let out = host.run(
        &docker(config)
            .args(["ps", "--format", "{{.Names}}", "--filter"])
            .arg(format!("label=com.docker.compose.project={project}")),
    )?;
    Ok(out.stdout.lines().map(str::to_string).collect())
}
