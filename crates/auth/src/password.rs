//! The password file: one `username:hash` line per user, the hash in PHC string form
//! (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`, as `fleetmq passwd` writes it). Blank
//! lines and lines starting with `#` are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::ConfigError;

/// Users and their password hashes.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    hashes: HashMap<String, String>,
}

impl PasswordFile {
    /// Reads `path`; an error names `key` (the configuration key) and the line.
    pub fn load(key: &str, path: &Path) -> Result<PasswordFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
        PasswordFile::parse(&text)
            .map_err(|problem| ConfigError::invalid(key, format!("{}: {problem}", path.display())))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: not username:hash", n + 1))?;
            if user.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            PasswordHash::new(hash)
                .map_err(|e| format!("line {}: user {user:?}: not a password hash: {e}", n + 1))?;
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {}: user {user:?} is listed twice", n + 1));
            }
        }
        Ok(PasswordFile { hashes })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is `user`'s. Slow on purpose (argon2).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(stored) = self.hashes.get(user) else {
            // The same work as for a known user, so that timing does not tell which
            // user names exist.
            let _ = hash_password(password);
            return false;
        };
        PasswordHash::new(stored)
            .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
    }
}

/// The node's password file, read again on request (SIGHUP, the admin API) so that
/// `fleetmq passwd` changes take effect without a restart. A file that cannot be read
/// or parsed leaves the users in force as they were.
#[derive(Debug)]
pub struct PasswordSource {
    key: String,
    path: PathBuf,
    current: RwLock<Arc<PasswordFile>>,
}

impl PasswordSource {
    /// Reads `path` (the value of configuration key `key`).
    pub fn load(key: &str, path: &Path) -> Result<PasswordSource, ConfigError> {
        Ok(PasswordSource {
            key: key.to_string(),
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(PasswordFile::load(key, path)?)),
        })
    }

    /// The users in force.
    pub fn current(&self) -> Arc<PasswordFile> {
        // A panic while the lock was held cannot leave a half-replaced Arc.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again; the number of users now in force.
    pub fn reload(&self) -> Result<usize, ConfigError> {
        let file = PasswordFile::load(&self.key, &self.path)?;
        let users = file.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(file);
        Ok(users)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An argon2id hash of `password` with a fresh random salt, in PHC string form.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// `text` (a password file) with `user`'s line set to `hash`: replaced where it was,
/// appended otherwise; every other line kept as it was.
pub fn set_user(text: &str, user: &str, hash: &str) -> Result<String, String> {
    if user.is_empty() || user.contains(':') || user.contains('\n') {
        return Err(format!(
            "{user:?}: a user name must be non-empty, without ':'"
        ));
    }
    let mut out = String::with_capacity(text.len() + hash.len() + user.len() + 2);
    let mut replaced = false;
    for line in text.lines() {
        let is_user = line
            .trim()
            .split_once(':')
            .is_some_and(|(u, _)| u == user && !line.trim().starts_with('#'));
        if is_user {
            if !replaced {
                out.push_str(&format!("{user}:{hash}\n"));
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&format!("{user}:{hash}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_others_do_not() {
        let hash = hash_password(b"s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let text = set_user("# users\n", "alice", &hash).unwrap();
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("alice", b"s3cret"));
        assert!(!file.verify("alice", b"S3cret"));
        assert!(!file.verify("bob", b"s3cret"));
    }

    #[test]
    fn setting_a_user_again_replaces_the_line() {
        let first = set_user(
            "",
            "alice",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
        )
        .unwrap();
        let both = set_user(
            &first,
            "bob",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$b3RoZXJoYXNo",
        )
        .unwrap();
        let again = set_user(
            &both,
            "alice",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$bmV3aGFzaA",
        )
        .unwrap();
        assert_eq!(again.lines().count(), 2);
        assert!(again.starts_with("alice:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$bmV3aGFzaA\nbob:"));
        assert!(set_user("", "a:b", "x").is_err());
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(PasswordFile::parse("alice").unwrap_err().contains("line 1"));
        assert!(PasswordFile::parse("\nalice:plaintext")
            .unwrap_err()
            .contains("line 2"));
        let hash = hash_password(b"x").unwrap();
        let twice = format!("alice:{hash}\nalice:{hash}\n");
        assert!(PasswordFile::parse(&twice).unwrap_err().contains("twice"));
    }
}
