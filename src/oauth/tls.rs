//! TLS for the token endpoint, set up here rather than by reqwest's
//! builder: the system's trust store (rustls-platform-verifier, as reqwest
//! would use it) plus a source's `ca_file`, and for `tls_client_auth` the
//! client certificate as it is.
//!
//! The certificate and its key are handed to rustls as a ready
//! `CertifiedKey`, so rustls does not parse the certificate itself: an
//! X.509 v1 certificate (what `openssl x509 -req` makes without
//! `-extfile`, the most common how-to) is presented, and the server, not
//! tokend, judges it. That the key belongs to the certificate is checked
//! first ([`super::assertion::check_key`]), so a mismatch names both files
//! instead of failing the handshake. Every failure names the file and the
//! reason.

use crate::config::{CaFile, ClientCertificate};
use crate::secret::ExposeSecret;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use secrecy::SecretString;
use std::sync::Arc;

/// A client configuration that trusts the system's CAs and `ca`'s, and
/// presents `identity` (a certificate and the PEM of its key) when the
/// server asks for a client certificate.
pub fn client_config(
    ca: Option<&CaFile>,
    identity: Option<(&ClientCertificate, &SecretString)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = match ca {
        None => rustls_platform_verifier::Verifier::new(provider.clone())
            .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?,
        Some(ca) => {
            let file = crate::text::path(&ca.path);
            let roots = certificates(&ca.pem).map_err(|e| format!("ca_file {file} {e}"))?;
            rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
                .map_err(|e| format!("ca_file {file} cannot be used as a CA: {e}"))?
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("no TLS version to offer: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_cert_resolver(Arc::new(Presented(certified_key(cert, key, &provider)?))),
    };
    // reqwest is built for HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate in a PEM file.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not a readable PEM file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// The certificate (with any chain in its file) and its key, for rustls.
fn certified_key(
    c: &ClientCertificate,
    key_pem: &SecretString,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    super::assertion::check_key(c, key_pem)?;
    let chain = certificates(&c.cert.pem)
        .map_err(|e| format!("certificate {} {e}", crate::text::path(&c.cert_path)))?;
    let key_from = c.key.describe();
    let der = PrivateKeyDer::from_pem_slice(key_pem.expose_secret().as_bytes()).map_err(|_| {
        format!(
            "the key in {key_from} is not an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)"
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("the key in {key_from} cannot sign a TLS handshake: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The one client certificate, offered whatever the server hints.
#[derive(Debug)]
struct Presented(Arc<CertifiedKey>);

impl ResolvesClientCert for Presented {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let ca = CaFile {
            path: PathBuf::from("/etc/tokend/ca.pem"),
            pem: Arc::new(b"not a certificate".to_vec()),
        };
        let e = client_config(Some(&ca), None).unwrap_err();
        assert_eq!(e, "ca_file /etc/tokend/ca.pem holds no PEM certificate");
    }
}
