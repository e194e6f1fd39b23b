//! The node's address changes, made by a thread of their own. Adding or
//! removing an address takes the kernel's RTNL lock, which any netlink user
//! on the host may hold for long (every namespace shares it); the HA
//! thread's adverts and gratuitous ARPs must not wait for it. Jobs run in
//! the order sent; `flush` waits for them (a stop, the start).

use std::sync::mpsc;

use tracing::warn;

use super::owned::Owned;
use crate::net::{IfAddress, Netlink, link};

enum Job {
    Add(Vec<Owned>),
    Remove(Vec<Owned>),
    Done(mpsc::Sender<()>),
}

pub struct AddressWorker {
    tx: mpsc::Sender<Job>,
}

impl AddressWorker {
    pub fn start() -> std::io::Result<AddressWorker> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("xdplb-ha-addr".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return warn!(error = %e, "HA address worker runtime"),
                };
                rt.block_on(async move {
                    let nl = match Netlink::open() {
                        Ok(nl) => nl,
                        Err(e) => return warn!(error = %e, "HA address worker: netlink"),
                    };
                    while let Ok(job) = rx.recv() {
                        match job {
                            Job::Add(owned) => add(&nl, &owned).await,
                            Job::Remove(owned) => remove(&nl, &owned).await,
                            Job::Done(ack) => {
                                let _ = ack.send(());
                            }
                        }
                    }
                });
            })?;
        Ok(AddressWorker { tx })
    }

    pub fn add(&self, owned: Vec<Owned>) {
        let _ = self.tx.send(Job::Add(owned));
    }

    pub fn remove(&self, owned: Vec<Owned>) {
        let _ = self.tx.send(Job::Remove(owned));
    }

    /// Wait until every job sent so far has run.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Job::Done(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

async fn add(nl: &Netlink, owned: &[Owned]) {
    for o in owned {
        let Some(ifindex) = link::ifindex(&o.iface) else {
            warn!(iface = %o.iface, addr = %o.addr, "cannot take the address: no such interface");
            continue;
        };
        let a = IfAddress {
            ifindex,
            addr: o.addr,
            prefix_len: o.prefix_len,
        };
        if let Err(e) = nl.add_address(a).await {
            warn!(addr = %o.addr, iface = %o.iface, error = %e, "taking the address failed");
        }
    }
}

async fn remove(nl: &Netlink, owned: &[Owned]) {
    for o in owned {
        let Some(ifindex) = link::ifindex(&o.iface) else {
            continue;
        };
        let a = IfAddress {
            ifindex,
            addr: o.addr,
            prefix_len: o.prefix_len,
        };
        if let Err(e) = nl.remove_address(a).await {
            warn!(addr = %o.addr, iface = %o.iface, error = %e, "dropping the address failed");
        }
    }
}
