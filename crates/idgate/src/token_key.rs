//! The verified-token cache's key: a secret-keyed pseudorandom function of
//! the whole token, 128 bits.
//!
//! A key two tokens shared would let one borrow the other's verification,
//! so the key must be collision resistant against someone who chooses
//! tokens. Until stop 42 it was the SHA-256 of the token, which needs no
//! secret but costs about 0.6 µs for a Google ID token on this project's
//! build machine, the largest single cost of a cache hit. This key is the
//! tag AES-128-GCM-SIV (RFC 8452, in aws-lc) puts on an empty message with
//! the token as associated data, under a key drawn at random when the
//! verifier is built and never shown: POLYVAL of the token, encrypted with
//! AES. About half the time of SHA-256 (BENCHMARKS.md, "Stop 42").
//!
//! - **Why it is safe as a cache key.** Two different tokens share a tag
//!   only if their POLYVAL hashes under the secret key meet on 127 bits
//!   (AES is a permutation), which happens with probability under
//!   2(L + 1)/2¹²⁸ for tokens of up to L 16-byte blocks, whoever chooses
//!   them: under 2⁻¹¹⁶ at the default 16 KiB limit, 2⁻¹¹⁰ at 1 MiB. So a
//!   token made to borrow a cached one's verification succeeds with
//!   probability under `entries` times that per try, and a try shows
//!   nothing but a miss. Nothing can be searched
//!   offline: the key exists only in the process's memory.
//! - **Why GCM-SIV and not a bare universal hash** (POLYVAL or GHASH alone,
//!   or GCM's tag with a fixed nonce, which is GHASH plus a constant): the
//!   hot slot a token lands in is read from its key, so some of the key's
//!   bits show in which memory a lookup touches. Bits of a polynomial hash of
//!   known tokens would give away its key, and with it collisions at will.
//!   GCM-SIV encrypts the hash, so its tags are a pseudorandom function of
//!   the token: bits of them say nothing of the key.
//! - **The fixed nonce** is what makes the tag a function of the token
//!   alone, as a cache key must be. GCM-SIV is built to stay secure when a
//!   nonce repeats (that is its purpose); nothing is ever encrypted here.

use std::hash::{BuildHasher, Hasher};

use aws_lc_rs::aead::{AES_128_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};

/// Makes the cache keys of tokens, under its own random key.
pub(crate) struct TokenKeyer(LessSafeKey);

impl TokenKeyer {
    /// A keyer with a fresh random key, or `None` when the system's random
    /// source fails (the caller then caches nothing).
    pub(crate) fn new() -> Option<Self> {
        let mut key = [0u8; 16];
        aws_lc_rs::rand::fill(&mut key).ok()?;
        let key = UnboundKey::new(&AES_128_GCM_SIV, &key).ok()?;
        Some(TokenKeyer(LessSafeKey::new(key)))
    }

    /// The token's cache key, or `None` if it cannot be computed (not for
    /// any token under the verifier's size limit); the token is then
    /// verified in full and not cached.
    pub(crate) fn key(&self, token: &str) -> Option<u128> {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(token.as_bytes()),
                &mut [],
            )
            .ok()?;
        Some(u128::from_le_bytes(tag.as_ref().try_into().ok()?))
    }
}

/// Hashes a cache key for the map by taking 64 of its bits: it is already
/// pseudorandom, and secret, so no one can aim keys at one bucket, and
/// hashing it again (the map's default, SipHash) would only cost time.
#[derive(Clone, Default)]
pub(crate) struct KeyBits;

impl BuildHasher for KeyBits {
    type Hasher = KeyBitsHasher;
    fn build_hasher(&self) -> KeyBitsHasher {
        KeyBitsHasher(0)
    }
}

pub(crate) struct KeyBitsHasher(u64);

impl Hasher for KeyBitsHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u128(&mut self, key: u128) {
        self.0 ^= (key >> 64) as u64;
    }
    /// Only `u128` keys are hashed with it; anything else is folded in, so
    /// that it still hashes (badly, but correctly).
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_a_function_of_the_whole_token() {
        let k = TokenKeyer::new().unwrap();
        let token = "aaaa.bbbb.signature";
        assert_eq!(k.key(token), k.key(token));
        let others = [
            "aaaa.bbbb.signaturf",
            "baaa.bbbb.signature",
            "aaaa.bbbb.signature.",
            "aaaa.bbbb.signatur",
            "aaaa.bbbb.signature\0",
            "",
        ];
        for other in others {
            assert_ne!(k.key(token), k.key(other), "{other:?}");
        }
    }

    #[test]
    fn each_keyer_has_its_own_key() {
        let (a, b) = (TokenKeyer::new().unwrap(), TokenKeyer::new().unwrap());
        assert_ne!(a.key("aaaa.bbbb.signature"), b.key("aaaa.bbbb.signature"));
    }

    #[test]
    fn the_largest_token_has_a_key() {
        let k = TokenKeyer::new().unwrap();
        assert!(k.key(&"a".repeat(1 << 20)).is_some());
    }

    #[test]
    fn the_map_hash_is_the_keys_high_bits() {
        let key: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        assert_eq!(KeyBits.hash_one(key), 0x0123_4567_89ab_cdef);
        // Other types still hash, and differ.
        assert_ne!(KeyBits.hash_one("a"), KeyBits.hash_one("b"));
    }
}
