//! Access tokens: short-lived JWTs (`typ` `at+jwt`) signed with a rotating key ring.
//!
//! The algorithm is pinned per key: a token is checked only with the algorithm its `kid` was
//! created for, so `alg=none`, HS/EdDSA confusion and attacker-chosen `jku`/`x5u`/`jwk` headers
//! have nothing to work with (those headers are never read). Expiry is checked against the
//! domain [`Clock`](super::clock::Clock), not the wall clock inside the JWT library.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::secret::{b64, fill_random};

/// The `typ` header of access tokens (RFC 9068).
pub const TYP: &str = "at+jwt";
/// Longest accepted token; larger ones are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A signing algorithm tessera can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlg {
    /// Ed25519; public keys are published in the JWKS.
    EdDSA,
    /// HMAC-SHA256; nothing is published (the key is symmetric).
    HS256,
}

impl SigningAlg {
    fn jwt(self) -> Algorithm {
        match self {
            Self::EdDSA => Algorithm::EdDSA,
            Self::HS256 => Algorithm::HS256,
        }
    }
}

impl std::fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EdDSA => "EdDSA",
            Self::HS256 => "HS256",
        })
    }
}

impl std::str::FromStr for SigningAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "EdDSA" | "eddsa" | "Ed25519" => Ok(Self::EdDSA),
            "HS256" | "hs256" => Ok(Self::HS256),
            _ => Err(format!(
                "unknown signing algorithm {s:?}; expected EdDSA or HS256"
            )),
        }
    }
}

/// One key as persisted: private material in base64url (PKCS#8 for Ed25519, raw for HS256).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// Key id (`kid`).
    pub kid: String,
    /// Pinned algorithm.
    pub alg: SigningAlg,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// When it stopped signing (Unix ms); `None` for the active key.
    pub retired_at: Option<i64>,
    /// Private key material, base64url.
    pub private: String,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// Every server secret: signing keys plus a MAC key (refresh-token tags and successors, CSRF).
/// Generated on first start, never hard-coded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRing {
    /// Signing keys, the active one last.
    pub keys: Vec<StoredKey>,
    /// 256-bit MAC key, base64url.
    pub mac_key: String,
}

/// Key material could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("signing key error: {0}")]
pub struct KeyError(pub String);

impl StoredKey {
    /// Generates a new key for `alg`.
    pub fn generate(alg: SigningAlg, now: Timestamp) -> Result<Self, KeyError> {
        let private = match alg {
            SigningAlg::EdDSA => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| KeyError("Ed25519 key generation failed".into()))?;
                b64(doc.as_ref())
            }
            SigningAlg::HS256 => {
                let mut k = [0u8; 32];
                fill_random(&mut k);
                b64(&k)
            }
        };
        let mut id = [0u8; 12];
        fill_random(&mut id);
        Ok(Self {
            kid: b64(&id),
            alg,
            created_at: now.as_millis(),
            retired_at: None,
            private,
        })
    }

    fn private_bytes(&self) -> Result<Vec<u8>, KeyError> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.private)
            .map_err(|_| KeyError(format!("key {} is not valid base64url", self.kid)))
    }
}

impl KeyRing {
    /// A fresh ring with one active key.
    pub fn generate(alg: SigningAlg, now: Timestamp) -> Result<Self, KeyError> {
        let mut mac = [0u8; 32];
        fill_random(&mut mac);
        Ok(Self {
            keys: vec![StoredKey::generate(alg, now)?],
            mac_key: b64(&mac),
        })
    }

    /// Retires the active key and adds a new one; drops retired keys whose tokens have all
    /// expired (`retired_at + token_ttl + leeway` in the past).
    pub fn rotate(
        &mut self,
        alg: SigningAlg,
        now: Timestamp,
        keep_for: Duration,
    ) -> Result<(), KeyError> {
        for k in &mut self.keys {
            k.retired_at.get_or_insert(now.as_millis());
        }
        let cutoff = now.minus(keep_for).as_millis();
        self.keys
            .retain(|k| k.retired_at.is_none_or(|r| r > cutoff));
        self.keys.push(StoredKey::generate(alg, now)?);
        Ok(())
    }

