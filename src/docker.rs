//! Plain `docker` calls (not compose): the cell network, the addresses on
//! it, image digests and presence, `docker exec` for provision hooks, and
//! removal of a compose project's leftovers by label when its file is gone,
//! and the subnets of compose projects' own networks (for egress).

use crate::config::{Config, Ipv4Subnet, NETWORK_SUBNET};
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

/// The networks of some compose projects and the cell network's bridge,
/// as docker has them now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectNetworks {
    /// Project → the IPv4 subnets of its own networks (the cell network
    /// is never among them).
    pub subnets: std::collections::BTreeMap<String, Vec<Ipv4Subnet>>,
    /// The Linux bridge of `PIC_NETWORK` (`br-` and the first 12 digits of
    /// its id unless docker was told a name); `None` when it is missing.
    pub cell_bridge: Option<String>,
}

/// Reads the networks of `projects` (compose project names) and the cell
/// network: one `network ls`, then one `network inspect` of the cell
/// network and the projects' networks.
pub fn project_networks(
    host: &dyn Host,
    config: &Config,
    projects: &BTreeSet<String>,
) -> Result<ProjectNetworks> {
    let listed = host.run(&docker(config).args([
        "network",
        "ls",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        "{{.ID}}\t{{.Label \"com.docker.compose.project\"}}",
    ]))?;
    let ids: Vec<&str> = listed
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, project)| projects.contains(project.trim()))
        .map(|(id, _)| id.trim())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    let out = host.run(
        &docker(config)
            .args([
                "network",
                "inspect",
                "--format",
                "{{.Name}}\t{{.Id}}\t{{index .Options \"com.docker.network.bridge.name\"}}\t{{index .Labels \"com.docker.compose.project\"}}\t{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            ])
            .arg(&config.network)
            .args(ids.iter().copied())
            .allow_failure(),
    )?;
    // A missing cell network fails the call but the others still print.
    if !out.success() && out.stdout.trim().is_empty() && !ids.is_empty() {
        return Err(Error::failed(
            "read the compose networks",
            crate::error::stderr_tail(&out.stderr),
        ));
    }
    Ok(parse_project_networks(
        &out.stdout,
        &config.network,
        projects,
    ))
}

/// Parses the `network inspect` lines of [`project_networks`].
fn parse_project_networks(
    text: &str,
    cell_network: &str,
    projects: &BTreeSet<String>,
) -> ProjectNetworks {
    let mut found = ProjectNetworks::default();
    let given = |v: &str| (!v.is_empty() && v != "<no value>").then(|| v.to_string());
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [name, id, bridge, project, subnets] = f.as_slice() else {
            continue;
        };
        if *name == cell_network {
            found.cell_bridge = given(bridge).or_else(|| {
                id.get(..12)
                    .filter(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(|p| format!("br-{p}"))
            });
            continue;
        }
        if !projects.contains(*project) {
            continue;
        }
        let nets = found.subnets.entry(project.to_string()).or_default();
        for net in subnets.split_whitespace() {
            if let Ok(net) = Ipv4Subnet::parse(net) {
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
        }
    }
    found
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

/// A forced remove (spec §8): each of the project's containers
/// (`docker rm -f -v`) and networks removed by label, one by one; returns
/// what could not be removed, and why.
pub fn force_remove_project(host: &dyn Host, config: &Config, project: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let mut left = Vec::new();
    let kinds: [(&str, &[&str], &[&str]); 2] = [
        ("container", &["ps", "-aq", "--filter"], &["rm", "-f", "-v"]),
        (
            "network",
            &["network", "ls", "-q", "--filter"],
            &["network", "rm"],
        ),
    ];
    for (kind, list, rm) in kinds {
        let ids = match host.run(&docker(config).args(list.iter().copied()).arg(&label)) {
            Ok(out) => out.stdout,
            Err(e) => {
                left.push(format!(
                    "the {kind}s of {project} (listing them failed: {e})"
                ));
                continue;
            }
        };
        for id in ids.split_whitespace() {
            if let Err(e) = host.run(&docker(config).args(rm.iter().copied()).arg(id)) {
                left.push(format!("{kind} {id}: {e}"));
            }
        }
    }
    left
}

/// The local images as `(repository, tag, digest)`, in one call.
pub fn local_images(host: &dyn Host, config: &Config) -> Result<Vec<(String, String, String)>> {
    let out = host.run(&docker(config).args([
        "image",
        "ls",
        "--digests",
        "--format",
        "{{.Repository}}\t{{.Tag}}\t{{.Digest}}",
    ]))?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?.to_string(),
                f.next()?.to_string(),
                f.next()?.to_string(),
            ))
        })
        .collect())
}

/// Whether `image` (`REPO[:TAG][@sha256:...]`) is among `images`: by its
/// digest when pinned, else by its tag (`latest` when none).
pub fn image_listed(images: &[(String, String, String)], image: &str) -> bool {
    let (name, pin) = match image.split_once('@') {
        Some((n, p)) => (n, Some(p)),
        None => (image, None),
    };
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    images.iter().any(|(r, t, d)| {
        r == repo
            && match pin {
                Some(p) => d == p,
                None => t == tag,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::{image_listed, parse_project_networks};

    #[test]
    fn project_networks_and_the_cell_bridge_are_read_from_inspect() {
        let projects = ["pic-files".to_string()].into_iter().collect();
        let text = "cell-network\t0123456789abcdef\t<no value>\t<no value>\t172.20.0.0/24 \n\
                    pic-files_default\tfeed\t\tpic-files\t172.21.0.0/16 fd00::/64 \n\
                    pic-files_db\tbeef\t<no value>\tpic-files\t172.22.5.0/24 \n\
                    pic-other_default\tcafe\t\tpic-other\t172.23.0.0/16 \n";
        let n = parse_project_networks(text, "cell-network", &projects);
        assert_eq!(n.cell_bridge.as_deref(), Some("br-0123456789ab"));
        let files: Vec<String> = n.subnets["pic-files"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(files, ["172.21.0.0/16", "172.22.5.0/24"]);
        assert_eq!(n.subnets.len(), 1);
        let named = "cell-network\t0123456789abcdef\tbr-cell\t\t172.20.0.0/24 \n";
        let n = parse_project_networks(named, "cell-network", &projects);
        assert_eq!(n.cell_bridge.as_deref(), Some("br-cell"));
    }

    #[test]
    fn images_are_found_by_digest_or_tag() {
        let list = vec![
            (
                "127.0.0.1:5000/roof/web".to_string(),
                "<none>".to_string(),
                "sha256:aa".to_string(),
            ),
            ("busybox".to_string(), "1".to_string(), "<none>".to_string()),
        ];
        assert!(image_listed(&list, "127.0.0.1:5000/roof/web:1@sha256:aa"));
        assert!(!image_listed(&list, "127.0.0.1:5000/roof/web:1@sha256:bb"));
        assert!(image_listed(&list, "busybox:1"));
        assert!(!image_listed(&list, "busybox"));
        assert!(!image_listed(&list, "127.0.0.1:5000/roof/web"));
    }
}
