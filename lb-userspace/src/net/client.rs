//! The daemon's one rtnetlink connection; the requests themselves live in
//! the files of what they change (routes, neighbours, addresses).

use rtnetlink::Handle;
use tokio::task::JoinHandle;

use super::error::NetError;

/// The daemon's rtnetlink connection; its I/O runs as a task on the tokio
/// runtime it was opened on, and stops when this is dropped.
pub struct Netlink {
    pub(super) handle: Handle,
    connection: JoinHandle<()>,
}

impl Netlink {
    /// Open the connection (inside a tokio runtime).
    pub fn open() -> Result<Self, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        Ok(Self {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    pub(super) fn request_error(
        what: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Request { what, source }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
