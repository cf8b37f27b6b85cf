//! The load balancer's pinned state and configuration errors: a pinned LB
//! and Decap reopen with their state (and keep running without their
//! process), a reopen repairs what a killed editor left, and bad
//! configurations get typed errors with a fix. Needs root; fails (does not
//! skip) without it.

mod common {
    pub mod lb;
    pub mod scratch;
}

use std::net::IpAddr;

use common::lb::*;
use common::scratch::ScratchDir;
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::{ensure_bpffs, NetNs};
use xdpguard::{BackendAddr, Decap, Flow, ForwardingMode, LbError, LoadBalancer, Protocol, Vip, VipConfig, XdpAction};

#[test]
fn a_pinned_lb_reopens_with_its_state() {
    let dir = ScratchDir::bpffs("lbpin");
    let vn = VerdictNet::new("vpin", 3);
    let (eth0, mac) = (vn.eth0, vn.eth0_mac);
    let d = dir.path().to_owned();
    vn.lb.run(move || {
        let lb = LoadBalancer::builder()
            .redirect_interface("eth0")
            .redirect_interface("eth1")
            .max_vips(8)
            .max_backends(32)
            .connections(1024)
            .pin(&d)
            .load()
            .unwrap();
        let vip = Vip::tcp(sa(VIP_V4, 80));
        vip_with(&lb, vip, VipConfig::new(ForwardingMode::L2Dsr).table_size(16381), &backends_v4(3));
        lb.set_weight(&vip, IpAddr::V4(backend_v4(2)), 5).unwrap();
        let input = frame(mac, client(1), addr_port(&vip), Protocol::Tcp, true, PAYLOAD);
        assert_eq!(lb.test_run_on(&input, eth0).unwrap().action, XdpAction::Redirect);
        // Another handle (as another process would).
        let again = LoadBalancer::open_pinned(&d).unwrap();
        assert_eq!(again.vips().unwrap(), lb.vips().unwrap());
        assert_eq!(again.backends(&vip).unwrap(), lb.backends(&vip).unwrap());
        assert_eq!(again.vip_stats(&vip).unwrap().traffic.packets, 1);
        for i in 0..50 {
            let f = Flow::new(client(i), addr_port(&vip), Protocol::Tcp);
            assert_eq!(again.backend_for(&vip, &f).unwrap(), lb.backend_for(&vip, &f).unwrap());
        }
        // Edits through one handle are seen by the other.
        again.remove_backend(&vip, IpAddr::V4(backend_v4(1))).unwrap();
        assert_eq!(lb.backends(&vip).unwrap().len(), 2);
        assert!(matches!(
            LoadBalancer::builder().pin(&d).load(),
            Err(xdpguard::Error::Pin(xdpguard::PinError::InUse { .. }))
        ));
        assert_eq!(again.test_run_on(&input, eth0).unwrap().action, XdpAction::Redirect);
        drop(lb);
        again.unpin().unwrap();
        assert!(!d.exists(), "unpin removes the directory");
        assert!(matches!(
            LoadBalancer::open_pinned(&d),
            Err(xdpguard::Error::Pin(xdpguard::PinError::NotFound { .. }))
        ));
    });
}

