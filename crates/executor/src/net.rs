//! Per-sandbox network namespaces, veth pairs and the host firewall.
//!
//! Sandbox `n` gets the /30 `10.200.0.0/16 + 4n`: the host end of its veth
//! pair (`sbx{n}h`) is `.1`, the sandbox end (`sbx{n}c`, inside netns
//! `sbx-{id}`) is `.2`. Sandboxes reach the internet through NAT, but not
//! each other, the host's services or private networks.

use crate::cmd::run;
use crate::rtnl::{self, Rtnl};
use crate::Error;
use std::net::Ipv4Addr;

/// Base of the sandbox address range (a /16).
const BASE: [u8; 2] = [10, 200];
/// How many /30 subnets fit in the /16.
pub const MAX_SLOTS: u32 = 16_384;
const RANGE: &str = "10.200.0.0/16";
/// Destinations a sandbox may never reach, whatever its policy.
const BLOCKED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "224.0.0.0/4",
];

/// The addresses of one sandbox's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub u32);

impl Slot {
    fn addr(self, host_part: u8) -> Ipv4Addr {
        let base = self.0 * 4;
        Ipv4Addr::new(
            BASE[0],
            BASE[1],
            (base >> 8) as u8,
            (base & 0xff) as u8 + host_part,
        )
    }
    pub fn host_ip(self) -> Ipv4Addr {
        self.addr(1)
    }
    pub fn sandbox_ip(self) -> Ipv4Addr {
        self.addr(2)
    }
    pub fn host_if(self) -> String {
        format!("sbx{}h", self.0)
    }
    pub fn sandbox_if(self) -> String {
        format!("sbx{}c", self.0)
    }
    /// Parses a host-side interface name back into its slot.
    pub fn from_host_if(name: &str) -> Option<Slot> {
        name.strip_prefix("sbx")?
            .strip_suffix('h')?
            .parse()
            .ok()
            .filter(|n| *n < MAX_SLOTS)
            .map(Slot)
    }
}

pub fn netns_name(id: &str) -> String {
    format!("sbx-{id}")
}

pub fn netns_path(id: &str) -> std::path::PathBuf {
    format!("/var/run/netns/{}", netns_name(id)).into()
}

/// Creates netns `sbx-{id}` with the veth pair of `slot`, unconfigured.
/// Fails with [`Error::SlotTaken`] when another server holds the slot.
pub async fn create_link(id: &str, slot: Slot) -> Result<(), Error> {
    let path = netns_path(id);
    let (h, c) = (slot.host_if(), slot.sandbox_if());
    let what = format!("netns {} with link {h}", netns_name(id));
    let made = rtnl::on_own_thread(move || {
        // The host's socket first: making the netns moves this thread into it.
        let mut host = Rtnl::open()?;
        rtnl::add_netns(&path)?;
        let ns = std::fs::File::open(&path);
        let linked = ns.and_then(|ns| host.add_veth(&h, &c, &ns));
        if linked.is_err() {
            let _ = rtnl::del_netns(&path);
        }
        linked
    })
    .await;
    match made {
        Ok(()) => Ok(()),
        // The interface name is the host-wide claim on the slot: another
        // sbx server on this host may hold it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && netns_free(id) => {
            Err(Error::SlotTaken(slot.0))
        }
        Err(e) => Err(host_error(what, e)),
    }
}

/// Whether no netns of sandbox `id` exists (a failed [`create_link`] left none).
fn netns_free(id: &str) -> bool {
    !netns_path(id).exists()
}

fn host_error(what: String, e: std::io::Error) -> Error {
    Error::Host {
        what,
        reason: e.to_string(),
    }
}

