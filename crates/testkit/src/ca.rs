//! TLS for the tests: the client configuration a node without a CA file has.

/// A client configuration trusting the public roots only, as a node without a CA file has.
///
/// # Panics
///
/// If rustls refuses the configuration, which would be a bug in the `tls` crate.
#[allow(clippy::expect_used)]
pub fn public_tls() -> tls::ClientTls {
    tls::ClientTls::public().expect("a TLS configuration with the public roots")
}
