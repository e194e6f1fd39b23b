//! An array map (`BPF_F_MMAPABLE`, `u64` elements) mapped into our memory:
//! read and written without a syscall per element, and shared with the
//! data path, which sees every write at once.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
    sync::atomic::AtomicU64,
};

use super::error::BpfError;

pub struct Mapped {
    ptr: *mut u64,
    len: usize,
    /// Keeps the map alive as long as the mapping (the mapping alone would
    /// too, but this makes it plain).
    _fd: OwnedFd,
}

impl Mapped {
    /// Map `len` elements of the array behind `fd`.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> Result<Self, BpfError> {
        let fd = fd.try_clone_to_owned().map_err(BpfError::Mmap)?;
        // SAFETY: maps the array map's own memory (created with
        // BPF_F_MMAPABLE; 8-byte elements, `len` of them).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BpfError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            _fd: fd,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The elements, for plain reads and writes (by the one owner).
    pub fn slice(&mut self) -> &mut [u64] {
        // SAFETY: in bounds of the mapping, which lives as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Element `i` for atomic updates that race with the data path's own
    /// atomic adds (None past the end).
    pub fn atomic(&self, i: usize) -> Option<&AtomicU64> {
        // SAFETY: in bounds, 8-byte aligned (page-aligned mapping of u64s);
        // the data path only changes the element with atomic adds.
        (i < self.len).then(|| unsafe { AtomicU64::from_ptr(self.ptr.add(i)) })
    }
}

// SAFETY: the mapping belongs to the process, not to a thread.
unsafe impl Send for Mapped {}
// SAFETY: shared access goes through `atomic` only.
unsafe impl Sync for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len * 8) };
    }
}
