//! Who may connect, and what they may publish and subscribe to.
//!
//! - [`password`]: a file of `username:argon2-hash` lines (`fleetmq passwd` writes it).
//! - [`jwt`]: JSON Web Tokens (HS256, RS256) sent as the CONNECT password; claims name
//!   the user and may carry the client's access rules.
//! - [`acl`]: allow/deny rules for publish and subscribe, with `%u` (username) and
//!   `%c` (client id) in topic patterns, checked in order, first match wins.
//! - [`Authenticator`] puts the first two together with the anonymous policy.
//!
//! No IO beyond reading the configured files at start, no tokio: verifying an argon2
//! hash takes tens of milliseconds, so callers run [`Authenticator::authenticate`] on a
//! blocking thread.

pub mod acl;
pub mod jwt;
pub mod password;

use std::sync::Arc;

pub use acl::{Access, AclConfig, AclRule, AclRules, Action, Actions, Permission, Who};
pub use jwt::{JwtConfig, JwtVerifier};
pub use password::{PasswordFile, PasswordSource};

/// A configuration that cannot work, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Why a client may not connect. The MQTT reason codes: 0x86 and 0x87.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong password, a token that does not verify.
    #[error("bad user name or password: {0}")]
    BadCredentials(String),
    /// No credentials where they are required.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
}

/// Who a client is once authenticated.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Verified (or, with no authentication configured, as the client said).
    pub username: Option<String>,
    /// Access rules the credential itself carries (a JWT claim): when present they
    /// alone decide, in place of the node's rules.
    pub acl: Option<Arc<AclRules>>,
}

/// What a client presents at CONNECT.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The common name of a client certificate the TLS layer verified, on a listener
    /// that names users by certificate.
    pub certificate_user: Option<&'a str>,
}

/// The node's authentication: password file, JWT, and whether anonymous clients
/// may connect.
#[derive(Debug, Default)]
pub struct Authenticator {
    pub allow_anonymous: bool,
    pub passwords: Option<PasswordSource>,
    pub jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// Whether any credential check is configured. Without one, every client is let in
    /// (when anonymous access is on) under the username it gives.
    pub fn checks_credentials(&self) -> bool {
        self.passwords.is_some() || self.jwt.is_some()
    }

    /// Decides whether `credentials` may connect, and as whom.
    ///
    /// A verified client certificate is enough. A password is checked as a JWT when JWT
    /// is configured and it looks like one, else against the password file. A client
    /// with no password is anonymous: let in (without a username) only when anonymous
    /// access is on; a username without a password, where passwords are checked, is
    /// refused as a bad password.
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Identity, AuthError> {
        if let Some(user) = credentials.certificate_user {
            return Ok(Identity {
                username: Some(user.to_string()),
                acl: None,
            });
        }
        if !self.checks_credentials() {
            return if self.allow_anonymous {
                Ok(Identity {
                    username: credentials.username.map(str::to_string),
                    acl: None,
                })
            } else {
                Err(AuthError::NotAuthorized(
                    "anonymous access is off and no credentials are configured".into(),
                ))
            };
        }
        let Some(password) = credentials.password else {
            return match (credentials.username, self.allow_anonymous) {
                (Some(user), _) => Err(AuthError::BadCredentials(format!(
                    "user {user:?} gave no password"
                ))),
                (None, true) => Ok(Identity::default()),
                (None, false) => Err(AuthError::NotAuthorized("anonymous access is off".into())),
            };
        };
        if let Some(jwt) = &self.jwt {
            if jwt::looks_like_a_token(password) {
                return jwt.verify(password, credentials.username);
            }
        }
        match (&self.passwords, credentials.username) {
            (Some(passwords), Some(user)) => {
                if passwords.current().verify(user, password) {
                    Ok(Identity {
                        username: Some(user.to_string()),
                        acl: None,
                    })
                } else {
                    Err(AuthError::BadCredentials(format!(
                        "user {user:?}: unknown, or the password does not match"
                    )))
                }
            }
            (Some(_), None) => Err(AuthError::BadCredentials(
                "a password without a user name".into(),
            )),
            (None, _) => Err(AuthError::BadCredentials(
                "the password is not a valid token".into(),
            )),
        }
    }
}
