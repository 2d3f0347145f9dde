//! Keys kept in a directory, so a dev issuer restarted on the same directory
//! signs with the same keys under the same kids.
//!
//! Layout: one `KID.pk8` file per key (PKCS#8 DER, mode 0600 on Unix) and an
//! optional `active` file holding the kid that signs. Other files are ignored.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, TestKey};

const KEY_EXT: &str = "pk8";
const ACTIVE_FILE: &str = "active";
const FIRST_KID: &str = "key-1";

/// Loads every key in `dir`, creating the directory and one key (`key-1`) when
/// there is none. The active key comes first: the one named by the `active`
/// file, or else the first kid in sort order; the rest follow sorted by kid.
pub fn load_or_create_keys(dir: &Path) -> Result<Vec<TestKey>, Error> {
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let mut keys = load_keys(dir)?;
    if keys.is_empty() {
        let key = TestKey::try_generate(FIRST_KID)?;
        // Another process on the same directory may create it at the same
        // moment: whichever file lands first is the key, and both load it.
        write_new(dir, &key)?;
        keys = load_keys(dir)?;
    }
    let active = match read_active(dir)? {
        Some(kid) => {
            keys.iter()
                .position(|k| k.kid() == kid)
                .ok_or_else(|| Error::ActiveKeyMissing {
                    path: dir.to_owned(),
                    kid,
                })?
        }
        None => 0,
    };
    let first = keys.remove(active);
    keys.insert(0, first);
    Ok(keys)
}

/// Saves `key` in `dir` as `KID.pk8`, replacing a key file of the same kid.
pub fn save_key(dir: &Path, key: &TestKey) -> Result<PathBuf, Error> {
    let path = key_path(dir, key.kid())?;
    let tmp = write_temp(dir, key)?;
    fs::rename(&tmp, &path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        io_error(&path, source)
    })?;
    Ok(path)
}

/// Names the key that signs, in the `active` file of `dir`.
pub fn save_active(dir: &Path, kid: &str) -> Result<(), Error> {
    check_kid(kid)?;
    let path = dir.join(ACTIVE_FILE);
    fs::write(&path, format!("{kid}\n")).map_err(|source| io_error(&path, source))
}

fn load_keys(dir: &Path) -> Result<Vec<TestKey>, Error> {
    let mut keys = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| io_error(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error(dir, source))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(KEY_EXT) {
            continue;
        }
        let Some(kid) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if kid.starts_with('.') || check_kid(kid).is_err() {
            continue;
        }
        let der = fs::read(&path).map_err(|source| io_error(&path, source))?;
        keys.push(TestKey::from_pkcs8_der(kid, &der)?);
    }
    keys.sort_by(|a, b| a.kid().cmp(b.kid()));
    Ok(keys)
}

fn read_active(dir: &Path) -> Result<Option<String>, Error> {
    let path = dir.join(ACTIVE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let kid = text.trim();
            Ok((!kid.is_empty()).then(|| kid.to_owned()))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error(&path, source)),
    }
}

/// Writes `key` under its final name only if no file has that name yet.
fn write_new(dir: &Path, key: &TestKey) -> Result<(), Error> {
    let path = key_path(dir, key.kid())?;
    let tmp = write_temp(dir, key)?;
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(io_error(&path, source)),
    }
}

fn write_temp(dir: &Path, key: &TestKey) -> Result<PathBuf, Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        key.kid(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = options
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(&key.to_pkcs8_der())?;
            file.sync_all()
        })
        .map_err(|source| io_error(&tmp, source));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| tmp)
}

fn key_path(dir: &Path, kid: &str) -> Result<PathBuf, Error> {
    check_kid(kid)?;
    Ok(dir.join(format!("{kid}.{KEY_EXT}")))
}

fn check_kid(kid: &str) -> Result<(), Error> {
    let ok = !kid.is_empty()
        && kid != "."
        && kid != ".."
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKid {
            kid: kid.to_owned(),
        })
    }
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::KeysDir {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "idgate-testkit-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_then_reloads_the_same_key() {
        let dir = temp_dir("create");
        let first = load_or_create_keys(&dir).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kid(), "key-1");
        let again = load_or_create_keys(&dir).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].to_pkcs8_der(), first[0].to_pkcs8_der());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join("key-1.pk8"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn active_file_picks_the_signing_key() {
        let dir = temp_dir("active");
        fs::create_dir_all(&dir).unwrap();
        save_key(&dir, &TestKey::generate("a")).unwrap();
        save_key(&dir, &TestKey::generate("b")).unwrap();
        fs::write(dir.join("README"), "ignored").unwrap();
        let keys = load_or_create_keys(&dir).unwrap();
        let kids: Vec<_> = keys.iter().map(TestKey::kid).collect();
        assert_eq!(kids, ["a", "b"]);
        save_active(&dir, "b").unwrap();
        let keys = load_or_create_keys(&dir).unwrap();
        let kids: Vec<_> = keys.iter().map(TestKey::kid).collect();
        assert_eq!(kids, ["b", "a"]);
        save_active(&dir, "gone").unwrap();
        assert!(matches!(
            load_or_create_keys(&dir),
            Err(Error::ActiveKeyMissing { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_key_file_is_an_error() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x.pk8"), b"junk").unwrap();
        assert!(matches!(
            load_or_create_keys(&dir),
            Err(Error::InvalidKey { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_kids_are_refused() {
        let dir = temp_dir("kid");
        for kid in ["", "..", "a/b", "a b"] {
            assert!(matches!(
                save_key(&dir, &TestKey::generate(kid)),
                Err(Error::InvalidKid { .. })
            ));
        }
    }
}
