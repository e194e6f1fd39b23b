//! Why the program returned what it returned: one per-CPU counter per reason.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $label:literal,)*) => {
        /// Verdict reasons, each counted per CPU in the `REASONS` map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[doc = $doc])* $name,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];
            /// Stable snake_case name, used in logs and metrics.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }
        }
    };
}

reasons! {
    /// Not IPv4 (ARP, IPv6, VLAN, ...): handed to the kernel.
    PassNotIpv4 = "pass_not_ipv4",
    /// IPv4 but not for a configured service, nor a NAT reply.
    PassNotService = "pass_not_service",
    /// An IP fragment: only the first carries ports, so fragments go to the kernel.
    PassFragment = "pass_fragment",
    /// IPv4 header with options (IHL > 5): handed to the kernel.
    PassIpOptions = "pass_ip_options",
    /// The next hop's MAC is not resolved yet: the kernel forwards this one and resolves it.
    PassNoNeighbour = "pass_no_neighbour",
    /// The route lookup failed (unreachable, blackhole, MTU, ...): the kernel decides.
    PassFibFailed = "pass_fib_failed",
    /// Ethernet, IPv4 or L4 header cut short by the end of the frame.
    DropTruncated = "drop_truncated",
    /// IPv4 header that cannot be right (IHL < 5, total length too small).
    DropBadIpHeader = "drop_bad_ip_header",
    /// The service has no backend to send the flow to (policy: drop).
    DropNoBackend = "drop_no_backend",
    /// The service has no backend to send the flow to (policy: pass to the local stack).
    PassNoBackend = "pass_no_backend",
    /// Forwarded to a backend with MAC rewrite only.
    FwdDsr = "fwd_dsr",
    /// Forwarded to a backend with destination NAT.
    FwdNat = "fwd_nat",
    /// A backend's reply translated back to the VIP and forwarded to the client.
    FwdReverseNat = "fwd_reverse_nat",
}

/// Number of reasons; the size of the `REASONS` map.
pub const REASON_COUNT: u32 = Reason::ALL.len() as u32;