    /// The MAC key bytes.
    pub fn mac_key_bytes(&self) -> Result<Vec<u8>, KeyError> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.mac_key)
            .map_err(|_| KeyError("the MAC key is not valid base64url".into()))
    }
}

/// Claims of an access token (API.md §3). `roles` is an extension so that JWKS-only verifiers
/// can authorise without calling tessera.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer: `public_url` without a trailing slash.
    pub iss: String,
    /// User id.
    pub sub: String,
    /// Username.
    pub name: String,
    /// Session id.
    pub sid: String,
    /// Token id.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Audience, only when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Why a token was refused. Callers answer all of them with the same 401; the variant is for
/// logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, too large, bad encoding, unknown `typ`.
    #[error("malformed token")]
    Malformed,
    /// `kid` missing or not ours (or retired long ago).
    #[error("unknown signing key")]
    UnknownKey,
    /// Signature, algorithm, issuer or audience wrong.
    #[error("invalid token")]
    Invalid,
    /// Past `exp` (plus leeway) or issued in the future.
    #[error("token expired")]
    Expired,
}

struct VerifyKey {
    alg: SigningAlg,
    key: DecodingKey,
    validation: Validation,
}

/// The usable form of a [`KeyRing`]: the active signing key and every key tokens may still carry.
pub struct Keys {
    active_kid: String,
    active_alg: SigningAlg,
    encoding: EncodingKey,
    verifying: HashMap<String, VerifyKey>,
    jwks: serde_json::Value,
    mac_key: Vec<u8>,
}

/// Token issuance and verification settings.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// `iss`.
    pub issuer: String,
    /// `aud`, when configured.
    pub audience: Option<String>,
    /// Access-token lifetime.
    pub ttl: Duration,
    /// Accepted clock skew on `exp`/`iat`.
    pub leeway: Duration,
}

