use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::Error;
use crate::mint::b64url;

/// An RSA-2048 signing key with its key id (`kid`).
///
/// The public half is published as a JWK ([`TestKey::jwk`]); the private half
/// can be saved and reloaded as PKCS#8 DER.
pub struct TestKey {
    kid: String,
    pair: KeyPair,
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl TestKey {
    /// Generates a fresh RSA-2048 key.
    ///
    /// # Panics
    ///
    /// If the crypto library cannot generate a key, which means the process
    /// has no usable randomness; [`TestKey::try_generate`] returns that as an
    /// error instead.
    pub fn generate(kid: impl Into<String>) -> TestKey {
        match TestKey::try_generate(kid) {
            Ok(key) => key,
            Err(err) => panic!("{err}"),
        }
    }

    /// Generates a fresh RSA-2048 key, reporting a crypto library failure.
    pub fn try_generate(kid: impl Into<String>) -> Result<TestKey, Error> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| Error::KeyGeneration)?;
        TestKey::from_pair(kid.into(), pair).map_err(|_| Error::KeyGeneration)
    }

    /// Loads a key from PKCS#8 DER (as written by [`TestKey::to_pkcs8_der`]).
    pub fn from_pkcs8_der(kid: impl Into<String>, der: &[u8]) -> Result<TestKey, Error> {
        let kid = kid.into();
        match KeyPair::from_pkcs8(der) {
            Ok(pair) => TestKey::from_pair(kid, pair),
            Err(source) => Err(Error::InvalidKey { kid, source }),
        }
    }

    fn from_pair(kid: String, pair: KeyPair) -> Result<TestKey, Error> {
        let invalid = |kid: &str| Error::KeyEncoding {
            kid: kid.to_owned(),
        };
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| invalid(&kid))?;
        let public = pair.public_key();
        let spki: PublicKeyX509Der<'static> = public.as_der().map_err(|_| invalid(&kid))?;
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        Ok(TestKey {
            pkcs8: pkcs8.as_ref().to_vec(),
            spki: spki.as_ref().to_vec(),
            kid,
            pair,
            n,
            e,
        })
    }

    /// The key id, as published in the JWKS and put in token headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK:
    /// `{"kty":"RSA","alg":"RS256","use":"sig","kid":…,"n":…,"e":…}`.
    pub fn jwk(&self) -> serde_json::Value {
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": b64url(&self.n),
            "e": b64url(&self.e),
        })
    }

    /// The public modulus `n`, big-endian without leading zeros.
    pub fn modulus(&self) -> &[u8] {
        &self.n
    }

    /// The public exponent `e`, big-endian without leading zeros.
    pub fn exponent(&self) -> &[u8] {
        &self.e
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// The public key as a SubjectPublicKeyInfo PEM
    /// (`-----BEGIN PUBLIC KEY-----`), the bytes an HS256 key-confusion attack
    /// uses as its HMAC secret.
    pub fn public_key_pem(&self) -> String {
        let body = STANDARD.encode(&self.spki);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        // A base64 string is ASCII, so every 64-byte chunk is valid UTF-8.
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The private key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.pkcs8.clone()
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 and SHA-256 (JWS `RS256`).
    ///
    /// # Panics
    ///
    /// If the crypto library fails to sign with a key it generated or
    /// accepted, which does not happen short of memory exhaustion.
    pub fn sign_rs256(&self, message: &[u8]) -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut signature = vec![0; self.pair.public_modulus_len()];
        if self
            .pair
            .sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
            .is_err()
        {
            panic!("rs256 signing failed for kid {:?}", self.kid);
        }
        signature
    }
}

impl fmt::Debug for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("n", &b64url(&self.n))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let key = TestKey::generate("k");
        let again = TestKey::from_pkcs8_der("k2", &key.to_pkcs8_der()).unwrap();
        assert_eq!(again.kid(), "k2");
        assert_eq!(key.jwk()["n"], again.jwk()["n"]);
        assert_eq!(key.jwk()["e"], "AQAB");
        assert_eq!(key.modulus().len(), 256);
    }

    #[test]
    fn garbage_pkcs8_is_an_error() {
        let err = TestKey::from_pkcs8_der("bad", b"not a key").unwrap_err();
        assert!(matches!(err, Error::InvalidKey { ref kid, .. } if kid == "bad"));
    }

    #[test]
    fn pem_is_wrapped_spki() {
        let key = TestKey::generate("k");
        let pem = key.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(STANDARD.decode(body).unwrap(), key.public_key_der());
    }

    #[test]
    fn debug_does_not_show_the_private_key() {
        let key = TestKey::generate("k");
        let shown = format!("{key:?}");
        assert!(shown.contains("\"k\""));
        assert!(!shown.contains(&b64url(&key.to_pkcs8_der())[..40]));
    }
}