#[test]
fn a_pinned_decap_keeps_running_without_its_process() {
    let dir = ScratchDir::bpffs("decappin");
    let lb_dir = ScratchDir::bpffs("decappinlb");
    let vn = VerdictNet::new("vdpin", 1);
    let (eth0, mac) = (vn.eth0, vn.eth0_mac);
    let (d, lb_d) = (dir.path().to_owned(), lb_dir.path().to_owned());
    vn.lb.run(move || {
        let lb = lb();
        let vip = Vip::tcp(sa(VIP_V4, 80));
        vip_with(&lb, vip, VipConfig::new(ForwardingMode::Ipip), &backends_v4(1));
        let input = frame(mac, client(1), addr_port(&vip), Protocol::Tcp, true, PAYLOAD);
        let enc = lb.test_run_on(&input, eth0).unwrap().frame;

        let decap = Decap::builder()
            .interface("eth1")
            .mode(xdpguard::AttachMode::Native)
            .local(IpAddr::V4(backend_v4(1)))
            .pin(&d)
            .attach()
            .unwrap();
        assert_eq!(decap.pin_path(), Some(d.as_path()));
        assert_eq!(decap.test_run(&enc).unwrap().frame[12..], input[12..]);
        drop(decap); // as when its process exits

        let again = Decap::open_pinned(&d).unwrap();
        let at = again.attachments();
        assert_eq!((at.len(), at[0].interface.as_str(), at[0].mode), (1, "eth1", xdpguard::AttachMode::Native));
        assert_eq!(again.locals(), vec![IpAddr::V4(backend_v4(1))]);
        assert_eq!(again.stats().unwrap().decapsulated.packets, 1, "counters survive");
        again.add_local(IpAddr::V4(backend_v4(2))).unwrap();
        assert_eq!(Decap::open_pinned(&d).unwrap().locals().len(), 2, "edits are shared");
        // Full at 64: a typed error that names the limit; one it holds is no change.
        for i in 0..62u16 {
            again.add_local(IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xdec, 0, 0, 0, 0, i + 1))).unwrap();
        }
        let more = IpAddr::V6("2001:db8:dec::ffff".parse().unwrap());
        let err = again.add_local(more).unwrap_err();
        assert!(matches!(err, xdpguard::LbError::DecapFull { capacity: 64 }), "{err:?}");
        assert!(err.to_string().contains("full (64 addresses"), "{err}");
        again.add_local(IpAddr::V4(backend_v4(2))).unwrap();
        for i in 0..62u16 {
            again.remove_local(IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xdec, 0, 0, 0, 0, i + 1))).unwrap();
        }
        let out = again.test_run(&enc).unwrap();
        assert_eq!((out.action, &out.frame[12..]), (XdpAction::Pass, &input[12..]));

        // Not a decap directory, or none: typed errors.
        let _pinned_lb = LoadBalancer::builder().pin(&lb_d).load().unwrap();
        let err = Decap::open_pinned(&lb_d).unwrap_err();
        assert!(matches!(err, xdpguard::Error::Pin(xdpguard::PinError::NotOurs { .. })), "{err:?}");
        // It names what is there, and the command for it.
        assert!(err.to_string().contains("it holds an xdpguard load balancer: use `xdpguard-lb`"), "{err}");
        again.unpin().unwrap();
        assert!(!d.exists(), "unpin removes the directory");
        assert!(matches!(Decap::open_pinned(&d), Err(xdpguard::Error::Pin(xdpguard::PinError::NotFound { .. }))));
        // The link went with the pins: the interface takes a new program.
        let fresh = Decap::builder().interface("eth1").mode(xdpguard::AttachMode::Native).attach().unwrap();
        assert_eq!(fresh.attachments().len(), 1);
    });
}

