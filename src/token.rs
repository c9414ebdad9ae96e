//! The API token (spec §12): 32 random bytes as hex in
//! `$PIC_STATE_DIR/api-token`, mode 0600, made once and never replaced.

use crate::error::{Error, Result};
use crate::files;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Random bytes from the kernel.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let path = Path::new("/dev/urandom");
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut buf = vec![0u8; n];
    f.read_exact(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(buf)
}

pub fn random_hex(n: usize) -> Result<String> {
    Ok(random_bytes(n)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Reads the token, making it first when the file does not exist. Two
/// processes racing here agree on one token: the file is created by a hard
/// link, which fails when another process linked first.
pub fn load_or_create(state_dir: &Path) -> Result<String> {
    let path = state_dir.join("api-token");
    if let Some(t) = read(&path)? {
        return Ok(t);
    }
    files::create_dir_all(state_dir)?;
    let token = random_hex(32)?;
    let tmp = state_dir.join(format!("api-token.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(format!("{token}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("write", &tmp, e))
    })();
    let linked = written.and_then(|_| match std::fs::hard_link(&tmp, &path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("create", &path, e)),
    });
    let _ = std::fs::remove_file(&tmp);
    if linked? {
        files::sync_dir(state_dir)?;
        log::info!("made a new API token in {}", path.display());
        return Ok(token);
    }
    read(&path)?.ok_or_else(|| {
        Error::io(
            "read",
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "vanished"),
        )
    })
}

fn read(path: &Path) -> Result<Option<String>> {
    match files::read_optional(path)? {
        None => Ok(None),
        Some(bytes) => {
            let t = String::from_utf8_lossy(&bytes).trim().to_string();
            if t.len() < 32 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::io(
                    "read",
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a pic-store token; delete it to make a new one",
                    ),
                ));
            }
            Ok(Some(t))
        }
    }
}

/// Compares in time independent of where the strings differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_with_mode_0600() {
        let d = std::env::temp_dir().join(format!("pic-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let a = load_or_create(&d).unwrap();
        let b = load_or_create(&d).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(d.join("api-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
