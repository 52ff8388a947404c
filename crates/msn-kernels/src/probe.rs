//! Instruction-count marks for `scripts/board_cost.sh`: a no-op instruction that its qemu
//! plugin (`scripts/insn_count.c`) recognises, so it can say how many instructions each
//! node of a plan executed under emulation. Marks are emitted only when `MSN_INSN_MARKS` is
//! set (read once); elsewhere, and off aarch64, [`mark`] does nothing.

use std::sync::OnceLock;

/// Whether marks are on (`MSN_INSN_MARKS` set to anything but `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MSN_INSN_MARKS").is_some_and(|v| v != "0"))
}

/// The mark's encoding: `hint #126`, an unallocated hint, which every aarch64 CPU executes as
/// a `nop` (so a marked binary runs unchanged on a board).
pub const MARK_AARCH64: u32 = 0xD503_201F | (126 << 5);

/// Emits one mark when [`enabled`].
#[inline]
pub fn mark() {
    #[cfg(target_arch = "aarch64")]
    if enabled() {
        // SAFETY: `hint #126` is an unallocated hint, architecturally a `nop`: it reads and
        // writes no register or memory, and `nomem, nostack, preserves_flags` say so.
        unsafe {
            std::arch::asm!("hint #126", options(nomem, nostack, preserves_flags));
        }
    }
}
