//! What a data path must do for the control plane: the [`Dataplane`]
//! trait (the real maps and the fake implement it) and its error.

use lb_common::{Backend, Firewall, ReplyOwnerKey, ServiceInfo, ServiceKey, VipInfo};

use crate::plan::acl::AclEntry;

#[derive(Debug, thiserror::Error)]
#[error("{op} {map}: {message}")]
pub struct DataplaneError {
    pub op: &'static str,
    pub map: &'static str,
    pub message: String,
}

pub trait Dataplane {
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError>;
    /// Write `ring` into ring `half` (0 or 1) of service `service_id`. Only
    /// a half no service entry points at is ever written.
    fn write_ring(&mut self, service_id: u32, half: u8, ring: &[u32])
    -> Result<(), DataplaneError>;
    /// Replace a service entry in one update (readers see it old or new).
    fn set_service(&mut self, key: ServiceKey, info: ServiceInfo) -> Result<(), DataplaneError>;
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError>;
    /// Set what the data path does with unforwarded traffic to an address.
    fn set_vip(&mut self, addr_be: u32, info: VipInfo) -> Result<(), DataplaneError>;
    /// Name the backend id whose service a NAT backend's replies belong to
    /// (`REPLY_OWNERS`, `plan/reply_owner.rs`).
    fn set_reply_owner(&mut self, key: ReplyOwnerKey, id: u32) -> Result<(), DataplaneError>;
    fn remove_reply_owner(&mut self, key: ReplyOwnerKey) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, addr_be: u32) -> Result<(), DataplaneError>;
    /// Set service `service_id`'s new-connection limits.
    fn set_rate_limit(
        &mut self,
        service_id: u32,
        limit: lb_common::RateLimit,
    ) -> Result<(), DataplaneError>;
    /// Add or change a firewall list entry (`ACL_ALLOW` / `ACL_DENY`).
    fn set_acl(&mut self, entry: AclEntry, action: u8) -> Result<(), DataplaneError>;
    fn remove_acl(&mut self, entry: AclEntry) -> Result<(), DataplaneError>;
    /// The firewall's state: global entries and the generation flows are
    /// checked at.
    fn set_firewall(&mut self, fw: Firewall) -> Result<(), DataplaneError>;
    /// Return once every run of the data path that began before the call
    /// has ended (an RCU grace period): after a flip, the half no longer
    /// live has no reader left and may be rewritten.
    fn quiesce(&mut self) -> Result<(), DataplaneError>;
}