/// What a process killed mid-edit leaves behind (the "edit in progress"
/// mark set, and a VIP's Maglev table that disagrees with its backends),
/// written straight into the pinned maps; reopening must republish the
/// tables so the kernel picks what `backend_for` predicts again.
#[test]
fn reopening_repairs_an_lb_whose_editor_died() {
    use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
    use std::os::fd::{AsFd, AsRawFd};
    /// The offset of `dirty` in the config's `struct xdpg_header`, which
    /// starts the config (src/bpf/common.h; asserted in src/core/maps.rs).
    const DIRTY_OFFSET: usize = 8;

    let dir = ScratchDir::bpffs("lbrepair");
    let vn = VerdictNet::new("vrep", 3);
    let (eth0, mac, eth1_mac) = (vn.eth0, vn.eth0_mac, vn.eth1_mac);
    let d = dir.path().to_owned();
    vn.lb.run(move || {
        let lb = LoadBalancer::builder()
            .redirect_interface("eth0")
            .redirect_interface("eth1")
            .ipip_source(IPIP_SRC_V4.parse().unwrap())
            .pin(&d)
            .load()
            .unwrap();
        let vip = Vip::tcp(sa(VIP_V4, 80));
        vip_with(&lb, vip, VipConfig::new(ForwardingMode::Ipip).table_size(1021), &backends_v4(3));
        // Kernel and library agree on every new flow (a SYN always asks Maglev).
        let agree = |lb: &LoadBalancer| {
            (0..200u16).all(|i| {
                let input = frame(mac, client(i), addr_port(&vip), Protocol::Tcp, true, PAYLOAD);
                let out = lb.test_run_on(&input, eth0).unwrap();
                let flow = Flow::new(client(i), addr_port(&vip), Protocol::Tcp);
                let chosen = lb.backend_for(&vip, &flow).unwrap().unwrap();
                let osrc = lb.ipip_source_for(&vip, &flow, chosen.ip).unwrap().unwrap();
                out.frame == ipip(&input, osrc, chosen.ip, eth1_mac, backend_mac(backend_index(chosen))).to_vec()
            })
        };
        assert!(agree(&lb));
        drop(lb);

        // The crash: a stale table (every slot on one backend) and the mark.
        let outer = MapHandle::from_pinned_path(d.join("xdpg_lb_tables")).unwrap();
        let slot = outer.keys().next().expect("the VIP's table");
        let live = outer.lookup(&slot, MapFlags::ANY).unwrap().unwrap();
        let live = MapHandle::from_map_id(u32::from_ne_bytes(live[..4].try_into().unwrap())).unwrap();
        let one_backend = live.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_sys::BPF_F_INNER_MAP,
            ..Default::default()
        };
        let stale = MapHandle::create(MapType::Array, Some("stale"), 4, 4, 1021, &opts).unwrap();
        for k in 0..1021u32 {
            stale.update(&k.to_ne_bytes(), &one_backend, MapFlags::ANY).unwrap();
        }
        let make_stale =
            || outer.update(&slot, &(stale.as_fd().as_raw_fd() as u32).to_ne_bytes(), MapFlags::ANY).unwrap();
        make_stale();
        let unmarked = LoadBalancer::open_pinned(&d).unwrap();
        assert!(!agree(&unmarked), "the stale table is live (and nothing repairs it without the mark)");
        drop(unmarked);
        let cfg = MapHandle::from_pinned_path(d.join("xdpg_lb_cfg")).unwrap();
        let mark = || {
            let mut value = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
            value[DIRTY_OFFSET..DIRTY_OFFSET + 4].copy_from_slice(&1u32.to_ne_bytes());
            cfg.update(&0u32.to_ne_bytes(), &value, MapFlags::ANY).unwrap();
        };
        mark();

        let input = frame(mac, client(7), addr_port(&vip), Protocol::Tcp, true, PAYLOAD);
        let repaired = LoadBalancer::open_pinned(&d).expect("reopen repairs");
        let value = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
        assert_eq!(value[DIRTY_OFFSET..DIRTY_OFFSET + 4], [0; 4], "the mark is cleared");
        assert_eq!(repaired.backends(&vip).unwrap().len(), 3);
        assert!(agree(&repaired), "tables republished from the backends");
        assert_eq!(repaired.test_run_on(&input, eth0).unwrap().action, XdpAction::Redirect);

        // The same crash under a handle open all along (the health agent):
        // its next read repairs it, where its next edit used to clear the
        // mark and leave the stale table live.
        make_stale();
        mark();
        let live_table = || outer.lookup(&slot, MapFlags::ANY).unwrap().unwrap();
        let stale_id = live_table();
        assert_eq!(repaired.backends(&vip).unwrap().len(), 3);
        assert_ne!(live_table(), stale_id, "the read republished the VIP's table");
        let value = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
        assert_eq!(value[DIRTY_OFFSET..DIRTY_OFFSET + 4], [0; 4], "the mark is cleared by the read");
        assert!(agree(&repaired), "the long-lived handle republished the tables");
        repaired.unpin().unwrap();
    });
}

// ---- errors ----------------------------------------------------------------------

