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
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, ...): handed to the kernel.
    PassNotIpv4 = "pass_not_ipv4",
    /// IPv4 but not for a configured service, nor a NAT reply.
    PassNotService = "pass_not_service",
    /// An IP fragment: only the first carries ports, so fragments go to the kernel.
    PassFragment = "pass_fragment",
    /// IPv4 header with options (IHL > 5): handed to the kernel.
    PassIpOptions = "pass_ip_options",
    /// The next hop's MAC is not resolved yet: DSR hands the frame to the kernel
    /// unchanged; NAT hands it over already translated (its source is the
    /// client, so the kernel forwards it and resolves the neighbour).
    PassNoNeighbour = "pass_no_neighbour",
    /// Ethernet, IPv4 or L4 header cut short by the end of the frame or of
    /// the IPv4 datagram (total length).
    DropTruncated = "drop_truncated",
    /// IPv4 header that cannot be right (version not 4, IHL < 5, total length
    /// smaller than the header).
    DropBadIpHeader = "drop_bad_ip_header",
    /// IPv4 header checksum wrong on a packet the LB would forward or translate.
    DropBadIpChecksum = "drop_bad_ip_checksum",
    /// TCP data offset below 5, or UDP length below 8 or beyond the datagram.
    DropBadL4Header = "drop_bad_l4_header",
    /// The kernel has no usable route to the next hop (unreachable, blackhole,
    /// prohibit, forwarding disabled on the ingress interface).
    DropNoRoute = "drop_no_route",
    /// Larger than the egress MTU without DF: XDP cannot fragment, so it is
    /// dropped (with DF the sender gets an ICMP instead, see below).
    DropTooBig = "drop_too_big",
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
    /// A backend refused a NAT connection (RST to the SYN): the RST is
    /// withheld and the client's retried SYN goes to another backend.
    DropRstRedispatch = "drop_rst_redispatch",
    /// Addressed to a VIP (or HA floating address) on a port or protocol no
    /// service forwards, or a fragment or IP options packet to it: dropped
    /// so the LB host's own services are not exposed (ICMP excepted;
    /// `dataplane.unserved_vip = "pass"` keeps the old pass-to-host).
    DropUnservedVip = "drop_unserved_vip",
    /// An ARP request for an HA address while this node holds no lease (its
    /// daemon is gone or not MASTER): not answered, so only the MASTER claims it.
    DropArpNotMaster = "drop_arp_not_master",
    /// Larger than the egress MTU with DF set: answered with ICMP "fragmentation
    /// needed" quoting the frame as the sender sent it (path-MTU discovery).
    TxIcmpFragNeeded = "tx_icmp_frag_needed",
    /// A NAT packet (either direction) whose TTL would reach 0 here: NAT
    /// routes, so it is answered with ICMP "time exceeded" quoting it as
    /// sent, from its destination (traceroute shows the hop), before any
    /// state changes.
    TxIcmpTimeExceeded = "tx_icmp_time_exceeded",
    /// A NAT packet whose TTL runs out here that gets no ICMP: a relayed
    /// ICMP error (no error about an error), or a frame the driver left no
    /// room to build the ICMP in. Dropped, as a router drops it.
    DropTtlExceeded = "drop_ttl_exceeded",
    /// An ICMP echo request to a VIP, answered from the VIP in XDP (so also
    /// when the address is not configured on the LB host).
    TxIcmpEchoReply = "tx_icmp_echo_reply",
    /// An ICMP error (unreachable, fragmentation needed, time exceeded)
    /// about a balanced flow, relayed to the flow's backend (NAT: outer
    /// destination and quoted source translated back to the backend).
    FwdIcmpToBackend = "fwd_icmp_to_backend",
    /// The source is in the global deny list: dropped before anything else
    /// (any IPv4 packet, the host's own traffic included).
    DropDeniedGlobal = "drop_denied_global",
    /// The source matches a deny entry of its service (most specific entry).
    DropDenied = "drop_denied",
    /// The service has an allow list and no entry allows the source.
    DropNotAllowed = "drop_not_allowed",
    /// A new connection over its client address's rate limit for the
    /// service (established flows are never limited).
    DropRateClient = "drop_rate_client",
    /// A new connection over the service's overall rate limit.
    DropRateService = "drop_rate_service",
    /// SYN cookies: a client SYN answered by the LB itself with a SYN-ACK
    /// whose sequence number is a kernel SYN cookie; no state is kept.
    TxSynCookie = "tx_syn_cookie",
    /// SYN cookies: a client ACK with a valid cookie (or a later packet of
    /// that connection before the backend answered) sent on to the backend
    /// as the SYN that opens the backend's side of the connection.
    FwdCookieSyn = "fwd_cookie_syn",
    /// SYN cookies: the backend's SYN-ACK answered by the LB with the ACK
    /// that completes the backend's side (the client's side is complete).
    TxCookieAck = "tx_cookie_ack",
    /// SYN cookies on: a TCP packet of no known connection whose
    /// acknowledgement is not a valid cookie (an ACK flood, or a connection
    /// the LB no longer knows), or a RST of no known connection (the hosts
    /// whose addresses a flood forged reset the SYN-ACKs they get).
    DropBadCookie = "drop_bad_cookie",
    /// SYN cookies: a backend packet other than SYN-ACK or RST for a
    /// connection whose backend side is still opening.
    DropCookiePending = "drop_cookie_pending",
    /// A packet with a NAT flow's reply tuple (a backend's address and port
    /// as source) that did not come the way the LB sends to that backend:
    /// in on another interface, or from another MAC than its next hop's. A
    /// forged reply (a RST "refusing" a connection, say) from the client
    /// side: dropped before it changes anything.
    DropSpoofedReply = "drop_spoofed_reply",
    /// An ICMP error from the backend side (a router between the LB and a
    /// backend) about a NAT flow, relayed to its client with the quoted
    /// destination translated back to the VIP (path-MTU discovery through
    /// the LB).
    FwdIcmpToClient = "fwd_icmp_to_client",
    /// A unicast frame addressed to another host (a switch flooding unknown
    /// unicast, or a neighbour with a stale cache): the kernel's, which
    /// drops it. Forwarding it would duplicate what its addressee forwards
    /// (an HA BACKUP must not act on the MASTER's frames).
    PassOtherHost = "pass_other_host",
    /// NAT: the first reply to a connection this node did not see open
    /// came from a backend that does not have it (a RST without ACK, or a
    /// sequence number of another connection): withheld, and the client's
    /// next packet goes to another backend. Not a health signal.
    DropPickupRefused = "drop_pickup_refused",
    /// NAT: a new connection whose backend(s) already have a live
    /// connection from the same client address and port through another
    /// VIP sharing them: the backend could not tell the two apart, and the
    /// older one's replies would be translated as the newer's. Dropped;
    /// the client's retried SYN gets through once the other closes.
    DropNatTupleInUse = "drop_nat_tuple_in_use",
}

/// Number of reasons; the size of the `REASONS` map.
pub const REASON_COUNT: u32 = Reason::ALL.len() as u32;