impl Keys {
    /// Builds the usable keys from a ring. Keys retired more than `keep_for` ago are left out.
    pub fn from_ring(
        ring: &KeyRing,
        settings: &TokenSettings,
        now: Timestamp,
        keep_for: Duration,
    ) -> Result<Self, KeyError> {
        let active = ring
            .keys
            .iter()
            .rev()
            .find(|k| k.retired_at.is_none())
            .ok_or_else(|| KeyError("the key ring has no active key".into()))?;
        let cutoff = now.minus(keep_for).as_millis();
        let mut verifying = HashMap::new();
        let mut jwks = Vec::new();
        let mut encoding = None;
        for k in &ring.keys {
            if k.retired_at.is_some_and(|r| r <= cutoff) {
                continue;
            }
            let bytes = k.private_bytes()?;
            let (enc, dec) = match k.alg {
                SigningAlg::EdDSA => {
                    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&bytes)
                        .map_err(|_| KeyError(format!("key {} is not Ed25519 PKCS#8", k.kid)))?;
                    use aws_lc_rs::signature::KeyPair as _;
                    let public = pair.public_key().as_ref().to_vec();
                    jwks.push(serde_json::json!({
                        "kty": "OKP", "crv": "Ed25519", "x": b64(&public),
                        "kid": k.kid, "alg": "EdDSA", "use": "sig",
                    }));
                    (
                        EncodingKey::from_ed_der(&bytes),
                        DecodingKey::from_ed_der(&public),
                    )
                }
                SigningAlg::HS256 => (
                    EncodingKey::from_secret(&bytes),
                    DecodingKey::from_secret(&bytes),
                ),
            };
            if k.kid == active.kid {
                encoding = Some(enc);
            }
            let mut validation = Validation::new(k.alg.jwt());
            // Expiry is checked by us against the domain clock (see `verify`).
            validation.validate_exp = false;
            validation.leeway = 0;
            validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            validation.set_issuer(&[&settings.issuer]);
            match &settings.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            verifying.insert(
                k.kid.clone(),
                VerifyKey {
                    alg: k.alg,
                    key: dec,
                    validation,
                },
            );
        }
        Ok(Self {
            active_kid: active.kid.clone(),
            active_alg: active.alg,
            encoding: encoding.ok_or_else(|| KeyError("active key unusable".into()))?,
            verifying,
            jwks: serde_json::json!({ "keys": jwks }),
            mac_key: ring.mac_key_bytes()?,
        })
    }

    /// The JWKS document (public keys only).
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// The MAC key for refresh tokens and CSRF.
    pub fn mac_key(&self) -> &[u8] {
        &self.mac_key
    }

    /// Signs claims with the active key.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(self.active_alg.jwt());
        header.typ = Some(TYP.into());
        header.kid = Some(self.active_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| KeyError(e.to_string()))
    }

    /// Verifies a token's header, signature and claims at `now`.
    pub fn verify(
        &self,
        token: &str,
        now: Timestamp,
        leeway: Duration,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.typ.as_deref() != Some(TYP) {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let vk = self.verifying.get(kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != vk.alg.jwt() {
            return Err(TokenError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &vk.key, &vk.validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = data.claims;
        let now_s = now.as_secs();
        let leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        if now_s >= claims.exp.saturating_add(leeway) || claims.iat > now_s.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The kid of the active key.
    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "http://tessera.test".into(),
            audience: None,
            ttl: Duration::from_secs(900),
            leeway: Duration::ZERO,
        }
    }

    fn claims(now: Timestamp) -> Claims {
        Claims {
            iss: "http://tessera.test".into(),
            sub: "u".into(),
            name: "alice".into(),
            sid: "s".into(),
            jti: "j".into(),
            iat: now.as_secs(),
            exp: now.as_secs() + 900,
            aud: None,
            roles: vec![],
        }
    }

    fn keys(alg: SigningAlg, now: Timestamp) -> Keys {
        let ring = KeyRing::generate(alg, now).unwrap_or_else(|e| panic!("{e}"));
        Keys::from_ring(&ring, &settings(), now, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn both_algorithms_sign_and_verify_until_exp() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        for alg in [SigningAlg::EdDSA, SigningAlg::HS256] {
            let k = keys(alg, now);
            let t = k.sign(&claims(now)).unwrap_or_default();
            assert_eq!(k.verify(&t, now, Duration::ZERO), Ok(claims(now)));
            let at_exp = now.plus(Duration::from_secs(900));
            assert_eq!(
                k.verify(&t, at_exp, Duration::ZERO),
                Err(TokenError::Expired)
            );
            assert!(k.verify(&t, at_exp, Duration::from_secs(5)).is_ok());
        }
    }

    #[test]
    fn a_token_from_another_ring_is_refused() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let t = keys(SigningAlg::EdDSA, now)
            .sign(&claims(now))
            .unwrap_or_default();
        assert_eq!(
            keys(SigningAlg::EdDSA, now).verify(&t, now, Duration::ZERO),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn rotation_keeps_old_keys_verifying_until_their_tokens_expire() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let ttl = Duration::from_secs(900);
        let mut ring = KeyRing::generate(SigningAlg::EdDSA, now).unwrap_or_else(|e| panic!("{e}"));
        let old = Keys::from_ring(&ring, &settings(), now, ttl).unwrap_or_else(|e| panic!("{e}"));
        let t = old.sign(&claims(now)).unwrap_or_default();
        ring.rotate(SigningAlg::EdDSA, now, ttl)
            .unwrap_or_else(|e| panic!("{e}"));
        let new = Keys::from_ring(&ring, &settings(), now, ttl).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(new.active_kid(), old.active_kid());
        assert!(new.verify(&t, now, Duration::ZERO).is_ok());
        assert_eq!(new.jwks()["keys"].as_array().map(Vec::len), Some(2));
        let later = now.plus(ttl + Duration::from_secs(1));
        let pruned =
            Keys::from_ring(&ring, &settings(), later, ttl).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pruned.jwks()["keys"].as_array().map(Vec::len), Some(1));
    }
}
