//! The free-space check before a pull (spec §13 "Disk"): the docker root
//! (from `docker info`) and `PIC_STATE_DIR` must each keep
//! `PIC_MIN_FREE_MB` free after the images' sizes, where known.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::{Cmd, Host};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// A folder and the space free in it, in bytes (for an unprivileged
/// writer: `f_bavail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Free {
    pub folder: PathBuf,
    pub bytes: u64,
}

/// The bytes free in the file system that holds `folder`.
pub fn free(folder: &Path) -> Result<Free> {
    let st = nix::sys::statvfs::statvfs(folder)
        .map_err(|e| Error::io("measure free space in", folder, std::io::Error::from(e)))?;
    // The field types are 32-bit on some targets (a 32-bit Pi OS).
    #[allow(clippy::useless_conversion)]
    let bytes = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    Ok(Free {
        folder: folder.to_path_buf(),
        bytes,
    })
}

/// Docker's root folder (`/var/lib/docker` unless the daemon says
/// otherwise).
pub fn docker_root(host: &dyn Host, config: &Config) -> Result<PathBuf> {
    let out = host.run(
        &Cmd::new(&config.docker)
            .timeout(Duration::from_secs(30))
            .args(["info", "--format", "{{.DockerRootDir}}"]),
    )?;
    let root = out.stdout.trim();
    if !root.starts_with('/') {
        return Err(Error::failed(
            "read the docker root folder",
            format!("docker info said {root:?}"),
        ));
    }
    Ok(PathBuf::from(root))
}

/// Refuses when a folder would keep less than `min_free_mb` MiB after
/// `incoming` more bytes: names the folder, what is free and what is
/// needed.
pub fn check(space: &Free, incoming: u64, min_free_mb: u64) -> Result<()> {
    let needed = incoming.saturating_add(min_free_mb.saturating_mul(MIB));
    if space.bytes >= needed {
        return Ok(());
    }
    let images = if incoming > 0 {
        format!(
            " ({} MiB for the images and {min_free_mb} MiB to keep free)",
            mib(incoming)
        )
    } else {
        format!(" (PIC_MIN_FREE_MB={min_free_mb})")
    };
    Err(Error::failed(
        "check free space",
        format!(
            "{} has {} MiB free; {} MiB are needed{images}",
            space.folder.display(),
            mib(space.bytes),
            mib(needed),
        ),
    ))
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(mb: u64) -> Free {
        Free {
            folder: PathBuf::from("/var/lib/docker"),
            bytes: mb * MIB,
        }
    }

    #[test]
    fn enough_space_passes() {
        check(&space(2048), 0, 1024).unwrap();
        check(&space(2048), 1024 * MIB, 1024).unwrap();
    }

    #[test]
    fn too_little_space_names_folder_free_and_needed() {
        let e = check(&space(1500), 600 * MIB, 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/var/lib/docker has 1500 MiB free"), "{e}");
        assert!(e.contains("1624 MiB are needed"), "{e}");
        let e = check(&space(10), 0, 1024).unwrap_err().to_string();
        assert!(e.contains("PIC_MIN_FREE_MB=1024"), "{e}");
    }

    #[test]
    fn free_space_of_a_real_folder_is_measured() {
        let f = free(Path::new("/")).unwrap();
        assert!(f.bytes > 0);
        assert!(free(Path::new("/no/such/folder/here")).is_err());
    }
}
