//! Client assertions (RFC 7523 §2.2, `private_key_jwt`): signed afresh for
//! every fetch with a certificate's private key, or read ready-made from a
//! file (workload identity federation) and checked before it is sent.
//!
//! A signed assertion carries `iss = sub = client_id`, `aud` = the token
//! endpoint, a unique `jti`, `iat`/`nbf` now and `exp` five minutes on, and
//! the certificate's `x5t#S256` thumbprint in its header (and `x5t`, the
//! SHA-1 one, for Entra, which reads that). Before it leaves, it is
//! verified with the certificate's public key: a key that does not belong
//! to the certificate is an error naming both files, not a rejection from
//! the server.

use crate::config::ClientCertificate;
use crate::secret::ExposeSecret;
use secrecy::SecretString;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// `client_assertion_type` for a JWT assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long a signed assertion is valid (Entra accepts up to 10 minutes).
pub const LIFETIME: Duration = Duration::from_secs(300);

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Signs an assertion for `client_id` to `audience` with `c`'s key (the
/// PEM in `key_pem`). `with_x5t` adds the SHA-1 `x5t` header (Entra).
pub fn sign(
    c: &ClientCertificate,
    key_pem: &SecretString,
    client_id: &str,
    audience: &str,
    with_x5t: bool,
    now: SystemTime,
) -> Result<SecretString, String> {
    let cert_file = crate::text::path(&c.cert_path);
    if c.cert.expired_at(now) {
        return Err(format!(
            "certificate {cert_file} expired at {}: create a new one and upload it to the app registration",
            crate::timefmt::rfc3339(c.cert.not_after)
        ));
    }
    let key_from = c.key.describe();
    let key = encoding_key(c, key_pem)?;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        iss: client_id,
        sub: client_id,
        aud: audience,
        jti: format!("{:032x}", rand::random::<u128>()),
        iat: secs,
        nbf: secs,
        exp: secs.saturating_add(LIFETIME.as_secs()),
    };
    let mut header = jsonwebtoken::Header::new(c.alg.jwt());
    header.typ = Some("JWT".into());
    header.x5t_s256 = Some(c.cert.x5t_s256());
    if with_x5t {
        header.x5t = Some(c.cert.x5t());
    }
    let jwt = jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| format!("cannot sign with the key in {key_from}: {e}"))?;
    // The key must be the certificate's: check before the server does.
    let (message, signature) = jwt.rsplit_once('.').unwrap_or_default();
    verifies(c, message.as_bytes(), signature)?;
    Ok(SecretString::from(jwt))
}

/// The key in `key_pem`, read as `c`'s certificate needs it.
fn encoding_key(
    c: &ClientCertificate,
    key_pem: &SecretString,
) -> Result<jsonwebtoken::EncodingKey, String> {
    let (key_from, cert_file) = (c.key.describe(), crate::text::path(&c.cert_path));
    let pem = key_pem.expose_secret().as_bytes();
    match c.cert.key_kind {
        crate::cert::KeyKind::Rsa => jsonwebtoken::EncodingKey::from_rsa_pem(pem).map_err(|_| {
            format!("the key in {key_from} is not a PEM RSA private key (PKCS#8 \"PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\", unencrypted), which certificate {cert_file} needs")
        }),
        crate::cert::KeyKind::EcP256 => jsonwebtoken::EncodingKey::from_ec_pem(pem).map_err(|_| {
            format!("the key in {key_from} is not a PEM PKCS#8 ECDSA P-256 private key, which certificate {cert_file} needs (convert one with openssl pkcs8 -topk8 -nocrypt)")
        }),
    }
}

/// Whether `signature` over `message` verifies with `c`'s public key: the
/// error names both files when the key is not the certificate's.
fn verifies(c: &ClientCertificate, message: &[u8], signature: &str) -> Result<(), String> {
    let matches =
        jsonwebtoken::crypto::verify(signature, message, &c.cert.decoding_key(), c.alg.jwt())
            .unwrap_or(false);
    if matches {
        return Ok(());
    }
    Err(format!(
        "the key in {} does not belong to certificate {}: use the key the certificate was made with",
        c.key.describe(),
        crate::text::path(&c.cert_path)
    ))
}

/// Checks that the key in `key_pem` belongs to `c`'s certificate (for
/// `tls_client_auth`, before a handshake would fail less clearly): a
/// signature made with it verifies with the certificate's public key.
pub fn check_key(c: &ClientCertificate, key_pem: &SecretString) -> Result<(), String> {
    let key = encoding_key(c, key_pem)?;
    let message = b"tokend: does this key belong to the certificate?";
    let signature = jsonwebtoken::crypto::sign(message, &key, c.alg.jwt())
        .map_err(|e| format!("cannot sign with the key in {}: {e}", c.key.describe()))?;
    verifies(c, message, &signature)
}

