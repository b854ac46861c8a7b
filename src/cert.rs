//! X.509 client certificates: read and described when the config loads
//! (subject, thumbprints, `notAfter`, key type), and checked against their
//! private key when the key is read (at fetch time, like any secret).
//!
//! Parsing is `x509-parser`'s; signing and verifying are `jsonwebtoken`'s.
//! A key matches its certificate when a signature made with the key
//! verifies with the certificate's public key.

use crate::problem::Problem;
use base64::Engine;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Largest certificate file read (a chain of a few certificates).
pub const MAX_CERT_FILE: u64 = 1024 * 1024;

/// The kind of public key a certificate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    /// ECDSA on P-256.
    EcP256,
}

/// A client certificate, as read from its PEM file.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The whole PEM file (the certificate and any chain after it), for TLS.
    pub pem: Vec<u8>,
    /// DER of the first certificate: the client's own.
    pub der: Vec<u8>,
    pub subject: String,
    pub not_after: SystemTime,
    pub key_kind: KeyKind,
    /// The subject public key (PKCS#1 for RSA, the curve point for EC).
    public_key: Vec<u8>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("thumbprint", &self.sha1_hex())
            .field("not_after", &crate::timefmt::rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads and parses the first certificate of the PEM file at `path`.
    pub fn load(path: &Path) -> Result<Certificate, Problem> {
        let how = "give the certificate as a PEM file (-----BEGIN CERTIFICATE-----), e.g. from openssl req -x509 … -out cert.pem".to_string();
        let pem = crate::files::read_regular(path, MAX_CERT_FILE).map_err(|e| {
            Problem::new(
                format!("cannot read certificate {}: {e}", crate::text::path(path)),
                Some(how.clone()),
            )
        })?;
        Certificate::parse(&pem).map_err(|e| {
            Problem::new(
                format!(
                    "{} is not a usable certificate: {e}",
                    crate::text::path(path)
                ),
                Some(how),
            )
        })
    }

    /// Parses PEM text whose first block is a certificate.
    pub fn parse(pem: &[u8]) -> Result<Certificate, String> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem)
            .map_err(|e| format!("no PEM certificate found ({e})"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "its first PEM block is {}, not CERTIFICATE",
                block.label
            ));
        }
        let (_, x509) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("the certificate does not parse ({e})"))?;
        let spki = x509.public_key();
        let key_kind = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(_)) => KeyKind::Rsa,
            Ok(x509_parser::public_key::PublicKey::EC(_))
                if spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .is_some_and(|oid| oid.to_id_string() == "1.2.840.10045.3.1.7") =>
            {
                KeyKind::EcP256
            }
            _ => {
                return Err(
                    "its key is neither RSA nor ECDSA P-256, the kinds tokend signs with".into(),
                )
            }
        };
        let secs = x509.validity().not_after.timestamp();
        let not_after = u64::try_from(secs)
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Certificate {
            pem: pem.to_vec(),
            subject: x509.subject().to_string(),
            not_after,
            key_kind,
            public_key: spki.subject_public_key.data.to_vec(),
            der: block.contents,
        })
    }

    /// SHA-1 of the DER, base64url: the JWS `x5t` header (Entra reads it).
    pub fn x5t(&self) -> String {
        use sha1::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&self.der))
    }

    /// SHA-256 of the DER, base64url: the JWS `x5t#S256` header.
    pub fn x5t_s256(&self) -> String {
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&self.der))
    }

    /// SHA-1 thumbprint in upper-case hex, as the Entra portal shows it.
    pub fn sha1_hex(&self) -> String {
        use sha1::Digest;
        sha1::Sha1::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    /// True once `now` is past `notAfter`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// The key that verifies signatures made with this certificate's key.
    pub fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        match self.key_kind {
            KeyKind::Rsa => jsonwebtoken::DecodingKey::from_rsa_der(&self.public_key),
            KeyKind::EcP256 => jsonwebtoken::DecodingKey::from_ec_der(&self.public_key),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_keys {
    //! A certificate and key pair made once per test run with openssl, for
    //! the signing tests.

    use std::path::PathBuf;
    use std::process::Command;

    /// A certificate and key of `kind` ("rsa" or "ec"), valid 30 days, made
    /// once per test run and shared: RSA key generation is slow.
    pub fn shared(kind: &str) -> (PathBuf, PathBuf) {
        static RSA: std::sync::OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> =
            std::sync::OnceLock::new();
        static EC: std::sync::OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> =
            std::sync::OnceLock::new();
        let cell = if kind == "rsa" { &RSA } else { &EC };
        let (_, cert, key) = cell.get_or_init(|| make(kind, 30));
        (cert.clone(), key.clone())
    }

    /// Writes `cert.pem` and `key.pem` (kind: "rsa" or "ec") into a new
    /// temp dir with openssl; returns the dir and both paths.
    pub fn make(kind: &str, days: i32) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let newkey = match kind {
            "rsa" => "rsa:2048",
            _ => "ec",
        };
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-nodes", "-newkey", newkey]);
        if kind != "rsa" {
            cmd.args(["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        }
        let out = cmd
            .args(["-subj", "/CN=tokend-test", "-days"])
            .arg(days.to_string())
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (dir, cert, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_certificate() {
        let (cert, _key) = test_keys::shared("rsa");
        let c = Certificate::load(&cert).unwrap();
        assert_eq!(c.key_kind, KeyKind::Rsa);
        assert_eq!(c.subject, "CN=tokend-test");
        let left = c.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(29 * 86_400), "{left:?}");
        assert_eq!(c.sha1_hex().len(), 40);
        assert_eq!(c.x5t().len(), 27);
        assert_eq!(c.x5t_s256().len(), 43);
        assert!(!format!("{c:?}").contains("BEGIN"));
        let (cert, _key) = test_keys::shared("ec");
        assert_eq!(Certificate::load(&cert).unwrap().key_kind, KeyKind::EcP256);
    }

    #[test]
    fn a_key_or_garbage_is_not_a_certificate() {
        let (_cert, key) = test_keys::shared("rsa");
        let e = Certificate::load(&key).unwrap_err();
        assert!(e.message.contains("is not a usable certificate"), "{e:?}");
        let e = Certificate::load(Path::new("/nonexistent.pem")).unwrap_err();
        assert!(
            e.message
                .starts_with("cannot read certificate /nonexistent.pem"),
            "{e:?}"
        );
    }
}
