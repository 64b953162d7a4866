//! Small cryptographic helpers shared by the domain: randomness, hashing of stored secrets,
//! keyed MACs and constant-time comparison. Everything secret-bearing goes through here so there is
//! one place to audit.
//!
//! SHA-256 and HMAC are aws-lc-rs's, the crypto of the JWTs and of TLS too: one implementation to
//! trust, and the faster one where the CPU has no SHA instructions (most Intel Xeons before Ice
//! Lake). The verified-token cache hashes every bearer token it is shown (~470 bytes): 0.29 µs
//! with SHA extensions for either library on the project's VM, 1.1–1.4 µs for aws-lc-rs with
//! them masked (`OPENSSL_ia32cap`), 2.0 µs for RustCrypto's `sha2` without them.

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// Fills `buf` from the operating system's CSPRNG.
///
/// PANICS only if the OS has no randomness at all, in which case no secret can be made safely and
/// stopping is the right answer.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(buf).expect("the operating system's random number generator failed");
}

/// 32 fresh random bytes.
pub fn random_32() -> [u8; 32] {
    let mut b = [0u8; 32];
    fill_random(&mut b);
    b
}

/// SHA-256 of a secret: how every token secret is stored (never the secret itself).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// HMAC-SHA256 of the concatenated `parts` under `key`, with a domain-separation `label` so the
/// same key never produces the same MAC for two purposes.
pub fn hmac(key: &[u8], label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    mac.update(label.as_bytes());
    for p in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(mac.sign().as_ref());
    out
}

/// Constant-time equality for secrets and MACs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Unpadded base64url, the encoding of every opaque token part.
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes unpadded base64url into exactly `N` bytes.
pub fn b64_exact<const N: usize>(s: &str) -> Option<[u8; N]> {
    // Bound the work before decoding anything attacker-sized.
    if s.len() > N * 4 / 3 + 4 {
        return None;
    }
    let v = URL_SAFE_NO_PAD.decode(s).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_separates_labels_and_part_boundaries() {
        let k = b"key";
        assert_ne!(hmac(k, "a", &[b"x"]), hmac(k, "b", &[b"x"]));
        assert_ne!(hmac(k, "a", &[b"ab", b"c"]), hmac(k, "a", &[b"a", b"bc"]));
        assert_eq!(hmac(k, "a", &[b"x"]), hmac(k, "a", &[b"x"]));
    }

    /// Hashes in the stores and MACs in issued tokens, cookies and CSRF values must check after an
    /// upgrade: both are pinned to values computed elsewhere (Python's `hashlib` and `hmac`).
    #[test]
    fn stored_hashes_and_macs_are_plain_sha256_and_hmac_sha256() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(hmac(b"key", "label", &[b"ab", b"c"])),
            "68ee3e0ef70c6363cb9d3c0124781080053e4409b5bd0c56f8682309a9a81ed8"
        );
    }

    #[test]
    fn b64_exact_round_trips_and_rejects_other_lengths() {
        let r = random_32();
        assert_eq!(b64_exact::<32>(&b64(&r)), Some(r));
        assert_eq!(b64_exact::<16>(&b64(&r)), None);
        assert_eq!(b64_exact::<32>("!!"), None);
    }
}