/// Checks a ready-made assertion read from `from` before it is sent: it
/// must be a JWT, and one whose `exp` has not passed (the program that
/// writes it, the kubelet say, has then stopped refreshing it).
pub fn check_federated(
    assertion: &SecretString,
    from: &str,
    now: SystemTime,
) -> Result<(), String> {
    let Some(claims) = crate::jwt::claims(assertion.expose_secret().trim()) else {
        return Err(format!(
            "the client assertion in {from} is not a JWT (three base64url parts separated by dots)"
        ));
    };
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    match claims.get("exp").and_then(serde_json::Value::as_f64) {
        Some(exp) if exp <= now_secs => {
            let at = SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs_f64(exp.clamp(0.0, 4e11)))
                .map_or_else(|| exp.to_string(), crate::timefmt::rfc3339);
            Err(format!(
                "the client assertion in {from} expired at {at}: whatever writes that file (the kubelet's projected token, a CI job) has stopped refreshing it"
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::test_keys;
    use crate::config::{ClientCertificate, SigningAlg};
    use crate::secret::SecretRef;
    use std::sync::Arc;

    fn cert(kind: &str, alg: SigningAlg) -> (ClientCertificate, SecretString) {
        let (cert, key) = test_keys::shared(kind);
        from_files(cert, key, alg)
    }

    fn from_files(
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        alg: SigningAlg,
    ) -> (ClientCertificate, SecretString) {
        let c = ClientCertificate {
            cert: Arc::new(crate::cert::Certificate::load(&cert).unwrap()),
            cert_path: cert,
            key: SecretRef::File(key.clone()),
            alg,
        };
        let pem = SecretString::from(std::fs::read_to_string(key).unwrap());
        (c, pem)
    }

    fn decode_part(jwt: &str, i: usize) -> serde_json::Value {
        use base64::Engine;
        let part = jwt.split('.').nth(i).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn signs_what_rfc_7523_and_entra_ask_for() {
        for (kind, alg) in [
            ("rsa", SigningAlg::Rs256),
            ("rsa", SigningAlg::Ps256),
            ("ec", SigningAlg::Es256),
        ] {
            let (c, key) = cert(kind, alg);
            let now = SystemTime::now();
            let a = sign(&c, &key, "app-1", "https://idp/token", true, now).unwrap();
            let a = a.expose_secret();
            let header = decode_part(a, 0);
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["x5t#S256"], c.cert.x5t_s256());
            assert_eq!(header["x5t"], c.cert.x5t());
            let claims = decode_part(a, 1);
            assert_eq!(
                (claims["iss"].as_str(), claims["sub"].as_str()),
                (Some("app-1"), Some("app-1"))
            );
            assert_eq!(claims["aud"], "https://idp/token");
            let (iat, exp) = (
                claims["iat"].as_u64().unwrap(),
                claims["exp"].as_u64().unwrap(),
            );
            assert_eq!(exp - iat, 300);
            assert_eq!(claims["nbf"], claims["iat"]);
            let b = sign(&c, &key, "app-1", "https://idp/token", false, now).unwrap();
            assert_ne!(
                decode_part(b.expose_secret(), 1)["jti"],
                claims["jti"],
                "a fresh jti each time"
            );
            assert!(decode_part(b.expose_secret(), 0).get("x5t").is_none());
        }
    }

    #[test]
    fn a_key_from_another_certificate_is_caught_before_sending() {
        let (c, _) = cert("rsa", SigningAlg::Rs256);
        let (_dir, other, other_key) = test_keys::make("rsa", 30);
        let (_, other_key) = from_files(other, other_key, SigningAlg::Rs256);
        let e = sign(&c, &other_key, "a", "aud", false, SystemTime::now()).unwrap_err();
        assert!(e.contains("does not belong to certificate"), "{e}");
        let e = sign(
            &c,
            &SecretString::from("not a key"),
            "a",
            "aud",
            false,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(e.contains("is not a PEM RSA private key"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_an_error_naming_it() {
        let (c, key) = cert("rsa", SigningAlg::Rs256);
        let later = c.cert.not_after + Duration::from_secs(1);
        let e = sign(&c, &key, "a", "aud", false, later).unwrap_err();
        assert!(
            e.contains(&format!("certificate {} expired at", c.cert_path.display())),
            "{e}"
        );
    }

    #[test]
    fn a_federated_assertion_must_be_a_live_jwt() {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = |exp: u64| {
            SecretString::from(format!(
                "{}.{}.sig",
                e.encode("{}"),
                e.encode(format!(r#"{{"exp":{exp}}}"#))
            ))
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        assert!(check_federated(&jwt(2_000_000_100), "file /t", now).is_ok());
        let err = check_federated(&jwt(1_999_999_000), "file /t", now).unwrap_err();
        assert!(
            err.contains("in file /t expired at 2033-05-18T03:16:40Z"),
            "{err}"
        );
        let err = check_federated(&SecretString::from("opaque"), "file /t", now).unwrap_err();
        assert!(err.contains("is not a JWT"), "{err}");
    }
}