#[test]
fn configuration_errors_are_typed_with_a_fix() {
    ensure_bpffs();
    let ns = NetNs::new("verr");
    // A subnet, for its broadcast address (on a veth: the dummy module may be missing).
    ns.ip(&["link", "add", "sub0", "type", "veth", "peer", "name", "sub1"]);
    ns.ip(&["addr", "add", "198.51.100.254/24", "dev", "sub0"]);
    ns.ip(&["link", "set", "sub0", "up"]);
    ns.run(|| {
        let lb = LoadBalancer::builder().max_vips(2).max_backends(4).connections(64).load().unwrap();
        let vip = Vip::tcp(sa(VIP_V4, 80));
        let e = lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr).table_size(65536)).unwrap_err();
        assert!(matches!(e, LbError::TableSizeNotPrime { suggestion: 65537, .. }), "{e}");
        assert!(e.to_string().contains("65537"));
        assert!(matches!(
            lb.add_vip(vip, VipConfig::default().table_size(5)),
            Err(LbError::TableSizeOutOfRange { .. })
        ));
        assert!(matches!(lb.add_backend(&vip, IpAddr::V4(backend_v4(1)), 1), Err(LbError::VipNotFound { .. })));
        lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr)).unwrap();
        lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr)).unwrap(); // same: no change
        let e = lb.add_vip(vip, VipConfig::new(ForwardingMode::Nat)).unwrap_err();
        assert!(matches!(e, LbError::ConflictingVip { .. }), "{e}");
        assert!(e.to_string().contains("remove_vip"));
        let e = lb.add_backend(&vip, IpAddr::V6(backend_v6(1)), 1).unwrap_err();
        assert!(matches!(e, LbError::Unsupported { .. }), "{e}");
        let e = lb.add_backend(&vip, sa(backend_v4(1), 8080), 1).unwrap_err();
        assert!(matches!(e, LbError::Unsupported { .. }), "DSR cannot change ports: {e}");
        // Port 0 reads back as no port: refused, not stored as something else.
        let e = lb.add_backend(&vip, sa(backend_v4(1), 0), 1).unwrap_err();
        assert!(matches!(e, LbError::Unsupported { .. }) && e.to_string().contains("port 0"), "{e}");
        assert!(matches!(lb.add_backend(&vip, IpAddr::V4(backend_v4(1)), 70000), Err(LbError::InvalidWeight { .. })));
        // Addresses no packet reaches, or the VIP's own: refused, and named.
        for (bad, why) in [
            ("0.0.0.0", "the unspecified address"),
            ("127.0.0.1", "a loopback address"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
            ("203.0.113.10", "the VIP's own address"),
            ("169.254.7.7", "a link-local address"),
            ("fe80::f027:f7ff:fedc:2d2", "a link-local address"),
        ] {
            let e = lb.add_backend(&vip, bad.parse::<IpAddr>().unwrap(), 1).unwrap_err();
            assert!(matches!(e, LbError::Unsupported { .. }) && e.to_string().contains(why), "{bad}: {e}");
        }
        // The broadcast address of a subnet the LB is on: named, with the interface.
        let e = lb.add_backend(&vip, "198.51.100.255".parse::<IpAddr>().unwrap(), 1).unwrap_err();
        assert!(matches!(&e, LbError::BackendAtBroadcast { interface, .. } if interface == "sub0"), "{e:?}");
        assert_eq!(
            e.to_string(),
            "backend 198.51.100.255 of VIP tcp 203.0.113.10:80 is the broadcast address of sub0's subnet \
             198.51.100.0/24, which no packet is forwarded to; give the backend host's own address"
        );
        for (bad, why) in [
            ("[::]:80", "the unspecified address"),
            ("[fe80::10]:80", "a link-local address (reached only on its own link, not through a router)"),
            ("169.254.10.10:80", "a link-local address"),
        ] {
            let e = lb.add_vip(Vip::tcp(bad.parse().unwrap()), VipConfig::new(ForwardingMode::L2Dsr)).unwrap_err();
            assert!(matches!(e, LbError::Unsupported { .. }) && e.to_string().contains(why), "{bad}: {e}");
        }
        // Across families: the fix named is one that exists for the VIP's.
        let e = lb.add_backend(&vip, IpAddr::V6(backend_v6(1)), 1).unwrap_err();
        assert!(e.to_string().contains("use an IPv4 backend, or IPIP mode"), "{e}");
        let v6 = Vip::tcp(sa(VIP_V6, 80));
        lb.add_vip(v6, VipConfig::new(ForwardingMode::Nat)).unwrap();
        let e = lb.add_backend(&v6, IpAddr::V4(backend_v4(1)), 1).unwrap_err();
        assert!(e.to_string().contains("use an IPv6 backend (no mode carries IPv6 in IPv4)"), "{e}");
        lb.remove_vip(&v6).unwrap();
        // IPv4-mapped: one sentence, naming the IPv4 form to give instead.
        let mapped = Vip::tcp("[::ffff:203.0.113.43]:80".parse().unwrap());
        let e = lb.add_vip(mapped, VipConfig::new(ForwardingMode::L2Dsr)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VIP tcp [::ffff:203.0.113.43]:80 is at an IPv4-mapped IPv6 address, whose packets are IPv4 packets: \
             give it as IPv4 (203.0.113.43:80)"
        );
        let e = lb.add_backend(&vip, "::ffff:198.51.100.11".parse::<IpAddr>().unwrap(), 1).unwrap_err();
        assert!(matches!(e, LbError::Ipv4Mapped { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "backend ::ffff:198.51.100.11 of VIP tcp 203.0.113.10:80 is at an IPv4-mapped IPv6 address, whose packets \
             are IPv4 packets: give it as IPv4 (198.51.100.11)"
        );
        let e = lb.add_vip(Vip::tcp(sa(VIP_V4, 0)), VipConfig::new(ForwardingMode::L2Dsr)).unwrap_err();
        assert!(e.to_string().contains("port 0"), "{e}");
        assert_eq!(lb.vips().unwrap().len(), 1, "nothing added");
        lb.add_backend(&vip, IpAddr::V4(backend_v4(1)), 1).unwrap();
        assert!(matches!(
            lb.add_backend(&vip, IpAddr::V4(backend_v4(1)), 2),
            Err(LbError::BackendExists { weight: 1, .. })
        ));
        assert!(matches!(lb.set_weight(&vip, IpAddr::V4(backend_v4(2)), 2), Err(LbError::BackendNotFound { .. })));
        assert!(matches!(lb.remove_backend(&vip, IpAddr::V4(backend_v4(2))), Err(LbError::BackendNotFound { .. })));
        // A NAT backend named without the port it was added with: the one
        // meant is named.
        let nat = Vip::tcp(sa(VIP_V4, 8443));
        lb.add_vip(nat, VipConfig::new(ForwardingMode::Nat)).unwrap();
        let with_port = std::net::SocketAddr::new(IpAddr::V4(backend_v4(3)), 8080);
        lb.add_backend(&nat, with_port, 1).unwrap();
        let e = lb.set_weight(&nat, IpAddr::V4(backend_v4(3)), 0).unwrap_err();
        assert!(matches!(e, LbError::BackendNotFound { near: Some(n), .. } if n == with_port.into()), "{e:?}");
        assert!(e.to_string().contains(&format!("it has {with_port}")), "{e}");
        lb.remove_vip(&nat).unwrap();
        // A failed batch changes nothing.
        let e = lb.batch(&vip).add(IpAddr::V4(backend_v4(2)), 1).remove(IpAddr::V4(backend_v4(9))).apply().unwrap_err();
        assert!(matches!(e, LbError::BackendNotFound { .. }));
        assert_eq!(lb.backends(&vip).unwrap().len(), 1);
        let e = lb
            .batch(&vip)
            .add(IpAddr::V4(backend_v4(2)), 1)
            .add(IpAddr::V4(backend_v4(3)), 1)
            .add(IpAddr::V4(backend_v4(4)), 1)
            .add(IpAddr::V4(backend_v4(5)), 1)
            .apply()
            .unwrap_err();
        assert!(matches!(e, LbError::BackendTableFull { capacity: 4 }), "{e}");
        assert_eq!(lb.backends(&vip).unwrap().len(), 1);

        let ipip = Vip::tcp(sa(VIP_V6, 80));
        lb.add_vip(ipip, VipConfig::new(ForwardingMode::Ipip)).unwrap();
        let e = lb.add_backend(&ipip, IpAddr::V6(backend_v6(1)), 1).unwrap_err();
        assert!(matches!(e, LbError::IpipSourceUnset { family: 6 }), "{e}");
        assert!(e.to_string().contains("set_ipip_source"));
        lb.set_ipip_source(IPIP_SRC_V6.parse().unwrap()).unwrap();
        lb.add_backend(&ipip, IpAddr::V6(backend_v6(1)), 1).unwrap();
        assert!(matches!(lb.add_backend(&ipip, IpAddr::V4(backend_v4(1)), 1), Err(LbError::Unsupported { .. })));
        assert!(matches!(
            lb.add_vip(Vip::udp(sa(VIP2_V4, 53)), VipConfig::new(ForwardingMode::Nat)),
            Err(LbError::VipTableFull { capacity: 2 })
        ));
        lb.remove_vip(&ipip).unwrap();
        assert!(matches!(
            lb.add_vip(Vip::udp(sa(VIP2_V4, 53)), VipConfig::new(ForwardingMode::Nat).conntrack(false)),
            Err(LbError::Unsupported { .. })
        ));
        let small = Vip::udp(sa(VIP2_V4, 53));
        lb.add_vip(small, VipConfig::new(ForwardingMode::Nat).table_size(7)).unwrap();
        assert!(matches!(lb.add_backend(&small, IpAddr::V4(backend_v4(2)), 1), Err(LbError::TableTooSmall { .. })));
        let e = lb.backend_for(&vip, &Flow::new(client(1), sa(VIP_V4, 443), Protocol::Tcp)).unwrap_err();
        assert!(matches!(e, LbError::FlowMismatch { .. }), "{e}");
        assert!(matches!(lb.remove_vip(&ipip), Err(LbError::VipNotFound { .. })));
    });
}

