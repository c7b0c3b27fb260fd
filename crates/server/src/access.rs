//! Authentication at CONNECT and access rules on PUBLISH and SUBSCRIBE, as the
//! connection task applies them (`fleetmq-auth` decides; this counts and answers).

use std::sync::atomic::{AtomicU64, Ordering};

use fleetmq_auth::{Authenticator, ConfigError};
use tracing::{info, warn};

/// Reads the password file again (SIGHUP, `POST /api/v1/auth/reload`): the users now
/// in force, or `None` when no password file is configured. A file that cannot be
/// read leaves the users as they were.
pub fn reload_passwords(auth: &Authenticator, cause: &str) -> Result<Option<usize>, ConfigError> {
    let Some(passwords) = &auth.passwords else {
        return Ok(None);
    };
    match passwords.reload() {
        Ok(users) => {
            info!(cause, users, file = %passwords.path().display(), "password file reloaded");
            Ok(Some(users))
        }
        Err(error) => {
            warn!(cause, %error, "password file not reloaded; the users stay as they were");
            Err(error)
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AccessMetrics {
    /// CONNECTs refused with 0x86 (bad user name or password).
    pub bad_credentials: AtomicU64,
    /// CONNECTs refused with 0x87 (not authorized: anonymous, or the will's topic).
    pub not_authorized: AtomicU64,
    /// PUBLISHes the access rules refused.
    pub denied_publish: AtomicU64,
    /// Subscription filters the access rules refused.
    pub denied_subscribe: AtomicU64,
}

impl AccessMetrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP fleetmq_auth_refused_total CONNECTs refused by authentication, by reason.\n\
             # TYPE fleetmq_auth_refused_total counter\n\
             fleetmq_auth_refused_total{{reason=\"bad_credentials\"}} {}\n\
             fleetmq_auth_refused_total{{reason=\"not_authorized\"}} {}",
            load(&self.bad_credentials),
            load(&self.not_authorized)
        );
        let _ = writeln!(
            out,
            "# HELP fleetmq_acl_denied_total Requests the access rules refused, by action.\n\
             # TYPE fleetmq_acl_denied_total counter\n\
             fleetmq_acl_denied_total{{action=\"publish\"}} {}\n\
             fleetmq_acl_denied_total{{action=\"subscribe\"}} {}",
            load(&self.denied_publish),
            load(&self.denied_subscribe)
        );
    }
}
