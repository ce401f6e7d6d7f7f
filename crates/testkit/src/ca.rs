//! [`TestCa`]: a certificate authority made up inside a test, and the server certificates it (or
//! nobody) issues, for the loopback fakes' TLS mode ([`ServerTls`]).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    ServerConfig,
};
use tokio_rustls::TlsAcceptor;

/// A private certificate authority, generated when created (ring keys, ECDSA P-256).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// The kind of certificate a TLS fake presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// Issued by the CA, valid now.
    Valid,
    /// Issued by the CA, expired in 2001.
    Expired,
    /// Signed by its own key: no CA vouches for it.
    SelfSigned,
}

/// The server side of a fake's TLS: its certificate and key. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA with a fresh key.
    ///
    /// # Panics
    ///
    /// If rcgen cannot generate the key or the certificate.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name("testkit CA");
        let key = KeyPair::generate().expect("generate the test CA's key");
        let issuer =
            CertifiedIssuer::self_signed(params, key).expect("sign the test CA's certificate");
        Self { issuer }
    }

    /// The CA's certificate as PEM, as an operator's CA file holds it.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client configuration trusting the public roots and this CA.
    ///
    /// # Panics
    ///
    /// If the CA's own certificate is refused, which would be a bug in this module.
    #[allow(clippy::expect_used)]
    pub fn client_tls(&self) -> tls::ClientTls {
        tls::ClientTls::with_ca_pem(self.pem().as_bytes()).expect("trust the test CA")
    }

    /// A server certificate of kind `leaf` for `names` (host names or IP addresses, as the
    /// client's URL will name the server), with its key.
    ///
    /// # Panics
    ///
    /// If a name is not a valid DNS name or IP address, or rcgen or rustls refuses the
    /// certificate.
    #[allow(clippy::expect_used)]
    pub fn server(&self, names: &[&str], leaf: Leaf) -> ServerTls {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("valid server names");
        params.distinguished_name = name("testkit server");
        if leaf == Leaf::Expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("generate a server key");
        let cert = match leaf {
            Leaf::Valid | Leaf::Expired => params.signed_by(&key, &self.issuer),
            Leaf::SelfSigned => params.self_signed(&key),
        }
        .expect("sign the server certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
            .expect("a server configuration for the certificate");
        ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)) }
    }
}

/// A client configuration trusting the public roots only, as a node without a CA file has.
///
/// # Panics
///
/// If rustls refuses the configuration, which would be a bug in the `tls` crate.
#[allow(clippy::expect_used)]
pub fn public_tls() -> tls::ClientTls {
    tls::ClientTls::public().expect("a TLS configuration with the public roots")
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
