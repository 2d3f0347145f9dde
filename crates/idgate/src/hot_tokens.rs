//! The verified-token cache's first levels: slots holding the entries of
//! the tokens seen most recently again, each found without searching a
//! map, and for a caller that repeats its token, without computing a key.
//!
//! The cache proper is a moka map, keyed by a secret-keyed function of the
//! whole token ([`crate::token_key`]). On this project's build machine the
//! key costs about 0.3 µs for a Google ID token, and the map's lookup, with
//! the upkeep moka does for its eviction policy, about 0.8 µs more. Two
//! kinds of slot stand in front of it:
//!
//! - **Token slots** ([`TokenCopy`], [`TOKEN_SLOTS`] of them), chosen by a
//!   token's last bytes, each holding a copy of its token. A caller usually
//!   sends the same token for an hour, request after request; its hit is a
//!   comparison, with no key computed. A copy is most of a kilobyte, which
//!   keeps them few.
//! - **Key slots** (up to [`MAX_KEY_SLOTS`]), chosen by the token's cache key
//!   and holding the key (16 bytes). With many callers in rotation (a gate
//!   behind a front end sees a few thousand at most) few tokens keep a
//!   token slot, and their hit is the key computed and read back from its
//!   slot, with no map searched. (Stop 42; before it, those hits took the
//!   map, and the key was SHA-256, 0.6 µs.)
//!
//! What they share:
//! - A slot only ever holds a token that verified, so a hit is that very
//!   token: the same bytes, or the same full key, which the key's
//!   construction makes as unlikely for another token as a forged
//!   signature.
//! - A token slot compares in a time that depends on the tokens' lengths
//!   only (`aws_lc_rs::constant_time`), after a one-word check of their
//!   last eight bytes: a slot holds another caller's bearer token, and
//!   timing must not tell a prober how close a guess came. The word check
//!   tells only whether a guess had all 64 of those bits right. A key is
//!   pseudorandom and secret: no one can choose which key slot their token
//!   lands in, or learn anything from which one another token's does.
//! - A token gets a key slot on its second sighting (a hit in the map) and
//!   a token slot on its third (a hit in a key slot): an empty slot at
//!   once; an occupied one when its entry has not been hit since the last
//!   offer (a second chance) and then only on one offer in
//!   [`REPLACE_ONE_IN`], so that tokens sharing a slot settle rather than
//!   take it from each other on every request, and tokens in rotation cost
//!   a copy now and then rather than on every request.
//! - What a hit returns is checked as a hit in the map is (times, key still
//!   published) by the caller.
//! - A slot keeps its entry alive after the map has evicted it, until the
//!   slot is given to another token or forgotten. There are never more key
//!   slots than the map's capacity, so those hold at most as many entries
//!   again; the 256 token slots hold up to 256 more, each with its token's
//!   copy (at most the verifier's token size limit).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

/// Token slots. Empty, a slot costs a pointer; full, a token's copy (under
/// 1 KiB for Google's) and a shared entry.
pub(crate) const TOKEN_SLOTS: usize = 256;

/// Most key slots: as many callers as a gate in front of one service
/// usually sees. Empty, they cost a pointer each (32 KiB); full, about 80
/// bytes more each while the map holds the same entry (they share it).
pub(crate) const MAX_KEY_SLOTS: usize = 4096;

/// An occupied slot without a recent hit is given to a new token on one
/// offer in this many (per kind of slot and thread).
const REPLACE_ONE_IN: u32 = 8;

/// What a slot is looked up by (`Q`) and holds to tell its token from
/// others (`Self`).
pub(crate) trait SlotKey<Q: ?Sized> {
    /// This kind's own count of offers (see [`OFFERS`]).
    const KIND: usize;
    /// What the slot keeps of `q`.
    fn of(q: &Q) -> Self;
    /// Pseudorandom bits of `q` that pick its slot (the high ones).
    fn spread(q: &Q) -> u64;
    /// Whether this is the key of exactly `q`.
    fn is(&self, q: &Q) -> bool;
}

/// A token slot's key: a copy of the token, and its last eight bytes as a
/// word, checked first so that a lookup landing on another token's slot
/// stops without reading that token's bytes (cold in memory).
pub(crate) struct TokenCopy {
    tail: u64,
    token: Box<str>,
}

fn tail(token: &str) -> u64 {
    let bytes = token.as_bytes();
    let mut tail = [0u8; 8];
    let n = bytes.len().min(8);
    tail[..n].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_le_bytes(tail)
}

