//! The TLS client configuration every outbound connection of the node shares: chain RPC
//! and websocket, executors and ML nodes. One [`ClientTls`], built once at start-up, is handed to
//! every adapter, so a bad CA certificate stops the node before it connects anywhere and never
//! shows up as a failed request.
//!
//! - rustls on the `ring` provider, passed to each configuration: nothing process-wide is
//!   installed;
//! - trusted roots: Mozilla's (the `webpki-roots` crate, compiled in: the OS certificate store is
//!   never read), plus the certificates of an operator's private CA, given as PEM text. The crate
//!   reads no file; the binary reads the CA file it is configured with.

use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer},
    ClientConfig, RootCertStore,
};

/// What can go wrong building a [`ClientTls`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The PEM text holds no `CERTIFICATE` block.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// A PEM block could not be decoded.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// A certificate cannot serve as a trust anchor.
    #[error("certificate {index} (counting from 1) is unusable: {reason}")]
    Certificate {
        /// Its position in the PEM text.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The client side of TLS: which roots a server's certificate must chain to, on the `ring`
/// provider. Cheap to clone: clones share one `rustls::ClientConfig`.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trusts the public roots only.
    pub fn public() -> Result<Self> {
        Self::with_roots(public_roots())
    }

    /// Trusts the public roots and every certificate in `pem` (one or more `CERTIFICATE` blocks;
    /// other blocks are skipped). Text holding no certificate is refused, so that a wrong file
    /// is found at start-up.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self> {
        let mut roots = public_roots();
        let mut added = 0;
        for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|err| Error::Pem(err.to_string()))?;
            roots
                .add(cert)
                .map_err(|err| Error::Certificate { index: index + 1, reason: err.to_string() })?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::NoCertificate);
        }
        Self::with_roots(roots)
    }

    fn with_roots(roots: RootCertStore) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::Config(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { config: Arc::new(config) })
    }

    /// The rustls configuration, for clients other than reqwest (the websocket).
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// A reqwest client builder speaking TLS with this configuration. Every reqwest client of
    /// the workspace starts here: the workspace's reqwest has no crypto provider of its own, and
    /// a client built without this configuration panics.
    pub fn http_client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().tls_backend_preconfigured(ClientConfig::clone(&self.config))
    }
}

fn public_roots() -> RootCertStore {
    RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

/// Whether `err`, or an error it wraps, is a server certificate refused because it chains to
/// no root this node trusts (rustls's `UnknownIssuer`, self-signed leaves included). The
/// certificate may be sound under a CA this node was not given, so the failure is the node's
/// to fix (`tls.ca_file`) rather than the peer's; an expired certificate or one for another
/// host is the peer's.
pub fn is_untrusted_issuer(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(cause) = current {
        if matches!(
            cause.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        ) {
            return true;
        }
        // An I/O error names the source of the error it wraps, not that error: step into it.
        current = match cause.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner),
            None => cause.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_issuer_is_found_inside_io_errors() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown.clone());
        assert!(is_untrusted_issuer(&unknown));
        assert!(is_untrusted_issuer(&wrapped));
        let twice = std::io::Error::other(wrapped);
        assert!(is_untrusted_issuer(&twice));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert!(!is_untrusted_issuer(&std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            expired
        )));
        assert!(!is_untrusted_issuer(&std::io::Error::other("refused")));
    }

    /// A CA certificate and its key, as PEM.
    fn ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn several_certificates_are_read_and_other_blocks_skipped() {
        ClientTls::public().unwrap();
        let ((first, key), (second, _)) = (ca(), ca());
        ClientTls::with_ca_pem(format!("{first}{key}\n{second}").as_bytes()).unwrap();
    }

    #[test]
    fn text_without_a_usable_certificate_is_refused() {
        assert_eq!(ClientTls::with_ca_pem(b"").unwrap_err(), Error::NoCertificate);
        assert_eq!(ClientTls::with_ca_pem(b"not pem at all").unwrap_err(), Error::NoCertificate);
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(ClientTls::with_ca_pem(broken.as_bytes()), Err(Error::Pem(_))));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = ClientTls::with_ca_pem(format!("{}{garbage}", ca().0).as_bytes()).unwrap_err();
        assert!(matches!(err, Error::Certificate { index: 2, .. }), "{err}");
    }

    #[test]
    fn the_reqwest_backend_accepts_the_configuration() {
        // A rustls version other than reqwest's would be an unknown backend, refused at build.
        ClientTls::public().unwrap().http_client_builder().build().unwrap();
    }
}
