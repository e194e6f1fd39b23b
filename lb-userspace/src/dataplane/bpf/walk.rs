//! Walking a hash map that the data path changes under the walk.
//!
//! [`walk`] reads the map a few thousand entries per syscall
//! (`BPF_MAP_LOOKUP_BATCH`, bucket by bucket: entries that vanish under it
//! are simply not seen, and it never restarts). A walk of a 1M-entry flow
//! table is the daemon's largest periodic job, and one syscall per entry
//! made it ~40 times dearer (issue 21: `cargo xtask bench` prints both).
//!
//! [`walk_each`] is the entry-by-entry walk, for kernels without batch
//! lookups on a map type (and the benchmark's comparison). aya's map
//! iterators end at the first error, and a flow that closes or is evicted
//! between "next key" and "look it up" is such an error: under load a walk
//! of the flow table stopped after a few hundred of its thousands of
//! entries. This walk skips vanished entries instead. When the key it
//! stands on vanishes, the kernel restarts from the first key; the walk is
//! bounded so that cannot go on for ever.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::Pod;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The kernel's own "not supported" (no batch operations for the map type).
const ENOTSUPP: i32 = 524;

/// Entries asked for per batch (a bucket with more than this is retried
/// with a larger buffer).
const BATCH: usize = 4096;

/// `union bpf_attr` as the two commands use it (map_fd, key, value or
/// next_key, flags); the kernel reads only the bytes it needs.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

/// `union bpf_attr` as the batch commands use it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd` (one of the two
    // structs above); the pointers in it point at buffers of the sizes the
    // command writes, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Call `f` for entries of the hash map `fd` (key `K`, value `V`, which must
/// be the map's sizes; not a per-CPU map) until the walk reaches the end,
/// `f` returns false, or `max_steps` entries were visited. Returns the
/// number of entries visited. Batched where the kernel can, else
/// [`walk_each`].
pub fn walk<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    max_steps: usize,
    mut f: impl FnMut(K, V) -> bool,
) -> std::io::Result<usize> {
    let map_fd = fd.as_raw_fd() as u32;
    // SAFETY: K and V are Pod: all-zero is a valid value.
    let (zero_k, zero_v): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let mut size = BATCH;
    let mut keys = vec![zero_k; size];
    let mut values = vec![zero_v; size];
    // The position: a bucket index for hash maps (a u32; room for more).
    let (mut token, mut next) = (0u64, 0u64);
    let mut first = true;
    let mut visited = 0;
    while visited < max_steps {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token as *const u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size as u32,
            map_fd,
            ..Default::default()
        };
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more than the buffer: a larger one.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < (1 << 20) => {
                size *= 4;
                keys.resize(size, zero_k);
                values.resize(size, zero_v);
                continue;
            }
            Err(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(ENOTSUPP)
                    ) =>
            {
                return walk_each(fd, max_steps, f);
            }
            Err(e) => return Err(e),
        };
        let got = (attr.count as usize).min(size);
        for (k, v) in keys[..got].iter().zip(&values[..got]) {
            visited += 1;
            if !f(*k, *v) || visited >= max_steps {
                return Ok(visited);
            }
        }
        if done {
            return Ok(visited);
        }
        token = next;
        first = false;
    }
    Ok(visited)
}

/// [`walk`], one entry (two syscalls) at a time. An entry may be visited
/// twice if the walk restarts; callers count or overwrite, so that is fine.
pub fn walk_each<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    max_steps: usize,
    mut f: impl FnMut(K, V) -> bool,
) -> std::io::Result<usize> {
    let map_fd = fd.as_raw_fd() as u32;
    let mut cur: Option<K> = None;
    let mut visited = 0;
    for _ in 0..max_steps {
        // SAFETY: K is Pod: all-zero is a valid value.
        let mut next: K = unsafe { std::mem::zeroed() };
        let mut attr = ElemAttr {
            map_fd,
            key: cur.as_ref().map_or(0, |k| k as *const K as u64),
            value_or_next: &mut next as *mut K as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(visited),
            Err(e) => return Err(e),
        }
        // SAFETY: as above.
        let mut value: V = unsafe { std::mem::zeroed() };
        let mut attr = ElemAttr {
            map_fd,
            key: &next as *const K as u64,
            value_or_next: &mut value as *mut V as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => {
                visited += 1;
                if !f(next, value) {
                    return Ok(visited);
                }
            }
            // Gone since: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        cur = Some(next);
    }
    Ok(visited)
}
