//! The fixture lab: the real XDP program, loaded in a [`fib_lab`] namespace
//! and programmed from a config through the daemon's own planner and
//! programmer, run on frames with BPF_PROG_TEST_RUN. Shared by the packet
//! fixtures and the benchmark, so both exercise the same set-up.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{TestRun, TestRunOptions},
};
use lb_common::{FlowKey, FlowValue, Reason, Traffic, names};
use xdplb::{
    config::Config,
    dataplane::Programmer,
    dataplane::bpf::{self, BpfDataplane, Counters, TestFault},
    plan::{Availability, BackendRef, Plan, PlannedService, Planner},
};

use crate::{Netns, NetnsEntered, fib_lab, pin_to_cpu0};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Name of an XDP verdict code.
pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "ABORTED",
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        XDP_TX => "TX",
        XDP_REDIRECT => "REDIRECT",
        _ => "?",
    }
}

pub struct Lab {
    pub ebpf: Ebpf,
    pub counters: Counters,
    pub plan: Plan,
    config_text: String,
    dp: BpfDataplane,
    planner: Planner,
    programmer: Programmer,
    _entered: NetnsEntered,
    _ns: Netns,
}

impl Lab {
    /// A lab in a fresh namespace named after `prefix`, programmed from
    /// `config` (TOML); `flow_table_size` overrides the config's when set.
    pub fn new(prefix: &str, config: &str, flow_table_size: Option<u32>) -> Lab {
        Lab::with_fault(prefix, config, flow_table_size, TestFault::None)
    }

    /// [`Lab::new`] with a bug planted in the program, to prove a test can fail.
    pub fn with_fault(
        prefix: &str,
        config: &str,
        flow_table_size: Option<u32>,
        fault: TestFault,
    ) -> Lab {
        pin_to_cpu0();
        let ns = fib_lab(prefix);
        let entered = ns.enter();
        let mut parsed = Config::parse(Path::new("lab.toml"), config).expect("lab config");
        if let Some(n) = flow_table_size {
            parsed.dataplane.flow_table_size = n;
        }
        let mut ebpf = bpf::load_with(bpf::TableSizes::of(&parsed.dataplane), None, fault)
            .expect("load XDP program")
            .ebpf;
        let mut dp = BpfDataplane::new(&mut ebpf).expect("maps");
        let counters = Counters::new(&mut ebpf).expect("counter maps");
        let mut programmer = Programmer::default();
        let mut planner = Planner::default();
        programmer
            .apply(&mut dp, planner.plan(&parsed, &Default::default()).unwrap())
            .expect("program maps");
        let plan = programmer.applied().clone();
        Lab {
            ebpf,
            counters,
            plan,
            config_text: config.to_string(),
            dp,
            planner,
            programmer,
            _entered: entered,
            _ns: ns,
        }
    }

    /// Re-program the maps from `config` with these backends down or held.
    pub fn replan_with(&mut self, config: &str, avail: &Availability) {
        let config = Config::parse(Path::new("lab.toml"), config).expect("config");
        let plan = self.planner.plan(&config, avail).unwrap();
        self.programmer
            .apply(&mut self.dp, plan)
            .expect("program maps");
        self.plan = self.programmer.applied().clone();
    }

    /// Re-program the maps from `config` with the `down` backends out.
    pub fn replan(&mut self, config: &str, down: &[BackendRef]) {
        self.replan_with(config, &Availability::down(down.iter().copied().collect()));
    }

    /// Back to the lab's own config with every backend up.
    pub fn restore(&mut self) {
        let config = self.config_text.clone();
        self.replan(&config, &[]);
    }

    pub fn service(&self, name: &str) -> &PlannedService {
        self.plan
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in the lab"))
    }

    /// Backend id of `addr` in `service`.
    pub fn backend_id(&self, service: &str, addr: [u8; 4]) -> u32 {
        let sid = self.service(service).info.id;
        *self
            .plan
            .backends
            .iter()
            .find(|(_, b)| b.service_id == sid && b.addr_be == u32::from_ne_bytes(addr))
            .unwrap_or_else(|| panic!("no backend {addr:?} in {service}"))
            .0
    }

