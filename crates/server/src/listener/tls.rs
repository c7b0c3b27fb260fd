//! TLS for MQTT and secure WebSocket listeners (rustls with the `ring` provider):
//! the server certificate chain and key from PEM files, optional client certificates
//! verified against a CA (mutual TLS), and the client certificate's common name as the
//! MQTT username where configured.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{invalid, ConfigError, TlsConfig};

/// A listener's TLS side, built once from its configuration.
#[derive(Clone)]
pub struct TlsSettings {
    pub acceptor: TlsAcceptor,
    /// The client certificate's common name becomes the MQTT username.
    pub cn_as_username: bool,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cn_as_username", &self.cn_as_username)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads the files `config` names; errors name the key (`key` is the table, e.g.
    /// `listeners[1].tls`) and the problem.
    pub fn load(key: &str, config: &TlsConfig) -> Result<TlsSettings, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&format!("{key}.cert_file"), &config.cert_file)?;
        let key_der = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
            invalid(
                &format!("{key}.key_file"),
                format!(
                    "{}: no PEM private key read: {e}",
                    config.key_file.display()
                ),
            )
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(key, e.to_string()))?;
        let builder = match &config.client_ca_file {
            Some(ca_file) => {
                let ca_key = format!("{key}.client_ca_file");
                let mut roots = RootCertStore::empty();
                for cert in read_certs(&ca_key, ca_file)? {
                    roots
                        .add(cert)
                        .map_err(|e| invalid(&ca_key, format!("{}: {e}", ca_file.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if config.require_client_cert {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                }
                .map_err(|e| invalid(&ca_key, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None if config.require_client_cert => {
                return Err(invalid(
                    &format!("{key}.require_client_cert"),
                    "needs client_ca_file, the CA that signs the client certificates",
                ))
            }
            None if config.cn_as_username => {
                return Err(invalid(
                    &format!("{key}.cn_as_username"),
                    "needs client_ca_file: only a verified client certificate names a user",
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let server = builder.with_single_cert(certs, key_der).map_err(|e| {
            invalid(
                &format!("{key}.key_file"),
                format!("does not go with cert_file: {e}"),
            )
        })?;
        Ok(TlsSettings {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            cn_as_username: config.cn_as_username,
        })
    }
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// The common name of a verified client certificate (the first of the chain).
pub fn common_name(chain: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = chain?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate and key made by the openssl command-line tool.
    fn openssl_cert(dir: &Path, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", &format!("/CN={cn}")])
            .output()
            .expect("run openssl (scripts/install-test-deps.sh installs it)");
        assert!(status.status.success(), "{status:?}");
        (cert, key)
    }

    #[test]
    fn the_common_name_is_read_from_the_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = openssl_cert(dir.path(), "device-7");
        let chain = read_certs("k", &cert).unwrap();
        assert_eq!(common_name(Some(&chain)).as_deref(), Some("device-7"));
        assert_eq!(common_name(None), None);
    }

    #[test]
    fn settings_load_and_refuse_what_cannot_work() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_cert(dir.path(), "localhost");
        let config = |ca: Option<std::path::PathBuf>, require: bool, cn: bool| TlsConfig {
            cert_file: cert.clone(),
            key_file: key.clone(),
            client_ca_file: ca,
            require_client_cert: require,
            cn_as_username: cn,
        };
        TlsSettings::load("t", &config(None, false, false)).unwrap();
        TlsSettings::load("t", &config(Some(cert.clone()), true, true)).unwrap();
        let err = TlsSettings::load("t", &config(None, true, false)).unwrap_err();
        assert!(err.to_string().contains("t.require_client_cert"), "{err}");
        let err = TlsSettings::load("t", &config(None, false, true)).unwrap_err();
        assert!(err.to_string().contains("t.cn_as_username"), "{err}");
        let mut swapped = config(None, false, false);
        swapped.key_file = cert.clone();
        let err = TlsSettings::load("t", &swapped).unwrap_err();
        assert!(err.to_string().contains("t.key_file"), "{err}");
    }
}
