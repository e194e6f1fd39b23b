//! A planted bug for the fuzz test's self-check, off in production.
//!
//! The fuzz test must prove it can fail: it loads the program with
//! `TEST_FAULT = 1`, which makes NAT skip the port part of the L4 checksum
//! update, and expects its checksum invariant to catch it. The daemon never
//! sets it. The value lives in `.rodata`, which the loader freezes, so the
//! verifier knows it is 0 and removes the dead branch: no cost per packet.

#[unsafe(no_mangle)]
static TEST_FAULT: u32 = 0;

#[inline(always)]
pub fn planted() -> bool {
    // SAFETY: a plain read of a global; volatile so the compiler keeps the
    // load instead of folding the initial value.
    unsafe { core::ptr::read_volatile(&TEST_FAULT) != 0 }
}