    /// Address of the backend `service`'s ring holds at `slot`.
    pub fn ring_backend(&self, service: &str, slot: u32) -> [u8; 4] {
        let id = self.service(service).ring[slot as usize];
        u32::from_be(self.plan.backends[&id].addr_be).to_be_bytes()
    }

    /// The backend a Maglev service picks for this client 4-tuple (the
    /// userspace ring and the shared hash, independent of the program).
    pub fn maglev_backend(
        &self,
        service: &str,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> [u8; 4] {
        let h = lb_common::hash::flow_hash(
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            sport.to_be(),
            dport.to_be(),
            proto,
        );
        self.ring_backend(service, h % self.service(service).ring.len() as u32)
    }

    pub fn service_traffic(&self, name: &str) -> Traffic {
        let id = self.service(name).info.id;
        self.counters.snapshot(&[id], &[]).unwrap().services[&id]
    }

    pub fn backend_traffic(&self, id: u32) -> Traffic {
        self.counters.snapshot(&[], &[id]).unwrap().backends[&id]
    }

    pub fn reason(&self, r: Reason) -> u64 {
        self.counters.snapshot(&[], &[]).unwrap().reason(r)
    }

    /// Every reason counter, in [`Reason::ALL`] order.
    pub fn reasons(&self) -> Vec<u64> {
        let snap = self.counters.snapshot(&[], &[]).unwrap();
        Reason::ALL.iter().map(|r| snap.reason(*r)).collect()
    }

    /// Per-service traffic of every service, by name.
    pub fn all_traffic(&self) -> Vec<(String, Traffic)> {
        let ids: Vec<u32> = self.plan.services.iter().map(|s| s.info.id).collect();
        let snap = self.counters.snapshot(&ids, &[]).unwrap();
        self.plan
            .services
            .iter()
            .map(|s| (s.name.clone(), snap.services[&s.info.id]))
            .collect()
    }

    /// Set the data path's run-time switches (`SETTINGS`).
    pub fn set_settings(&mut self, settings: lb_common::Settings) {
        let map = self.ebpf.map_mut(names::SETTINGS).expect("SETTINGS map");
        let mut a: aya::maps::Array<&mut MapData, lb_common::Settings> =
            aya::maps::Array::try_from(map).expect("SETTINGS is an array");
        a.set(0, settings, 0).expect("write settings");
    }

    /// Set interface `ifindex`'s MAC in `IFACE_MACS`, as the daemon does for
    /// the interfaces it attaches to (the lab leaves the check off).
    pub fn set_iface_mac(&mut self, ifindex: u32, mac: [u8; 6]) {
        let map = self
            .ebpf
            .map_mut(names::IFACE_MACS)
            .expect("IFACE_MACS map");
        let mut a: aya::maps::Array<&mut MapData, lb_common::IfaceMac> =
            aya::maps::Array::try_from(map).expect("IFACE_MACS is an array");
        let v = lb_common::IfaceMac {
            mac,
            set: 1,
            _pad: 0,
        };
        a.set(ifindex, v, 0).expect("write IFACE_MACS");
    }

    /// Set an address's `VIP_F_*` flags, as a plan would.
    pub fn set_vip(&mut self, addr: [u8; 4], flags: u32) {
        use xdplb::dataplane::Dataplane as _;
        self.dp
            .set_vip(u32::from_ne_bytes(addr), lb_common::VipInfo { flags })
            .expect("write VIPS");
    }

    /// Write a flow-table entry directly (a flow some earlier state left).
    pub fn put_flow(&mut self, key: FlowKey, value: FlowValue) {
        let map = self.ebpf.map_mut(names::FLOWS).expect("FLOWS map");
        let mut flows: HashMap<&mut MapData, FlowKey, FlowValue> =
            HashMap::try_from(map).expect("FLOWS is a hash map");
        flows.insert(key, value, 0).expect("write flow");
    }

    /// Whether LRU table `name`, of values `V` and keyed by `FlowKey` (the
    /// flow, embryonic and reverse-NAT tables), holds `key`. A lookup from
    /// userspace does not refresh the entry's place in the LRU.
    pub fn holds<V: aya::Pod>(&self, name: &str, key: FlowKey) -> bool {
        let map = self.ebpf.map(name).expect("flow-keyed map");
        let table: HashMap<&MapData, FlowKey, V> =
            HashMap::try_from(map).expect("a hash map keyed by FlowKey");
        table.get(&key, 0).is_ok()
    }

    /// Whether the connection under `key` is half-open: in `EMBRYOS`, or
    /// in `FLOWS` with its SYN and no ACK yet (while the half-open budget
    /// lasts, a SYN starts it there).
    pub fn half_open(&self, key: FlowKey) -> bool {
        use lb_common::{FLOW_F_ESTABLISHED, FLOW_F_SYN, FlowValue, names};
        self.holds::<FlowValue>(names::EMBRYOS, key)
            || self
                .get::<FlowValue>(names::FLOWS, key)
                .is_some_and(|v| v.flags & (FLOW_F_SYN | FLOW_F_ESTABLISHED) == FLOW_F_SYN)
    }

    /// Whether the connection under `key` is established: in `FLOWS` with
    /// the client's ACK seen, and not in `EMBRYOS`.
    pub fn established(&self, key: FlowKey) -> bool {
        use lb_common::{FLOW_F_ESTABLISHED, FlowValue, names};
        !self.holds::<FlowValue>(names::EMBRYOS, key)
            && self
                .get::<FlowValue>(names::FLOWS, key)
                .is_some_and(|v| v.flags & FLOW_F_ESTABLISHED != 0)
    }

    /// The value table `name` (as [`Lab::holds`]) holds under `key`.
    pub fn get<V: aya::Pod>(&self, name: &str, key: FlowKey) -> Option<V> {
        let map = self.ebpf.map(name).expect("flow-keyed map");
        let table: HashMap<&MapData, FlowKey, V> =
            HashMap::try_from(map).expect("a hash map keyed by FlowKey");
        table.get(&key, 0).ok()
    }

    /// Set backend `id`'s least_conn active-connection estimate.
    pub fn set_conns(&mut self, id: u32, conns: u64) {
        let map = self
            .ebpf
            .map_mut(names::BACKEND_CONNS)
            .expect("BACKEND_CONNS map");
        let mut a: aya::maps::Array<&mut MapData, u64> =
            aya::maps::Array::try_from(map).expect("BACKEND_CONNS is an array");
        a.set(id, conns, 0).expect("write BACKEND_CONNS");
    }

    /// Backend `id`'s least_conn active-connection estimate.
    pub fn conns(&self, id: u32) -> u64 {
        let map = self
            .ebpf
            .map(names::BACKEND_CONNS)
            .expect("BACKEND_CONNS map");
        let a: aya::maps::Array<&MapData, u64> =
            aya::maps::Array::try_from(map).expect("BACKEND_CONNS is an array");
        a.get(&id, 0).expect("read BACKEND_CONNS")
    }

    /// Run the program once on `frame`, arriving where its sender is: from
    /// a backend's MAC on the backends' link (`fxc`), from anything else on
    /// the clients' (`fxa`). (The data path takes a NAT reply only from
    /// where its backend is.)
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let from_backend = frame.len() >= 12 && frame[6..11] == crate::backend_mac(0)[..5];
        let ingress = crate::wire::ifindex(if from_backend { "fxc" } else { "fxa" });
        self.run_on(frame, Some(ingress))
    }

    /// Run the program once on `frame` arriving on interface `ingress`.
    pub fn run_on(&mut self, frame: &[u8], ingress: Option<u32>) -> (u32, Vec<u8>) {
        let ctx = ingress.map(|i| xdp_md(frame.len(), i));
        let prog = bpf::xdp_program(&mut self.ebpf, names::PROGRAM).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ctx.as_deref(),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}

/// A `struct xdp_md` for BPF_PROG_TEST_RUN: no metadata (data = 0,
/// data_meta = 0), data_end = the frame's length, the ingress interface,
/// RX queue 0 and no egress interface (the kernel insists on all of that).
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}
