//! JSON Web Tokens as the CONNECT password: HS256 with a shared secret or RS256 with
//! the issuer's public key. The signature, `exp` (required), `nbf`, and where
//! configured `iss` and `aud` are checked. A claim (default `sub`) names the user; an
//! optional claim (default `acl`) carries the client's access rules:
//! `{"publish": ["devices/%u/#"], "subscribe": ["commands/%u/#"]}`, patterns the client
//! may use, nothing else.

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::acl::{AclRule, AclRules, Action, Permission};
use crate::{AuthError, ConfigError, Identity};

/// `[auth.jwt]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256: the shared secret, inline or in a file (its content, trimmed).
    pub hs256_secret: Option<String>,
    pub hs256_secret_file: Option<PathBuf>,
    /// RS256: the signer's public key, PEM.
    pub rs256_public_key_file: Option<PathBuf>,
    /// The claim that names the user.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim with the client's access rules; absent in a token: the node's rules
    /// apply.
    #[serde(default = "default_acl_claim")]
    pub acl_claim: String,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

fn default_username_claim() -> String {
    "sub".into()
}

fn default_acl_claim() -> String {
    "acl".into()
}

fn default_leeway() -> u64 {
    30
}

/// Checks tokens with the configured keys.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    config: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the keys; errors name the key under `key` (e.g. `auth.jwt`).
    pub fn new(key: &str, config: &JwtConfig) -> Result<JwtVerifier, ConfigError> {
        let name = |field: &str| format!("{key}.{field}");
        let secret = match (&config.hs256_secret, &config.hs256_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    name("hs256_secret_file"),
                    "give hs256_secret or hs256_secret_file, not both",
                ))
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        ConfigError::invalid(
                            name("hs256_secret_file"),
                            format!("{}: {e}", path.display()),
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(ConfigError::invalid(
                name("hs256_secret"),
                "must be at least 32 bytes (RFC 7518 asks for the hash's size)",
            ));
        }
        let rs256 = match &config.rs256_public_key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::invalid(
                        name("rs256_public_key_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    ConfigError::invalid(
                        name("rs256_public_key_file"),
                        format!("{}: not a PEM RSA public key: {e}", path.display()),
                    )
                })?)
            }
            None => None,
        };
        let hs256 = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
        if hs256.is_none() && rs256.is_none() {
            return Err(ConfigError::invalid(
                key,
                "needs hs256_secret, hs256_secret_file or rs256_public_key_file",
            ));
        }
        Ok(JwtVerifier {
            hs256,
            rs256,
            config: config.clone(),
        })
    }

    /// Verifies `token`; the CONNECT's `username`, when given, must be the token's.
    pub fn verify(&self, token: &[u8], username: Option<&str>) -> Result<Identity, AuthError> {
        let bad = |why: String| AuthError::BadCredentials(why);
        let token = std::str::from_utf8(token).map_err(|_| bad("the token is not text".into()))?;
        let header = decode_header(token).map_err(|e| bad(format!("token header: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            bad(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_seconds;
        validation.validate_nbf = true;
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = decode::<Value>(token, key, &validation)
            .map_err(|e| bad(format!("token: {e}")))?
            .claims;
        let user = claims
            .get(&self.config.username_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad(format!(
                    "the token has no {:?} claim",
                    self.config.username_claim
                ))
            })?;
        // Clients that must send a user name to send a password (MQTT 3.1.1) send "".
        if username.is_some_and(|given| !given.is_empty() && given != user) {
            return Err(bad(format!(
                "the token is for {user:?}, not the CONNECT's user name"
            )));
        }
        let acl = match claims.get(&self.config.acl_claim) {
            None => None,
            Some(value) => {
                Some(Arc::new(acl_from_claim(value).map_err(|e| {
                    bad(format!("the {:?} claim: {e}", self.config.acl_claim))
                })?))
            }
        };
        Ok(Identity {
            username: Some(user.to_string()),
            acl,
        })
    }
}

/// Whether `password` has the shape of a compact JWS: three base64url parts.
pub fn looks_like_a_token(password: &[u8]) -> bool {
    let parts: Vec<&[u8]> = password.split(|b| *b == b'.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && password
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// `{"publish": [...], "subscribe": [...]}`: allow rules, then deny everything else.
fn acl_from_claim(value: &Value) -> Result<AclRules, String> {
    let object = value.as_object().ok_or("must be an object")?;
    let mut rules = Vec::new();
    for (field, action) in [
        ("publish", Action::Publish),
        ("subscribe", Action::Subscribe),
    ] {
        let Some(list) = object.get(field) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| format!("{field} must be a list of topic patterns"))?;
        for pattern in list {
            let pattern = pattern
                .as_str()
                .ok_or_else(|| format!("{field}: {pattern} is not a string"))?;
            rules.push(
                AclRule::new(Permission::Allow, action.into(), pattern)
                    .map_err(|e| format!("{field}: {e}"))?,
            );
        }
    }
    if let Some(other) = object.keys().find(|k| *k != "publish" && *k != "subscribe") {
        return Err(format!("unknown field {other:?} (publish, subscribe)"));
    }
    Ok(AclRules::new(rules, Permission::Deny))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        let config: JwtConfig = toml::from_str(&format!("hs256_secret = \"{SECRET}\"")).unwrap();
        JwtVerifier::new("auth.jwt", &config).unwrap()
    }

    fn token(claims: Value) -> Vec<u8> {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
        .into_bytes()
    }

    fn in_an_hour() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    #[test]
    fn a_good_token_names_the_user_and_carries_its_rules() {
        let t = token(json!({"sub": "dev-7", "exp": in_an_hour(),
            "acl": {"publish": ["devices/%u/#"], "subscribe": ["commands/%u"]}}));
        assert!(looks_like_a_token(&t));
        let id = verifier().verify(&t, None).unwrap();
        assert_eq!(id.username.as_deref(), Some("dev-7"));
        let acl = id.acl.unwrap();
        let who = crate::acl::Who {
            username: Some("dev-7"),
            client_id: "c1",
        };
        assert!(acl
            .check(Action::Publish, "devices/dev-7/temp", who)
            .allowed());
        assert!(!acl
            .check(Action::Publish, "devices/dev-8/temp", who)
            .allowed());
        assert!(acl
            .check(Action::Subscribe, "commands/dev-7", who)
            .allowed());
        assert!(!acl.check(Action::Subscribe, "commands/#", who).allowed());
    }

    #[test]
    fn bad_tokens_are_bad_credentials() {
        let v = verifier();
        let expired = token(json!({"sub": "dev-7", "exp": 1000}));
        assert!(matches!(
            v.verify(&expired, None),
            Err(AuthError::BadCredentials(_))
        ));
        let no_exp = token(json!({"sub": "dev-7"}));
        assert!(v.verify(&no_exp, None).is_err());
        let other_key = encode(
            &Header::default(),
            &json!({"sub": "dev-7", "exp": in_an_hour()}),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert!(v.verify(other_key.as_bytes(), None).is_err());
        let good = token(json!({"sub": "dev-7", "exp": in_an_hour()}));
        assert!(
            v.verify(&good, Some("dev-8")).is_err(),
            "the CONNECT names another user"
        );
        assert!(v.verify(&good, Some("dev-7")).is_ok());
        let no_sub = token(json!({"exp": in_an_hour()}));
        assert!(v.verify(&no_sub, None).is_err());
        assert!(!looks_like_a_token(b"hunter2"));
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let short: JwtConfig = toml::from_str("hs256_secret = \"short\"").unwrap();
        let err = JwtVerifier::new("auth.jwt", &short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.jwt.hs256_secret"), "{err}");
        let none: JwtConfig = toml::from_str("issuer = \"x\"").unwrap();
        let err = JwtVerifier::new("auth.jwt", &none).unwrap_err().to_string();
        assert!(
            err.contains("auth.jwt") && err.contains("rs256_public_key_file"),
            "{err}"
        );
    }
}