/// Addresses both ends, adds the default route and the sandbox's firewall
/// rule. On failure the netns and link are removed.
///
/// `aliases` are further addresses of the sandbox's interface: the
/// addresses a restored memory image had where it was captured. Its
/// sockets stay bound to them (gVisor cannot restore a socket whose
/// address has no route); new connections use the slot's own address.
pub async fn configure(
    id: &str,
    slot: Slot,
    allow_internet: bool,
    aliases: &[Ipv4Addr],
) -> Result<(), Error> {
    let h = slot.host_if();
    let result = async {
        let path = netns_path(id);
        let aliases: Vec<Ipv4Addr> = aliases
            .iter()
            .copied()
            .filter(|a| *a != slot.sandbox_ip())
            .collect();
        let (host_if, c) = (h.clone(), slot.sandbox_if());
        rtnl::on_own_thread(move || {
            let mut host = Rtnl::open()?;
            host.add_address(&host_if, slot.host_ip(), 30)?;
            host.set_up(&host_if)?;
            rtnl::enter_netns(&path)?;
            let mut inside = Rtnl::open()?;
            inside.add_address(&c, slot.sandbox_ip(), 30)?;
            inside.set_up(&c)?;
            inside.set_up("lo")?;
            inside.add_default_route(slot.host_ip())?;
            for a in aliases {
                inside.add_address(&c, a, 32)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| host_error(format!("configuring {h}"), e))?;
        if !allow_internet {
            run(
                "iptables",
                &["-w", "-I", CHAIN_FWD, "1", "-i", &h, "-j", "DROP"],
            )
            .await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        destroy(id, slot).await;
    }
    result
}

/// Removes the netns, its veth pair and any per-sandbox firewall rule. Best effort, idempotent.
pub async fn destroy(id: &str, slot: Slot) {
    let h = slot.host_if();
    while run("iptables", &["-w", "-D", CHAIN_FWD, "-i", &h, "-j", "DROP"])
        .await
        .is_ok()
    {}
    let path = netns_path(id);
    let _ = rtnl::on_own_thread(move || {
        let _ = Rtnl::open().and_then(|mut host| host.del_link(&h));
        rtnl::del_netns(&path)
    })
    .await;
}

/// Names of netns that sbx created (`sbx-*`), as sandbox ids.
pub async fn list_netns() -> Result<Vec<String>, Error> {
    let out = run("ip", &["netns", "list"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.strip_prefix("sbx-"))
        .map(str::to_string)
        .collect())
}

const CHAIN_FWD: &str = "SBX-FORWARD";
const CHAIN_IN: &str = "SBX-INPUT";
const CHAIN_NAT: &str = "SBX-POSTROUTING";

/// Installs the host firewall rules shared by every sandbox. Idempotent, and
/// safe beside other sbx servers on the same host: rules are added when
/// missing, never flushed.
pub async fn install_firewall() -> Result<(), Error> {
    tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "1").await?;
    // Traffic to a sandbox address with no sandbox behind it (gone, not yet
    // made) dies here instead of following the default route off the host:
    // each live sandbox's /30 is more specific and wins.
    run("ip", &["route", "replace", "blackhole", RANGE]).await?;
    for (table, chain, parent) in [
        ("filter", CHAIN_FWD, "FORWARD"),
        ("filter", CHAIN_IN, "INPUT"),
        ("nat", CHAIN_NAT, "POSTROUTING"),
    ] {
        let _ = run("iptables", &["-w", "-t", table, "-N", chain]).await;
        if run("iptables", &["-w", "-t", table, "-C", parent, "-j", chain])
            .await
            .is_err()
        {
            run(
                "iptables",
                &["-w", "-t", table, "-I", parent, "1", "-j", chain],
            )
            .await?;
        }
    }
    let established = [
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ];
    let mut rules: Vec<(&str, &str, Vec<String>)> = Vec::new();
    let v = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    // Replies to connections the host opened (the proxy) come back in; nothing else does.
    rules.push((
        "filter",
        CHAIN_IN,
        v(&[&["-i", "sbx+"][..], &established[..]].concat()),
    ));
    rules.push(("filter", CHAIN_IN, v(&["-i", "sbx+", "-j", "DROP"])));
    rules.push((
        "filter",
        CHAIN_FWD,
        v(&[&["-o", "sbx+"][..], &established[..]].concat()),
    ));
    rules.push((
        "filter",
        CHAIN_FWD,
        v(&["-i", "sbx+", "-o", "sbx+", "-j", "DROP"]),
    ));
    // The host's resolvers may sit in a private range: let DNS through to them.
    for ns in host_nameservers() {
        for proto in ["udp", "tcp"] {
            let ns = ns.to_string();
            rules.push((
                "filter",
                CHAIN_FWD,
                v(&[
                    "-i", "sbx+", "-d", &ns, "-p", proto, "--dport", "53", "-j", "ACCEPT",
                ]),
            ));
        }
    }
    for net in BLOCKED {
        rules.push((
            "filter",
            CHAIN_FWD,
            v(&["-i", "sbx+", "-d", net, "-j", "DROP"]),
        ));
    }
    rules.push(("filter", CHAIN_FWD, v(&["-i", "sbx+", "-j", "ACCEPT"])));
    rules.push((
        "nat",
        CHAIN_NAT,
        v(&["-s", RANGE, "!", "-d", RANGE, "-j", "MASQUERADE"]),
    ));
    for (table, chain, rule) in &rules {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let check = [&["-w", "-t", table, "-C", chain][..], &rule[..]].concat();
        if run("iptables", &check).await.is_err() {
            let add = [&["-w", "-t", table, "-A", chain][..], &rule[..]].concat();
            run("iptables", &add).await?;
        }
    }
    Ok(())
}

/// IPv4 nameservers of the host a sandbox can use (loopback ones cannot be reached).
pub fn host_nameservers() -> Vec<Ipv4Addr> {
    parse_nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

fn parse_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

/// The resolv.conf sandboxes get: the host's usable resolvers.
pub fn sandbox_resolv_conf() -> String {
    let ns = host_nameservers();
    if ns.is_empty() {
        return "# the host has no resolver a sandbox can reach\n".into();
    }
    ns.iter().map(|a| format!("nameserver {a}\n")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_resolvers_are_skipped() {
        let text = "# c\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nnameserver ::1\nsearch x\n";
        assert_eq!(
            super::parse_nameservers(text),
            vec![Ipv4Addr::new(10, 1, 2, 3)]
        );
    }

    use super::*;

    #[test]
    fn slots_map_to_disjoint_subnets() {
        assert_eq!(Slot(0).host_ip(), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(Slot(0).sandbox_ip(), Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(Slot(1).host_ip(), Ipv4Addr::new(10, 200, 0, 5));
        assert_eq!(Slot(64).sandbox_ip(), Ipv4Addr::new(10, 200, 1, 2));
        assert_eq!(
            Slot(MAX_SLOTS - 1).sandbox_ip(),
            Ipv4Addr::new(10, 200, 255, 254)
        );
    }

    #[test]
    fn interface_names_round_trip() {
        let s = Slot(4711);
        assert_eq!(Slot::from_host_if(&s.host_if()), Some(s));
        assert!(s.host_if().len() <= 15);
        assert_eq!(Slot::from_host_if("sbx12c"), None);
        assert_eq!(Slot::from_host_if("eth0"), None);
    }

    /// Needs root; `ip` checks what the netlink requests made.
    #[tokio::test]
    async fn configure_addresses_both_ends_and_routes_through_the_host() {
        let slot = Slot(MAX_SLOTS - 4);
        let id = "unittestconfigure";
        destroy(id, slot).await;
        create_link(id, slot).await.unwrap();
        let alias = Ipv4Addr::new(10, 200, 9, 2);
        configure(id, slot, true, &[alias, slot.sandbox_ip()])
            .await
            .unwrap();
        let ns = netns_name(id);
        let inside = run("ip", &["-n", &ns, "-o", "-4", "addr", "show"])
            .await
            .unwrap();
        assert!(
            inside.contains(&format!("{}/30", slot.sandbox_ip())),
            "{inside}"
        );
        assert!(inside.contains(&format!("{alias}/32")), "{inside}");
        assert!(inside.contains("127.0.0.1/8"), "lo is up: {inside}");
        let route = run("ip", &["-n", &ns, "route", "show", "default"])
            .await
            .unwrap();
        assert!(
            route.contains(&format!("via {}", slot.host_ip())),
            "{route}"
        );
        let host = run("ip", &["-o", "-4", "addr", "show", "dev", &slot.host_if()])
            .await
            .unwrap();
        assert!(host.contains(&format!("{}/30", slot.host_ip())), "{host}");
        let link = run("ip", &["-o", "link", "show", &slot.host_if()])
            .await
            .unwrap();
        assert!(link.contains("state UP") || link.contains(",UP"), "{link}");
        // A second configuration fails (the addresses exist) and removes all.
        assert!(configure(id, slot, true, &[]).await.is_err());
        assert!(!netns_path(id).exists());
        assert!(run("ip", &["link", "show", &slot.host_if()]).await.is_err());
    }

    /// Needs root and `ip`, like every launch.
    #[tokio::test]
    async fn links_are_made_once_per_slot_and_a_taken_slot_leaves_nothing() {
        let slot = Slot(MAX_SLOTS - 3);
        let (a, b) = ("unittestlinka", "unittestlinkb");
        destroy(a, slot).await;
        destroy(b, slot).await;
        create_link(a, slot).await.unwrap();
        assert!(netns_path(a).exists());
        let out = run("ip", &["-n", &netns_name(a), "-o", "link", "show"])
            .await
            .unwrap();
        assert!(out.contains(&slot.sandbox_if()), "{out}");
        // Another sandbox (or server) asking for the same slot is told so,
        // and its half-made netns is gone.
        match create_link(b, slot).await {
            Err(Error::SlotTaken(n)) => assert_eq!(n, slot.0),
            other => panic!("expected SlotTaken, got {other:?}"),
        }
        assert!(!netns_path(b).exists());
        destroy(a, slot).await;
        assert!(!netns_path(a).exists());
        assert!(run("ip", &["link", "show", &slot.host_if()]).await.is_err());
    }
}
