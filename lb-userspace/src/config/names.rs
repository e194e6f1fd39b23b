//! Names the config refers to that the kernel defines.

/// `IFNAMSIZ`: an interface name and its NUL.
const IFNAMSIZ: usize = 16;

/// A name the kernel could give an interface.
pub(super) fn interface_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() < IFNAMSIZ && !name.contains(['/', ' ', ':'])
}
