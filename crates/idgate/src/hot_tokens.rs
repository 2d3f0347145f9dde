//! The verified-token cache's first level: a few slots holding the tokens
//! seen most recently again, looked up by the token's own bytes.
//!
//! The cache proper is keyed by the SHA-256 of the whole token (a key that
//! collided would let one token borrow another's verification), and on a
//! hit the hash is most of the work: about 0.5 µs for a Google ID token
//! with SHA-NI, as much as the rest of the gate's checks together
//! (BENCHMARKS.md, "The hot-token slots"). A caller usually sends the same
//! token for an hour, request after request; for those, a slot chosen by
//! the token's last bytes holds a copy of the token itself, and a hit is a
//! byte-for-byte comparison instead of a hash and a map lookup.
//!
//! - A slot only ever holds a token that verified, so a hit can only be the
//!   very token that did; anything else, whichever slot it lands in, fails
//!   the comparison and goes on to the hashed cache.
//! - The comparison takes the same time however many bytes match
//!   (`aws_lc_rs::constant_time`): a slot holds another caller's bearer
//!   token, and timing must not tell a prober how close a guess came.
//! - A token gets a slot on its second sighting (a hit in the hashed
//!   cache): an empty slot at once; an occupied one when its token has not
//!   been hit since the last offer (a second chance) and then only on one
//!   offer in [`REPLACE_ONE_IN`], so that many tokens in rotation, none of
//!   them hot, cost a copy now and then rather than on every request.
//! - What a hit returns is checked as a hit in the hashed cache is (expiry,
//!   key still published) by the caller.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

/// Slots: a power of two. A slot costs a pointer when empty and a token's
/// copy (under 1 KiB for Google's) plus a shared entry when full.
const SLOTS: usize = 256;

/// An occupied slot without a recent hit is given to a new token on one
/// offer in this many (per thread).
const REPLACE_ONE_IN: u32 = 8;

/// The hot-token slots, holding a `V` for each token.
pub(crate) struct HotTokens<V> {
    slots: Box<[ArcSwapOption<Hot<V>>]>,
}

struct Hot<V> {
    token: Box<str>,
    value: V,
    /// Set by a hit, cleared by an offer of another token for the slot.
    used: AtomicBool,
}

thread_local! {
    static OFFERS: Cell<u32> = const { Cell::new(0) };
}

impl<V: Clone> HotTokens<V> {
    pub(crate) fn new() -> Self {
        HotTokens {
            slots: (0..SLOTS).map(|_| ArcSwapOption::const_empty()).collect(),
        }
    }

    /// The slot of a token, from its last eight bytes (a signature's, for
    /// a JWS: spread evenly). Anyone may pick the slot their token lands
    /// in; that gains nothing, since a hit needs the whole token.
    fn slot(&self, token: &str) -> &ArcSwapOption<Hot<V>> {
        let bytes = token.as_bytes();
        let mut tail = [0u8; 8];
        let n = bytes.len().min(8);
        tail[..n].copy_from_slice(&bytes[bytes.len() - n..]);
        let mixed = u64::from_le_bytes(tail).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.slots[(mixed >> (64 - SLOTS.trailing_zeros())) as usize]
    }

    /// The value held for exactly this token.
    pub(crate) fn get(&self, token: &str) -> Option<V> {
        let guard = self.slot(token).load();
        let hot = guard.as_ref()?;
        if !same(&hot.token, token) {
            return None;
        }
        if !hot.used.load(Ordering::Relaxed) {
            hot.used.store(true, Ordering::Relaxed);
        }
        Some(hot.value.clone())
    }

    /// Offers a token seen again (a hit in the hashed cache) for a slot.
    pub(crate) fn offer(&self, token: &str, value: &V) {
        let slot = self.slot(token);
        if let Some(hot) = slot.load().as_ref() {
            if hot.used.swap(false, Ordering::Relaxed) {
                return;
            }
            let turn = OFFERS.with(|n| {
                let next = n.get().wrapping_add(1);
                n.set(next);
                next % REPLACE_ONE_IN == 0
            });
            if !turn {
                return;
            }
        }
        slot.store(Some(Arc::new(Hot {
            token: token.into(),
            value: value.clone(),
            used: AtomicBool::new(false),
        })));
    }

    /// Empties the slot if it holds this token (its entry failed a check).
    pub(crate) fn forget(&self, token: &str) {
        let slot = self.slot(token);
        let holds = slot
            .load()
            .as_ref()
            .is_some_and(|hot| same(&hot.token, token));
        if holds {
            slot.store(None);
        }
    }
}

/// Whether two tokens are the same, in a time that depends on their lengths
/// only.
fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_needs_the_whole_token() {
        let hot = HotTokens::new();
        hot.offer("aaaa.bbbb.signature", &1);
        assert_eq!(hot.get("aaaa.bbbb.signature"), Some(1));
        // Same last bytes, so the same slot: still a miss.
        assert_eq!(hot.get("aaaa.bbbc.signature"), None);
        assert_eq!(hot.get("aaaa.bbbb.signature."), None);
        assert_eq!(hot.get("signature"), None);
    }

    #[test]
    fn a_hot_token_keeps_its_slot_and_a_cold_one_gives_it_up() {
        let hot = HotTokens::new();
        // Same slot (same last eight bytes), different tokens.
        let (a, b) = ("first.x.SAMETAIL", "second.y.SAMETAIL");
        hot.offer(a, &'a');
        assert_eq!(hot.get(a), Some('a'));
        // `a` was hit since it came in: every offer of `b` only takes its
        // second chance away, and `a` takes it back with its next hit.
        for _ in 0..3 * REPLACE_ONE_IN {
            hot.offer(b, &'b');
            assert_eq!(hot.get(a), Some('a'));
        }
        // Once `a` goes cold, `b` gets the slot within REPLACE_ONE_IN offers.
        for _ in 0..=REPLACE_ONE_IN {
            hot.offer(b, &'b');
        }
        assert_eq!(hot.get(b), Some('b'));
        assert_eq!(hot.get(a), None);
    }

    #[test]
    fn forget_empties_only_its_own_slot() {
        let hot = HotTokens::new();
        hot.offer("one.SAMETAIL", &1);
        hot.forget("two.SAMETAIL");
        assert_eq!(hot.get("one.SAMETAIL"), Some(1));
        hot.forget("one.SAMETAIL");
        assert_eq!(hot.get("one.SAMETAIL"), None);
    }

    #[test]
    fn short_tokens_have_a_slot_too() {
        for token in ["", "a", "abcdefg"] {
            let hot = HotTokens::new();
            hot.offer(token, &token.len());
            assert_eq!(hot.get(token), Some(token.len()), "{token:?}");
        }
    }
}
