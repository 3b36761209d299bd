//! The few rtnetlink requests a launch makes (a veth pair, addresses, a
//! default route), sent from the server itself, and named network
//! namespaces made the way `ip netns add` makes them.
//!
//! Every program the server starts costs a launch several milliseconds of
//! fork and exec on its critical path; a netlink request costs microseconds.
//! All of it is blocking and meant for [`on_own_thread`]: entering a
//! namespace moves the calling thread, so that thread must end afterwards.

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

/// Where named network namespaces live (iproute2's convention).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs `f` on a thread of its own, which ends with it.
pub async fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// A route netlink socket in the namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, create: bool) -> io::Result<()> {
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        if create {
            nl.header.flags |= NLM_F_CREATE | NLM_F_EXCL;
        }
        self.seq += 1;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0; nl.header.length as usize];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = (reply.header.length as usize).clamp(1, rest.len());
                rest = &rest[len..];
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
            }
        }
    }

    /// `ip link add {name} type veth peer name {peer} netns {peer_netns}`.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: &File) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.into()),
            LinkAttribute::NetNsFd(peer_netns.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        self.request(RouteNetlinkMessage::NewLink(msg), true)
    }

    /// `ip link del {link}`.
    pub fn del_link(&mut self, link: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index_of(link)?;
        self.request(RouteNetlinkMessage::DelLink(msg), false)
    }

    /// `ip link set {link} up`.
    pub fn set_up(&mut self, link: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index_of(link)?;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), false)
    }

    /// `ip addr add {addr}/{prefix} dev {link}`.
    pub fn add_address(&mut self, link: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index_of(link)?;
        msg.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(addr)),
            AddressAttribute::Address(IpAddr::V4(addr)),
        ];
        self.request(RouteNetlinkMessage::NewAddress(msg), true)
    }

    /// `ip route add default via {gateway}`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
        self.request(RouteNetlinkMessage::NewRoute(msg), true)
    }
}

/// The index of interface `name` in the calling thread's namespace.
fn index_of(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        n => Ok(n),
    }
}

/// Makes `path` (under [`NETNS_DIR`]) a new, empty network namespace, like
/// `ip netns add`, and moves the calling thread into it. Fails with
/// `AlreadyExists` when the name is taken; on failure nothing is left.
pub fn add_netns(path: &Path) -> io::Result<()> {
    share_netns_dir()?;
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let made = unshare(CloneFlags::CLONE_NEWNET)
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .map_err(io::Error::from);
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Removes a namespace made by [`add_netns`] (what `ip netns del` does).
pub fn del_netns(path: &Path) -> io::Result<()> {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    std::fs::remove_file(path)
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let ns = File::open(path)?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Makes [`NETNS_DIR`] a shared mount point, as `ip netns add` does, so
/// that namespaces mounted in it are seen from other mount namespaces.
fn share_netns_dir() -> io::Result<()> {
    static SHARED: Mutex<bool> = Mutex::new(false);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if *shared {
        return Ok(());
    }
    std::fs::create_dir_all(NETNS_DIR)?;
    let share = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => {}
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: make it one.
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            share()?;
        }
        Err(e) => return Err(e.into()),
    }
    *shared = true;
    Ok(())
}
