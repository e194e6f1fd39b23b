//! Walking a hash map that the data path changes under the walk.
//!
//! aya's map iterators end at the first error, and a flow that closes or is
//! evicted between "next key" and "look it up" is such an error: under load
//! a walk of the flow table stopped after a few hundred of its thousands of
//! entries. This walk skips vanished entries instead. When the key it stands
//! on vanishes, the kernel restarts from the first key; the walk is bounded
//! so that cannot go on for ever.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::Pod;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

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

fn bpf(cmd: libc::c_long, attr: &mut ElemAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd`; the pointers in it
    // point at buffers of the map's key and value sizes, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Call `f` for entries of the hash map `fd` (key `K`, value `V`, which must
/// be the map's sizes) until the walk reaches the end, `f` returns false, or
/// the walk has taken `max_steps` steps. Returns the number of entries visited. An entry may be visited
/// twice if the walk restarts; callers count or overwrite, so that is fine.
pub fn walk<K: Pod, V: Pod>(
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
