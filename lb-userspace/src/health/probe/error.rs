//! What a probe found wrong: no answer in time, no connection, or the
//! failure of its kind. Each kind's error is its own type; a local fault
//! (this host out of descriptors, memory or ports) is told apart from a
//! backend's failure, so it is never reported as one.

use super::{http::HttpError, https::HttpsError, mysql::MysqlError, tcp::ConnectError};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error(transparent)]
    Mysql(#[from] MysqlError),
}

impl From<std::convert::Infallible> for ProbeError {
    fn from(never: std::convert::Infallible) -> ProbeError {
        match never {}
    }
}

impl ProbeError {
    /// The probe could not be run for a reason of this host's, which says
    /// nothing about the backend.
    pub fn is_local(&self) -> bool {
        match self {
            ProbeError::Connect(e) => e.is_local(),
            ProbeError::Https(HttpsError::Settings(_)) => true,
            _ => false,
        }
    }
}