impl SlotKey<str> for TokenCopy {
    const KIND: usize = 0;
    fn of(token: &str) -> Self {
        TokenCopy {
            tail: tail(token),
            token: token.into(),
        }
    }
    /// From the last eight bytes (a signature's, for a JWS: spread
    /// evenly), mixed. Anyone may pick the slot their token lands in; that
    /// gains nothing, since a hit needs the whole token.
    fn spread(token: &str) -> u64 {
        tail(token).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn is(&self, token: &str) -> bool {
        self.tail == tail(token)
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                self.token.as_bytes(),
                token.as_bytes(),
            )
            .is_ok()
    }
}

impl SlotKey<u128> for u128 {
    const KIND: usize = 1;
    fn of(key: &u128) -> Self {
        *key
    }
    fn spread(key: &u128) -> u64 {
        *key as u64
    }
    fn is(&self, key: &u128) -> bool {
        self == key
    }
}

/// Slots keyed by `K`, holding a `V` each.
pub(crate) struct Slots<K, V> {
    slots: Box<[ArcSwapOption<Hot<K, V>>]>,
}

thread_local! {
    /// Offers for occupied slots so far, per kind of slot (one count for
    /// both could, with offers alternating, never give one kind a turn),
    /// and per thread (no shared counter for threads to contend on).
    static OFFERS: [Cell<u32>; 2] = const { [Cell::new(0), Cell::new(0)] };
}

struct Hot<K, V> {
    key: K,
    value: V,
    /// Set by a hit, cleared by an offer of another token for the slot.
    used: AtomicBool,
}

impl<K, V: Clone> Slots<K, V> {
    /// `n` slots, rounded down to a power of two (at least one).
    pub(crate) fn new(n: usize) -> Self {
        let n = 1 << n.max(1).ilog2();
        Slots {
            slots: (0..n).map(|_| ArcSwapOption::const_empty()).collect(),
        }
    }

    /// Key slots for a map of `capacity` entries: [`MAX_KEY_SLOTS`], or no
    /// more than the map holds.
    pub(crate) fn for_capacity(capacity: u64) -> Self {
        Self::new(capacity.min(MAX_KEY_SLOTS as u64) as usize)
    }

    fn slot<Q: ?Sized>(&self, q: &Q) -> &ArcSwapOption<Hot<K, V>>
    where
        K: SlotKey<Q>,
    {
        let bits = self.slots.len().trailing_zeros();
        let i = K::spread(q).checked_shr(64 - bits).unwrap_or(0);
        &self.slots[i as usize]
    }

    /// What `check` takes from the value held for exactly `q`, read in
    /// place: a hit takes from the entry only what it needs (the
    /// identity), rather than a clone of it all. A value that fails the
    /// check (`None`: its entry no longer holds) is forgotten on the spot,
    /// its slot emptied unless another token has taken it since.
    pub(crate) fn hit<Q: ?Sized, R>(&self, q: &Q, check: impl FnOnce(&V) -> Option<R>) -> Option<R>
    where
        K: SlotKey<Q>,
    {
        let slot = self.slot(q);
        let guard = slot.load();
        let hot = guard.as_ref()?;
        if !hot.key.is(q) {
            return None;
        }
        let Some(taken) = check(&hot.value) else {
            slot.compare_and_swap(&guard, None);
            return None;
        };
        if !hot.used.load(Ordering::Relaxed) {
            hot.used.store(true, Ordering::Relaxed);
        }
        Some(taken)
    }

    /// The value held for exactly `q`.
    #[cfg(test)]
    fn get<Q: ?Sized>(&self, q: &Q) -> Option<V>
    where
        K: SlotKey<Q>,
    {
        self.hit(q, |v| Some(v.clone()))
    }