/// A NAT backend address and port serve one VIP address and port: the
/// backend knows a connection by the client's address and port and its
/// own, and so does the reply translation, which holds no VIP. Every
/// configuration that would let two flows from one client address and port
/// share a backend address and port from two VIP addresses or ports is
/// refused with a typed error (nothing applied); the setups that keep them
/// apart are accepted, and their replies leave from their own VIPs.
#[test]
fn nat_backends_serve_one_vip_address_and_port() {
    in_lb_ns("vnatc", 3, |n| {
        let lb = lb();
        let nat = || VipConfig::new(ForwardingMode::Nat).table_size(1021);
        let (b1, b2, b3) = (IpAddr::V4(backend_v4(1)), IpAddr::V4(backend_v4(2)), IpAddr::V4(backend_v4(3)));
        let all_a = Vip::all_ports(IpAddr::V4(VIP_V4), Protocol::Tcp);
        let a443 = Vip::tcp(sa(VIP_V4, 443));
        let b443 = Vip::tcp(sa(VIP2_V4, 443));
        let all_b = Vip::all_ports(IpAddr::V4(VIP2_V4), Protocol::Tcp);
        for v in [all_a, a443, b443, all_b] {
            lb.add_vip(v, nat()).unwrap();
        }

        // An all-ports VIP's backend keeps each packet's port: no port of its own.
        let e = lb.add_backend(&all_a, sa(b1, 8080), 1).unwrap_err();
        assert!(matches!(e, LbError::NatPortOnAllPortsVip { vip, .. } if vip == all_a), "{e}");
        assert!(e.to_string().contains("give the backend without a port"), "{e}");
        lb.add_backend(&all_a, b1, 1).unwrap();

        // The single-port VIP of the same address may share the backend on
        // its own port (it takes 443 before the all-ports VIP does)...
        lb.add_backend(&a443, b1, 1).unwrap();
        // ... but not on another port, which the all-ports VIP reaches too.
        let e = lb.add_backend(&a443, sa(b1, 8080), 1).unwrap_err();
        match &e {
            LbError::NatBackendConflict { vip, backend, other, other_backend, at } => {
                assert_eq!((*vip, *other), (a443, all_a));
                assert_eq!((*backend, *other_backend), (BackendAddr::from(sa(b1, 8080)), BackendAddr::new(b1)));
                assert_eq!(at, &sa(b1, 8080).to_string());
            }
            other => panic!("expected NatBackendConflict, got {other:?}"),
        }
        assert!(e.to_string().contains("another backend port"), "{e}");

        // Two VIP addresses, one port, one backend address and port: refused.
        lb.add_backend(&a443, sa(b2, 8443), 1).unwrap();
        let e = lb.add_backend(&b443, sa(b2, 8443), 1).unwrap_err();
        assert!(matches!(e, LbError::NatBackendConflict { other, .. } if other == a443), "{e}");
        // The other VIP address keeping port 443 on b1: the all-ports VIP reaches b1:443 too.
        let e = lb.add_backend(&b443, b1, 1).unwrap_err();
        assert!(matches!(&e, LbError::NatBackendConflict { at, .. } if *at == sa(b1, 443).to_string()), "{e}");
        // Two all-ports VIPs on one backend address: every port collides.
        let e = lb.add_backend(&all_b, b1, 1).unwrap_err();
        assert!(matches!(&e, LbError::NatBackendConflict { at, .. } if at.contains("every port")), "{e}");
        // A failed batch changes nothing.
        let e = lb.batch(&b443).add(b3, 1).add(sa(b2, 8443), 1).apply().unwrap_err();
        assert!(matches!(e, LbError::NatBackendConflict { .. }), "{e}");
        assert!(lb.backends(&b443).unwrap().is_empty());

        // Accepted: another backend port, another protocol, another mode.
        lb.add_backend(&b443, sa(b2, 9443), 1).unwrap();
        let udp = Vip::udp(sa(VIP2_V4, 443));
        lb.add_vip(udp, nat()).unwrap();
        lb.add_backend(&udp, sa(b2, 8443), 1).unwrap();
        let dsr = Vip::tcp(sa(VIP2_V4, 80));
        lb.add_vip(dsr, VipConfig::new(ForwardingMode::L2Dsr).table_size(1021)).unwrap();
        lb.add_backend(&dsr, b1, 1).unwrap();
        // Once the other VIP lets go of the address and port, it is free.
        lb.remove_backend(&a443, sa(b2, 8443)).unwrap();
        lb.batch(&b443).remove(sa(b2, 9443)).add(sa(b2, 8443), 1).apply().unwrap();
        lb.batch(&a443).add(sa(b2, 9443), 1).remove(b1).apply().unwrap();

        // One client address and port to both VIPs' port 443 (as Linux may
        // pick it): two backend ports, two connections, and each reply
        // leaves from its own VIP.
        let mut t = FixtureTable::new(&lb, "NAT VIPs sharing a backend address");
        let src = client(7);
        for (vip, backend) in [(a443, sa(b2, 9443)), (b443, sa(b2, 8443))] {
            let sent = Pkt::new(src, addr_port(&vip), Protocol::Tcp, true);
            t.run(
                Fixture::new(format!("{src} to {vip}"), sent.frame(CLIENT_MAC, n.eth0_mac))
                    .on(n.eth0)
                    .action(XdpAction::Redirect)
                    .output(sent.to(backend).frame(n.eth1_mac, backend_mac(2))),
            );
        }
        for (vip, backend) in [(a443, sa(b2, 9443)), (b443, sa(b2, 8443))] {
            let reply = Pkt::new(backend, src, Protocol::Tcp, false);
            t.run(
                Fixture::new(
                    format!("the reply of {vip}'s flow leaves from {vip}"),
                    reply.frame(backend_mac(2), n.eth1_mac),
                )
                .on(n.eth1)
                .action(XdpAction::Redirect)
                .output(reply.from(addr_port(&vip)).frame(n.eth0_mac, CLIENT_MAC)),
            );
        }
        t.finish();
    });
}
