//! What can go wrong with the BPF objects, and an error's causes on one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("attaching to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("pinning at {0}: {1}")]
    Pin(PathBuf, String),
    #[error("starting the flow-census thread: {0}")]
    Thread(std::io::Error),
    #[error("map {0}: a second handle: {1}")]
    Dup(&'static str, std::io::Error),
    #[error("mapping the ring array into memory: {0}")]
    Mmap(std::io::Error),
    #[error(transparent)]
    Write(#[from] crate::dataplane::DataplaneError),
    #[error(
        "{key} is {want}, but the running data path pinned at {} was made with {have} entries; a table keeps its size, so this takes a fresh data path: `xdplb stop` (forwarding stops, its flows are lost) and start again, or set {key} = {have}",
        dir.display()
    )]
    Resize {
        key: &'static str,
        want: u32,
        have: u32,
        dir: PathBuf,
    },
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
