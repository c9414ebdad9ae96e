//! Every file-system call pic-store makes, wrapped once so each error names
//! its path, plus the atomic write every file that matters goes through:
//! temporary file in the same folder, fsync, rename over, fsync the folder.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io("read", path, e))
}

pub fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

/// Reads a file that may be absent.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

pub fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io("create folder", path, e))
}

/// Removes a file; an absent file is not an error.
pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Removes a folder tree; an absent one is not an error.
pub fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove folder", path, e)),
    }
}

pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("rename to", to, e))
}

/// fsyncs a folder so a rename inside it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync folder", dir, e))
}

/// The temporary name an atomic write of `path` uses. One fixed name per
/// target, so a crash leaves at most one stray file, replaced next time.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` so that a crash at any instant leaves
/// either the old or the new content. Callers serialise writers of one path
/// (the state lock); the temporary name is fixed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent(path)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(f);
        rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `path` atomically only when its content differs. Returns whether
/// it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if read_optional(path)?.as_deref() == Some(bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes, mode)?;
    Ok(true)
}

fn parent(path: &Path) -> Result<&Path> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Err(Error::io(
            "write",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no folder"),
        )),
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pic-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempdir("aw");
        let p = d.join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!temp_path(&p).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_if_changed_skips_identical_content() {
        let d = tempdir("wic");
        let p = d.join("f");
        assert!(write_if_changed(&p, b"x", 0o644).unwrap());
        assert!(!write_if_changed(&p, b"x", 0o644).unwrap());
        assert!(write_if_changed(&p, b"y", 0o644).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let d = tempdir("fail");
        let p = d.join("f");
        write_atomic(&p, b"old", 0o644).unwrap();
        // A folder in the temp file's place makes the create fail.
        fs::create_dir(temp_path(&p)).unwrap();
        assert!(write_atomic(&p, b"new", 0o644).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        fs::remove_dir_all(&d).unwrap();
    }
}