    /// Offers a token seen again for a slot.
    pub(crate) fn offer<Q: ?Sized>(&self, q: &Q, value: &V)
    where
        K: SlotKey<Q>,
    {
        let slot = self.slot(q);
        if let Some(hot) = slot.load().as_ref() {
            if hot.used.swap(false, Ordering::Relaxed) {
                return;
            }
            let turn = OFFERS.with(|counts| {
                let n = &counts[K::KIND];
                n.set(n.get().wrapping_add(1));
                n.get().is_multiple_of(REPLACE_ONE_IN)
            });
            if !turn {
                return;
            }
        }
        slot.store(Some(Arc::new(Hot {
            key: K::of(q),
            value: value.clone(),
            used: AtomicBool::new(false),
        })));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Slots<TokenCopy, i32> {
        Slots::new(TOKEN_SLOTS)
    }

    #[test]
    fn a_token_hit_needs_the_whole_token() {
        let hot = tokens();
        hot.offer("aaaa.bbbb.signature", &1);
        assert_eq!(hot.get("aaaa.bbbb.signature"), Some(1));
        // Same last bytes, so the same slot: still a miss.
        assert_eq!(hot.get("aaaa.bbbc.signature"), None);
        assert_eq!(hot.get("aaaa.bbbb.signature."), None);
        assert_eq!(hot.get("signature"), None);
        assert_eq!(hot.get("ature"), None);
    }

    #[test]
    fn short_tokens_have_a_slot_too() {
        for token in ["", "a", "abcdefg"] {
            let hot = tokens();
            hot.offer(token, &(token.len() as i32));
            assert_eq!(hot.get(token), Some(token.len() as i32), "{token:?}");
        }
        // "" and "\0" have the same tail word; only the bytes tell them apart.
        let hot = tokens();
        hot.offer("", &1);
        assert_eq!(hot.get("\0"), None);
    }

    /// Two keys for one slot, different in their high bits.
    const A: u128 = 5 << 60;
    const B: u128 = (1 << 100) | A;

    #[test]
    fn a_key_hit_needs_the_whole_key() {
        let hot = Slots::<u128, i32>::for_capacity(10_000);
        hot.offer(&A, &1);
        assert_eq!(hot.get(&A), Some(1));
        // Same low bits, so the same slot: still a miss.
        assert_eq!(hot.get(&B), None);
        assert_eq!(hot.get(&(A ^ (1 << 127))), None);
        assert_eq!(hot.get(&(A + 1)), None);
    }

    #[test]
    fn a_hot_token_keeps_its_slot_and_a_cold_one_gives_it_up() {
        let hot = Slots::<u128, char>::for_capacity(10_000);
        hot.offer(&A, &'a');
        assert_eq!(hot.get(&A), Some('a'));
        // `A` was hit since it came in: every offer of `B` only takes its
        // second chance away, and `A` takes it back with its next hit.
        for _ in 0..3 * REPLACE_ONE_IN {
            hot.offer(&B, &'b');
            assert_eq!(hot.get(&A), Some('a'));
        }
        // Once `A` goes cold, `B` gets the slot within REPLACE_ONE_IN offers.
        for _ in 0..=REPLACE_ONE_IN {
            hot.offer(&B, &'b');
        }
        assert_eq!(hot.get(&B), Some('b'));
        assert_eq!(hot.get(&A), None);
    }

    #[test]
    fn each_kind_of_slot_gets_its_turns() {
        let (tokens, keys) = (tokens(), Slots::<u128, i32>::for_capacity(10_000));
        tokens.offer("old.SAMETAIL", &1);
        keys.offer(&A, &1);
        // Offers alternating between the kinds: with one count for both,
        // every turn could fall to the same kind.
        for _ in 0..REPLACE_ONE_IN {
            tokens.offer("new.SAMETAIL", &2);
            keys.offer(&B, &2);
        }
        assert_eq!(tokens.get("new.SAMETAIL"), Some(2));
        assert_eq!(keys.get(&B), Some(2));
    }

    /// A hit whose check fails empties the slot of exactly that key.
    #[test]
    fn a_failed_check_empties_only_its_own_slot() {
        let fail = |_: &i32| None::<()>;
        let hot = tokens();
        hot.offer("one.SAMETAIL", &1);
        hot.hit("two.SAMETAIL", fail);
        assert_eq!(hot.get("one.SAMETAIL"), Some(1));
        hot.hit("one.SAMETAIL", fail);
        assert_eq!(hot.get("one.SAMETAIL"), None);
        let keys = Slots::<u128, i32>::for_capacity(10_000);
        keys.offer(&A, &1);
        keys.hit(&B, fail);
        assert_eq!(keys.get(&A), Some(1));
        keys.hit(&A, fail);
        assert_eq!(keys.get(&A), None);
    }

    #[test]
    fn key_slots_follow_the_capacity_up_to_the_most() {
        for (capacity, slots) in [
            (1, 1),
            (2, 2),
            (3, 2),
            (1000, 512),
            (4096, 4096),
            (10_000, MAX_KEY_SLOTS),
            (u64::MAX, MAX_KEY_SLOTS),
        ] {
            assert_eq!(
                Slots::<u128, u8>::for_capacity(capacity).len(),
                slots,
                "{capacity}"
            );
        }
        // One slot still works.
        let hot = Slots::<u128, i32>::for_capacity(1);
        hot.offer(&B, &2);
        assert_eq!(hot.get(&B), Some(2));
        assert_eq!(hot.get(&A), None);
    }
}
