//! Attaching the XDP program (native, falling back to generic) and, beside
//! it, the tc neighbour-resolution program to each interface, as pinned
//! bpf_links a restarted daemon takes over; and detaching them.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::names;
use tracing::{info, warn};

use super::{
    error::{BpfError, error_chain},
    handles::{neigh_program, xdp_program},
};
use crate::config::XdpMode;

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    link: AttachLink,
    /// The tc-ingress neighbour-resolution program, if it could be attached.
    neigh: Option<NeighLink>,
}

#[derive(Debug)]
enum NeighLink {
    Owned(SchedClassifierLinkId),
    Pinned(PathBuf, FdLink),
}

fn neigh_link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("tclink_{iface}"))
}

/// Attach the tc program in front of the interface's other TCX programs
/// (it only acts on packets the XDP program marked), pinned with `pin_dir`;
/// a pinned link a previous daemon left is taken over in place.
fn attach_neigh(ebpf: &mut Ebpf, iface: &str, pin_dir: Option<&Path>) -> Result<NeighLink, String> {
    let prog = neigh_program(ebpf).map_err(|e| e.to_string())?;
    if let Some(dir) = pin_dir {
        let path = neigh_link_pin(dir, iface);
        if path.exists() {
            let adopted = (|| {
                let pinned = PinnedLink::from_pin(&path).map_err(|e| error_chain(&e))?;
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| error_chain(&e))?;
                let id = prog.attach_to_link(link).map_err(|e| error_chain(&e))?;
                let link = prog.take_link(id).map_err(|e| error_chain(&e))?;
                FdLink::try_from(link).map_err(|e| error_chain(&e))
            })();
            match adopted {
                Ok(link) => return Ok(NeighLink::Pinned(path, link)),
                Err(reason) => {
                    warn!(iface, %reason, "cannot take over the pinned tc link; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(|e| error_chain(&e))?;
    let Some(dir) = pin_dir else {
        return Ok(NeighLink::Owned(id));
    };
    let link = prog.take_link(id).map_err(|e| error_chain(&e))?;
    let fd_link = FdLink::try_from(link).map_err(|e| error_chain(&e))?;
    let path = neigh_link_pin(dir, iface);
    let pinned = fd_link.pin(&path).map_err(|e| error_chain(&e))?;
    Ok(NeighLink::Pinned(path, pinned.into()))
}

#[derive(Debug)]
enum AttachLink {
    /// Owned by the program; goes when the daemon goes.
    Owned(XdpLinkId),
    /// A bpf_link pinned at the path: survives the daemon.
    Pinned(PathBuf, FdLink),
}

fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// Attach program `name` to each interface. `Auto` tries native mode first
/// and falls back to generic, logging why. With `pin_dir`, a link a previous
/// daemon pinned for the interface is taken over by atomically replacing its
/// program (no packet sees an interface without XDP), and new links are
/// pinned.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifaces: &[String],
    mode: XdpMode,
    pin_dir: Option<&Path>,
) -> Result<Vec<Attachment>, BpfError> {
    let mut out = Vec::new();
    for iface in ifaces {
        match attach_one(ebpf, name, iface, mode, pin_dir) {
            Ok(mut a) => {
                info!(iface = %a.iface, mode = a.mode, program = name, pinned = matches!(a.link, AttachLink::Pinned(..)), "XDP program attached");
                match attach_neigh(ebpf, iface, pin_dir) {
                    Ok(l) => {
                        info!(
                            iface,
                            program = names::NEIGH_PROGRAM,
                            "tc neighbour resolution attached"
                        );
                        a.neigh = Some(l);
                    }
                    Err(reason) => {
                        warn!(iface, %reason, "cannot attach the tc neighbour-resolution program (TCX, Linux 6.6+); packets whose next hop is unresolved go to the IP stack instead, where a NAT reply from a local VIP is dropped as a martian")
                    }
                }
                out.push(a);
            }
            Err(e) => {
                // Do not leave the program on the interfaces done so far.
                detach(ebpf, name, out, false);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpMode,
    pin_dir: Option<&Path>,
) -> Result<Attachment, BpfError> {
    let prog = xdp_program(ebpf, name)?;
    let program_err = |source| BpfError::Program { name, source };
    if let Some(dir) = pin_dir {
        let path = link_pin(dir, iface);
        if path.exists() {
            match adopt_link(prog, &path) {
                Ok(link) => {
                    return Ok(Attachment {
                        iface: iface.to_string(),
                        mode: "adopted",
                        link: AttachLink::Pinned(path, link),
                        neigh: None,
                    });
                }
                Err(reason) => {
                    warn!(iface, path = %path.display(), %reason, "cannot take over the pinned XDP link; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    let tries: &[(AyaXdpMode, &'static str)] = match mode {
        XdpMode::Auto => &[(AyaXdpMode::Driver, "native"), (AyaXdpMode::Skb, "generic")],
        XdpMode::Native => &[(AyaXdpMode::Driver, "native")],
        XdpMode::Generic => &[(AyaXdpMode::Skb, "generic")],
    };
    let mut last_err = String::new();
    for (m, label) in tries {
        match prog.attach(iface, *m) {
            Ok(id) => {
                let Some(dir) = pin_dir else {
                    return Ok(Attachment {
                        iface: iface.to_string(),
                        mode: label,
                        link: AttachLink::Owned(id),
                        neigh: None,
                    });
                };
                let link = prog.take_link(id).map_err(program_err)?;
                let fd_link = match FdLink::try_from(link) {
                    Ok(l) => l,
                    Err(e) => {
                        return Err(BpfError::Attach {
                            iface: iface.to_string(),
                            reason: format!(
                                "attached through netlink, which cannot be pinned ({}); set dataplane.pin_path = \"\" to run without hitless restart",
                                error_chain(&e)
                            ),
                        });
                    }
                };
                let path = link_pin(dir, iface);
                let pinned = fd_link
                    .pin(&path)
                    .map_err(|e| BpfError::Pin(path.clone(), error_chain(&e)))?;
                return Ok(Attachment {
                    iface: iface.to_string(),
                    mode: label,
                    link: AttachLink::Pinned(path, pinned.into()),
                    neigh: None,
                });
            }
            Err(e) => {
                last_err = error_chain(&e);
                if *label == "native" && mode == XdpMode::Auto {
                    warn!(iface, reason = %last_err, "native XDP attach failed; falling back to generic mode");
                }
            }
        }
    }
    Err(BpfError::Attach {
        iface: iface.to_string(),
        reason: last_err,
    })
}

/// Replace the program of a pinned link with ours; returns the link.
fn adopt_link(prog: &mut Xdp, path: &Path) -> Result<FdLink, String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| error_chain(&e))?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| error_chain(&e))?;
    let id = prog.attach_to_link(link).map_err(|e| error_chain(&e))?;
    let link = prog.take_link(id).map_err(|e| error_chain(&e))?;
    FdLink::try_from(link).map_err(|e| error_chain(&e))
}

/// Detach the given attachments, logging (not failing on) errors. With
/// `keep_running`, pinned links stay (forwarding goes on without the daemon).
pub fn detach(
    ebpf: &mut Ebpf,
    name: &'static str,
    attachments: Vec<Attachment>,
    keep_running: bool,
) {
    for a in attachments {
        match a.neigh {
            Some(NeighLink::Pinned(path, link)) => {
                if keep_running {
                    // Stays with the XDP link; the next daemon takes it over.
                } else {
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(iface = %a.iface, error = %e, "removing the tc link pin failed");
                    }
                    drop(link);
                }
            }
            Some(NeighLink::Owned(id)) => {
                if let Ok(prog) = neigh_program(ebpf)
                    && let Err(e) = prog.detach(id)
                {
                    warn!(iface = %a.iface, error = %error_chain(&e), "detaching the tc program failed");
                }
            }
            None => {}
        }
        match a.link {
            AttachLink::Pinned(path, link) => {
                if keep_running {
                    info!(iface = %a.iface, pin = %path.display(), "XDP program left attached (pinned link)");
                    continue;
                }
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(iface = %a.iface, error = %e, "removing the link pin failed");
                }
                drop(link); // last reference: the kernel detaches
                info!(iface = %a.iface, "XDP program detached");
            }
            AttachLink::Owned(id) => {
                let Ok(prog) = xdp_program(ebpf, name) else {
                    continue;
                };
                match prog.detach(id) {
                    Ok(()) => info!(iface = %a.iface, "XDP program detached"),
                    Err(e) => {
                        warn!(iface = %a.iface, error = %error_chain(&e), "detaching XDP program failed")
                    }
                }
            }
        }
    }
}
