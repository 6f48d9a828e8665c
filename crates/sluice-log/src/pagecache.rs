//! Letting the kernel reuse the page cache of bytes already on disk.
//!
//! Appending into fresh page cache costs several times the system time of appending into
//! recycled pages (on these VMs 5-6 s against 1.2 s for 2.3 GB). Files written once and
//! read soon after (log segments, a sink's output) drop their synced, read pages so the
//! next writes find recycled ones; a later reader gets them from the disk. The segment
//! being written drops the pages every open reader has passed ([`ReadMarks`], 4 MiB at a
//! time); sealed segments drop theirs once every cursor has passed them.
//!
//! Invariant: no page is dropped that an open reader has not yet consumed.

use std::fs::File;

/// Advises the kernel that `len` bytes of `file` from `offset` are not needed in memory.
/// The bytes must be synced (dirty pages are not dropped, only written back).
pub fn drop_cached(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor the caller holds open; it only advises
    // the page cache and cannot affect memory safety.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Where each open reader of a log is (segment base, bytes consumed in it), so that the
/// slowest of them can drop the pages every reader has passed while the segment is still
/// being written: the writer's next appends then find recycled pages instead of fresh
/// ones. Pages are dropped only behind every registered reader, so a reader never has
/// to go to the disk for bytes another reader has made it skip. A reader registered
/// later than a drop, behind it, reads from the disk (it was behind anyway).
#[derive(Default)]
pub(crate) struct ReadMarks {
    inner: std::sync::Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    /// One slot per reader; `None` when free or not yet positioned.
    slots: Vec<Option<(u64, u64)>>,
    free: Vec<usize>,
    /// Everything before this (segment base, byte) has been dropped.
    dropped: (u64, u64),
}

impl ReadMarks {
    /// A slot for a new reader.
    pub(crate) fn register(&self) -> usize {
        let mut m = self.inner.lock().expect("read marks lock");
        match m.free.pop() {
            Some(i) => i,
            None => {
                m.slots.push(None);
                m.slots.len() - 1
            }
        }
    }

    pub(crate) fn release(&self, slot: usize) {
        let mut m = self.inner.lock().expect("read marks lock");
        m.slots[slot] = None;
        m.free.push(slot);
    }

    /// Records that reader `slot` has consumed `byte` bytes of segment `base` (whose file
    /// is `file`); if it was the slowest reader, drops what every reader has now passed
    /// in that segment. Bytes a reader consumed are durable, so they are clean.
    pub(crate) fn advance(&self, slot: usize, base: u64, byte: u64, file: &File) {
        if let Some((from, to)) = self.note(slot, base, byte) {
            drop_cached(file, from, to - from);
        }
    }

    /// Records the position; returns the byte range of segment `base` to drop now.
    fn note(&self, slot: usize, base: u64, byte: u64) -> Option<(u64, u64)> {
        let mut m = self.inner.lock().expect("read marks lock");
        m.slots[slot] = Some((base, byte));
        let min = m.slots.iter().flatten().min().copied()?;
        if min.0 != base {
            // The slowest reader is in another segment: this one's pages stay for it.
            return None;
        }
        let from = if m.dropped.0 == base { m.dropped.1 } else { 0 };
        // Whole chunks only: the chunk the readers are in stays, and a drop (a syscall
        // that may drain per-CPU page lists) comes once per chunk, not at every small
        // read.
        let to = min.1 & !(CHUNK - 1);
        if to <= from {
            return None;
        }
        m.dropped = (base, to);
        Some((from, to))
    }
}

/// Dropping is done in whole chunks of this size.
const CHUNK: u64 = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn pages_go_only_behind_the_slowest_reader() {
        let marks = ReadMarks::default();
        let fast = marks.register();
        let slow = marks.register();
        // A reader not yet positioned holds nothing back.
        assert_eq!(marks.note(fast, 100, 9 * MB), Some((0, 8 * MB)));
        // Once the slow one is positioned behind, the fast one's reads drop nothing.
        assert_eq!(marks.note(slow, 100, MB), None);
        assert_eq!(marks.note(fast, 100, 20 * MB), None);
        // The slow one moving up drops what both have passed, in whole chunks.
        assert_eq!(
            marks.note(slow, 100, 11 * MB),
            None,
            "8 MiB already dropped"
        );
        assert_eq!(marks.note(slow, 100, 17 * MB), Some((8 * MB, 16 * MB)));
        // A reader in an earlier segment keeps the later segment's pages.
        let late = marks.register();
        assert_eq!(marks.note(late, 50, 0), None);
        assert_eq!(marks.note(slow, 100, 30 * MB), None);
        // The slowest now, it drops what everyone passed in its own segment.
        assert_eq!(marks.note(late, 50, 5 * MB), Some((0, 4 * MB)));
        // Gone, it holds nothing back; the next segment starts from its first byte.
        marks.release(late);
        assert_eq!(marks.note(slow, 200, 4 * MB), None, "fast is still in 100");
        assert_eq!(marks.note(fast, 200, 6 * MB), Some((0, 4 * MB)));
        // A released slot is reused.
        assert_eq!(marks.register(), late);
    }
}
