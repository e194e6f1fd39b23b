//! Loading the embedded XDP object, with every map (and the program)
//! pinned under a layout-versioned bpffs directory so a restarted daemon
//! adopts them.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader};
use lb_common::names;
use tracing::warn;

use super::{
    error::BpfError,
    handles::{neigh_program, xdp_program},
};

/// The compiled `lb-ebpf` object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The loaded data path and whether its maps were adopted from pins.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// This layout version's pin directory, when pinning is on.
    pub pin_dir: Option<PathBuf>,
    /// The maps existed (a previous daemon left them): flows, config and
    /// counters carry over.
    pub adopted: bool,
}

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory for this layout version under `root`.
pub fn pin_dir(root: &Path) -> PathBuf {
    root.join(format!("v{}", lb_common::LAYOUT_VERSION))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The pin directory must be on a bpf filesystem. Looks at the nearest
/// existing ancestor, so the message names what is missing rather than the
/// `mkdir` that would fail on it.
pub fn check_pin_root(dir: &Path) -> Result<(), BpfError> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    Err(BpfError::Pin(
        dir.to_path_buf(),
        format!(
            "{} is not on a bpf filesystem (bpffs is not mounted there). Mount it with \
             `mount -t bpf bpf /sys/fs/bpf` (`cargo xtask setup` does), or set \
             dataplane.pin_path = \"\" to run without hitless restart. Started under \
             `ip netns exec`? It mounts a private /sys without bpffs: enter the namespace \
             with `nsenter --net=/run/netns/NAME` instead",
            existing.display()
        ),
    ))
}

/// Entries of the LRU tables, set before load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    /// Established flows (and their reverse-NAT entries).
    pub flows: u32,
    /// Half-open TCP connections (and their reverse-NAT entries).
    pub embryos: u32,
}

impl TableSizes {
    pub fn of(dp: &crate::config::DataplaneConfig) -> Self {
        Self {
            flows: dp.flow_table_size,
            embryos: dp.embryonic_table_size,
        }
    }
}

/// Load (but do not attach) the data path, its LRU tables sized by
/// `sizes`. With `pin_root`, every map is pinned under its versioned
/// directory, re-using maps already pinned there.
pub fn load(sizes: TableSizes, pin_root: Option<&Path>) -> Result<Loaded, BpfError> {
    load_with(sizes, pin_root, TestFault::None)
}

/// A bug the fuzz test plants in the data path to prove it would notice
/// (see `lb-ebpf/src/fault.rs`). Never set by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFault {
    None = 0,
    /// NAT skips the port part of the L4 checksum update.
    NatPortChecksum = 1,
}

/// [`load`], with a planted [`TestFault`] (tests only).
pub fn load_with(
    sizes: TableSizes,
    pin_root: Option<&Path>,
    fault: TestFault,
) -> Result<Loaded, BpfError> {
    let mut loader = EbpfLoader::new();
    let fault = fault as u32;
    let budget = lb_common::half_open_budget(sizes.flows);
    loader
        .map_max_entries(names::FLOWS, sizes.flows)
        .map_max_entries(names::NAT_REVERSE, sizes.flows)
        .map_max_entries(names::EMBRYOS, sizes.embryos)
        .map_max_entries(names::EMBRYO_REVERSE, sizes.embryos)
        .override_global(names::TEST_FAULT, &fault, true)
        .override_global(names::HALF_OPEN_BUDGET, &budget, true);
    let dir = pin_root.map(pin_dir);
    let mut adopted = false;
    let map_paths: Vec<(&'static str, PathBuf)> = match &dir {
        Some(d) => names::MAPS.iter().map(|n| (*n, d.join(n))).collect(),
        None => Vec::new(),
    };
    if let Some(d) = &dir {
        check_pin_root(d)?;
        std::fs::create_dir_all(d).map_err(|e| BpfError::Pin(d.clone(), e.to_string()))?;
        adopted = map_paths.iter().any(|(_, p)| p.exists());
        if adopted {
            check_pinned_sizes(d, sizes)?;
        }
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    load_program(&mut ebpf, names::PROGRAM)?;
    install_cookie_program(&mut ebpf)?;
    neigh_program(&mut ebpf)?
        .load()
        .map_err(|source| BpfError::Program {
            name: names::NEIGH_PROGRAM,
            source,
        })?;
    if let Some(d) = &dir {
        // Pinned so `bpftool prog show pinned` finds the running program.
        let path = d.join(format!("prog_{}", names::PROGRAM));
        let _ = std::fs::remove_file(&path);
        xdp_program(&mut ebpf, names::PROGRAM)?
            .pin(&path)
            .map_err(|e| BpfError::Pin(path.clone(), e.to_string()))?;
    }
    Ok(Loaded {
        ebpf,
        pin_dir: dir,
        adopted,
    })
}

/// Remove every pin of this layout version (after a clean detach).
pub fn unpin(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Err(err) = std::fs::remove_file(e.path()) {
                warn!(path = %e.path().display(), error = %err, "removing pin failed");
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
    if let Some(root) = dir.parent() {
        let _ = std::fs::remove_dir(root); // only if empty
    }
}

/// A pinned table keeps the size it was created with: a running data path
/// adopted with other sizes configured would silently keep the old ones.
/// Refused instead, saying what to do.
fn check_pinned_sizes(dir: &Path, sizes: TableSizes) -> Result<(), BpfError> {
    for (name, key, want) in [
        (names::FLOWS, "dataplane.flow_table_size", sizes.flows),
        (
            names::EMBRYOS,
            "dataplane.embryonic_table_size",
            sizes.embryos,
        ),
    ] {
        let path = dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue; // not pinned: created at the configured size
        };
        let have = info.max_entries();
        if have != want {
            return Err(BpfError::Resize {
                key,
                want,
                have,
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Load one XDP program of the object into the kernel.
fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), BpfError> {
    xdp_program(ebpf, name)?
        .load()
        .map_err(|source| BpfError::Program { name, source })
}

/// Load the SYN-cookie program and put it where the main program's tail
/// call finds it (a pinned array keeps it there across a restart until the
/// next daemon puts its own).
fn install_cookie_program(ebpf: &mut Ebpf) -> Result<(), BpfError> {
    load_program(ebpf, names::COOKIE_PROGRAM)?;
    let fd = xdp_program(ebpf, names::COOKIE_PROGRAM)?
        .fd()
        .map_err(|source| BpfError::Program {
            name: names::COOKIE_PROGRAM,
            source,
        })?
        .try_clone()
        .map_err(|e| BpfError::Dup(names::COOKIE_PROGRAM, e))?;
    let map = ebpf
        .map_mut(names::COOKIE_PROGRAM_ARRAY)
        .ok_or(BpfError::MissingMap(names::COOKIE_PROGRAM_ARRAY))?;
    let mut array = aya::maps::ProgramArray::try_from(map).map_err(|source| BpfError::Map {
        name: names::COOKIE_PROGRAM_ARRAY,
        source,
    })?;
    array.set(0, &fd, 0).map_err(|source| BpfError::Map {
        name: names::COOKIE_PROGRAM_ARRAY,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_path_off_bpffs_says_what_is_missing_and_how_to_fix_it() {
        let dir = std::env::temp_dir().join("xdplb-not-bpffs/v4");
        let e = check_pin_root(&dir).unwrap_err().to_string();
        assert!(e.contains("is not on a bpf filesystem"), "{e}");
        assert!(e.contains("mount -t bpf bpf /sys/fs/bpf"), "{e}");
        assert!(e.contains("ip netns exec"), "{e}");
        assert_eq!(e.matches("No such file").count(), 0, "{e}");
    }
}
