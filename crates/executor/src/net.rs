//! Per-sandbox network namespaces, veth pairs and the host firewall.
//!
//! Sandbox `n` gets the /30 `10.200.0.0/16 + 4n`: the host end of its veth
//! pair (`sbx{n}h`) is `.1`, the sandbox end (`sbx{n}c`, inside netns
//! `sbx-{id}`) is `.2`. Sandboxes reach the internet through NAT, but not
//! each other, the host's services or private networks. A sandbox's own
//! policy ([`Egress`]) narrows that further in a chain of its own.

use crate::cmd::{run, run_with_input};
use crate::rtnl::{self, Rtnl};
use crate::Error;
pub use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
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

/// Where one sandbox may send traffic, within what every sandbox may reach
/// (never another sandbox, the host, private or link-local networks).
///
/// `allow_out` wins over `deny_out`, which wins over `allow_internet`: deny
/// `0.0.0.0/0` and allow one address to reach only that address. DNS to the
/// host's resolvers counts as traffic like any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    pub allow_internet: bool,
    #[serde(default)]
    pub allow_out: Vec<Ipv4Net>,
    #[serde(default)]
    pub deny_out: Vec<Ipv4Net>,
    /// Host names (`example.com`, `*.example.com`: lower case) the sandbox
    /// may resolve and reach (see [`crate::dns`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// Host names it may not resolve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_hosts: Vec<String>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            allow_internet: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
        }
    }
}

/// What the DNS guard does with a name a sandbox asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameVerdict {
    /// Resolved, and its addresses opened in the sandbox's firewall.
    Open,
    /// Resolved as asked (the firewall decides about its addresses).
    Resolve,
    /// Answered as not existing.
    Refuse,
}

/// Whether host pattern `pattern` (`example.com` or `*.example.com`)
/// covers `name` (lower case, no trailing dot). `*.example.com` covers
/// the subdomains of example.com, not example.com itself.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => name
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => name == pattern,
    }
}

impl Egress {
    /// The policy of entries as the API gives them (addresses, CIDR
    /// blocks, host names, `*.domain` patterns); `Err` names a bad entry.
    pub fn from_entries(
        allow_internet: bool,
        allow: &[String],
        deny: &[String],
    ) -> Result<Egress, String> {
        let mut egress = Egress {
            allow_internet,
            ..Egress::default()
        };
        for (entries, nets, hosts) in [
            (allow, &mut egress.allow_out, &mut egress.allow_hosts),
            (deny, &mut egress.deny_out, &mut egress.deny_hosts),
        ] {
            for entry in entries {
                match parse_destination(entry)? {
                    Destination::Net(n) => nets.push(n),
                    Destination::Host(h) => hosts.push(h),
                }
            }
        }
        Ok(egress)
    }

    /// Whether the policy names hosts: then a DNS guard answers the
    /// sandbox's lookups.
    pub fn names_hosts(&self) -> bool {
        !self.allow_hosts.is_empty() || !self.deny_hosts.is_empty()
    }

    /// What a lookup of `name` gets: an allowed name is resolved and
    /// opened (an allow wins over a deny, as for addresses); a denied one,
    /// or any other when the internet is off, is refused.
    pub fn name_verdict(&self, name: &str) -> NameVerdict {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.allow_hosts.iter().any(|p| host_matches(p, &name)) {
            NameVerdict::Open
        } else if !self.allow_internet || self.deny_hosts.iter().any(|p| host_matches(p, &name)) {
            NameVerdict::Refuse
        } else {
            NameVerdict::Resolve
        }
    }

    /// The `iptables-restore` input that adds the sandbox's chain and sends
    /// its traffic there first; `None` when the shared rules are its policy.
    fn rules(&self, slot: Slot) -> Option<String> {
        self.narrows().then(|| self.restore_input(slot, true))
    }

    /// Whether the sandbox has a chain of its own (the shared rules are not
    /// its whole policy).
    pub fn narrows(&self) -> bool {
        !self.allow_internet || !self.deny_out.is_empty()
    }

    /// The `iptables-restore --noflush` input that (re)writes the sandbox's
    /// chain whole (declaring it empties it) and, with `jump`, adds the
    /// jump to it.
    fn restore_input(&self, slot: Slot, jump: bool) -> String {
        let chain = slot.chain();
        let mut r = format!("*filter\n:{chain} - [0:0]\n");
        // Returning hands the packet to the shared rules, which still keep
        // every sandbox from private networks and from each other.
        for net in &self.allow_out {
            r += &format!("-A {chain} -d {net} -j RETURN\n");
        }
        for net in &self.deny_out {
            r += &format!("-A {chain} -d {net} -j {CHAIN_DENY}\n");
        }
        if !self.allow_internet {
            r += &format!("-A {chain} -j {CHAIN_DENY}\n");
        }
        if jump {
            r += &format!("-A {CHAIN_EGRESS} -i {} -j {chain}\n", slot.host_if());
        }
        r + "COMMIT\n"
    }

    /// Whether the policy lets the sandbox send to `dst` (what its chain
    /// decides; the shared rules may still refuse it).
    pub fn allows(&self, dst: Ipv4Addr) -> bool {
        if self.allow_out.iter().any(|n| n.contains(&dst)) {
            return true;
        }
        if self.deny_out.iter().any(|n| n.contains(&dst)) {
            return false;
        }
        self.allow_internet
    }
}

/// One `allow_out`/`deny_out` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Net(Ipv4Net),
    /// A host name or `*.domain` pattern, lower case.
    Host(String),
}

/// Parses one `allow_out`/`deny_out` entry: an IPv4 address, a CIDR block,
/// a host name or a `*.domain` pattern.
pub fn parse_destination(entry: &str) -> Result<Destination, String> {
    let entry = entry.trim();
    let parsed = match entry.split_once('/') {
        Some(_) => entry.parse::<Ipv4Net>().ok(),
        None => entry.parse::<Ipv4Addr>().ok().map(Ipv4Net::from),
    };
    if let Some(net) = parsed {
        return Ok(Destination::Net(net.trunc()));
    }
    if entry.contains(':') {
        return Err(format!(
            "{entry:?}: sandboxes have no IPv6; give an IPv4 address, a CIDR block or a host name"
        ));
    }
    let host = entry.trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if name.len() > 253 || numeric || !name.split('.').all(label_ok) {
        return Err(format!(
            "{entry:?} is not an IPv4 address, CIDR block (such as 203.0.113.7 or 198.51.100.0/24), host name or *.domain pattern"
        ));
    }
    Ok(Destination::Host(host))
}

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
    /// The firewall chain of the sandbox's own [`Egress`] policy.
    pub(crate) fn chain(self) -> String {
        format!("SBX-N{}", self.0)
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

/// Whether no process is in the netns of sandbox `id` (or there is none).
pub async fn netns_unused(id: &str) -> bool {
    run("ip", &["netns", "pids", &netns_name(id)])
        .await
        .map(|pids| pids.trim().is_empty())
        .unwrap_or(true)
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
/// rules. On failure the netns, link and rules are removed.
///
/// `aliases` are further addresses of the sandbox's interface: the
/// addresses a restored memory image had where it was captured. Its
/// sockets stay bound to them (gVisor cannot restore a socket whose
/// address has no route); new connections use the slot's own address.
pub async fn configure(
    id: &str,
    slot: Slot,
    egress: &Egress,
    aliases: &[Ipv4Addr],
) -> Result<(), Error> {
    let result = async {
        configure_link(id, slot, aliases, true).await?;
        if let Some(rules) = egress.rules(slot) {
            // One program run for the chain, its rules and the jump to it,
            // applied all or nothing.
            run_with_input("iptables-restore", &["-w", "--noflush"], Some(&rules)).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        destroy(id, slot).await;
    }
    result
}

/// Configures the veth pair of sandbox `id` (see [`configure`]): the
/// host end only with `host_end`, the sandbox's end always.
async fn configure_link(
    id: &str,
    slot: Slot,
    aliases: &[Ipv4Addr],
    host_end: bool,
) -> Result<(), Error> {
    let path = netns_path(id);
    let aliases: Vec<Ipv4Addr> = aliases
        .iter()
        .copied()
        .filter(|a| *a != slot.sandbox_ip())
        .collect();
    let (host_if, c) = (slot.host_if(), slot.sandbox_if());
    let what = format!("configuring {host_if}");
    rtnl::on_own_thread(move || {
        if host_end {
            let mut host = Rtnl::open()?;
            host.add_address(&host_if, slot.host_ip(), 30)?;
            host.set_up(&host_if)?;
        }
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
    .map_err(|e| host_error(what, e))
}

/// Gives the sandbox's end of the link of a stopped sandbox its addresses
/// and route again, for another sandbox on the same link: gVisor took
/// them off the interface when it started (its own network stack holds
/// them), and they went with it. The host end and the firewall rules stay
/// as [`configure`] made them.
pub async fn reconfigure_sandbox_end(
    id: &str,
    slot: Slot,
    aliases: &[Ipv4Addr],
) -> Result<(), Error> {
    configure_link(id, slot, aliases, false).await
}

/// Gives the configured link of `slot` a new policy at once, without
/// touching its sandbox: the sandbox's chain is rewritten in one
/// `iptables-restore` run (the kernel takes the new chain whole, no packet
/// sees half of it), and the host forgets the sandbox's tracked
/// connections to destinations the new policy forbids, so replies on them
/// no longer get in either (its own next packet on one is reset: see
/// [`CHAIN_DENY`]).
pub async fn update_egress(slot: Slot, egress: &Egress) -> Result<(), Error> {
    let (h, chain) = (slot.host_if(), slot.chain());
    let jumped = run(
        "iptables",
        &["-w", "-C", CHAIN_EGRESS, "-i", &h, "-j", &chain],
    )
    .await
    .is_ok();
    let input = egress.restore_input(slot, !jumped);
    run_with_input("iptables-restore", &["-w", "--noflush"], Some(&input)).await?;
    forget_forbidden(slot, egress).await;
    Ok(())
}

/// Deletes the connection tracking entries of connections the sandbox of
/// `slot` opened to destinations `egress` forbids. Best effort: without the
/// `conntrack` tool only the firewall stops them.
async fn forget_forbidden(slot: Slot, egress: &Egress) {
    let src = slot.sandbox_ip().to_string();
    let listed = match run("conntrack", &["-L", "-f", "ipv4", "-s", &src]).await {
        Ok(out) => out,
        Err(e) => {
            tracing::warn!(slot = slot.0, "cannot list tracked connections: {e}");
            return;
        }
    };
    let forbidden: std::collections::BTreeSet<Ipv4Addr> = listed
        .lines()
        .filter_map(tracked_destination)
        .filter(|dst| !egress.allows(*dst))
        .collect();
    for dst in forbidden {
        let dst = dst.to_string();
        // Fails when the entries went meanwhile: nothing left to do.
        let _ = run("conntrack", &["-D", "-f", "ipv4", "-s", &src, "-d", &dst]).await;
        tracing::debug!(slot = slot.0, dst, "tracked connections forgotten");
    }
}

/// The original destination of one line of `conntrack -L`.
fn tracked_destination(line: &str) -> Option<Ipv4Addr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("dst="))?
        .parse()
        .ok()
}

/// Removes the jumps to the chain of `slot`'s policy and the chain. Best
/// effort, idempotent.
pub async fn remove_policy(slot: Slot) {
    let (h, chain) = (slot.host_if(), slot.chain());
    let mut had_chain = false;
    while run(
        "iptables",
        &["-w", "-D", CHAIN_EGRESS, "-i", &h, "-j", &chain],
    )
    .await
    .is_ok()
    {
        had_chain = true;
    }
    if had_chain {
        let _ = run("iptables", &["-w", "-F", &chain]).await;
        let _ = run("iptables", &["-w", "-X", &chain]).await;
    }
}

/// The rule that sends the UDP lookups of the sandbox of `slot` (to
/// whatever resolver) to its DNS guard on the host end of its link.
fn dns_redirect_rule(slot: Slot) -> Vec<String> {
    [
        "-i",
        &slot.host_if(),
        "-p",
        "udp",
        "--dport",
        "53",
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{}:53", slot.host_ip()),
    ]
    .map(str::to_string)
    .to_vec()
}

/// Sends the sandbox's lookups to its DNS guard (`on`), or no longer.
/// Idempotent.
pub async fn redirect_dns(slot: Slot, on: bool) -> Result<(), Error> {
    let rule = dns_redirect_rule(slot);
    let with = |op: &str| {
        let mut args = vec![
            "-w".to_string(),
            "-t".into(),
            "nat".into(),
            op.into(),
            CHAIN_DNS.into(),
        ];
        args.extend(rule.iter().cloned());
        args
    };
    let present = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("iptables", &args).await.is_ok()
    };
    if on {
        if !present(with("-C")).await {
            let args = with("-A");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("iptables", &args).await?;
        }
    } else {
        while present(with("-D")).await {}
    }
    Ok(())
}

/// Lets the sandbox of `slot` reach `addr` (an answer of an allowed host
/// name) whatever its chain says next (`open`), or no longer. Only a
/// sandbox with a chain needs it: without one it reaches the address.
pub async fn open_address(slot: Slot, addr: Ipv4Addr, open: bool) -> Result<(), Error> {
    let (chain, dst) = (slot.chain(), format!("{addr}/32"));
    if open {
        run(
            "iptables",
            &["-w", "-I", &chain, "1", "-d", &dst, "-j", "RETURN"],
        )
        .await?;
    } else {
        let _ = run(
            "iptables",
            &["-w", "-D", &chain, "-d", &dst, "-j", "RETURN"],
        )
        .await;
    }
    Ok(())
}

/// Removes the netns, its veth pair and any per-sandbox firewall rules. Best effort, idempotent.
pub async fn destroy(id: &str, slot: Slot) {
    remove_policy(slot).await;
    let _ = redirect_dns(slot, false).await;
    let h = slot.host_if();
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
/// Redirects the DNS lookups of sandboxes whose policy names hosts to
/// their DNS guard (nat table).
const CHAIN_DNS: &str = "SBX-DNS";
const CHAIN_IN: &str = "SBX-INPUT";
const CHAIN_NAT: &str = "SBX-POSTROUTING";
/// Jumps to the chains of sandboxes with their own [`Egress`] policy.
const CHAIN_EGRESS: &str = "SBX-EGRESS";
/// Where a policy sends what it refuses: TCP is answered with a reset, so
/// a connection the policy forbids (one a live update forbade too) fails
/// at once instead of hanging; the rest is dropped.
const CHAIN_DENY: &str = "SBX-DENY";

/// Installs the host firewall rules shared by every sandbox. Idempotent, and
/// safe beside other sbx servers on the same host: the shared chains are
/// rewritten whole with the same rules, the sandboxes' own chains are kept.
pub async fn install_firewall() -> Result<(), Error> {
    tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "1").await?;
    // Traffic to a sandbox address with no sandbox behind it (gone, not yet
    // made) dies here instead of following the default route off the host:
    // each live sandbox's /30 is more specific and wins.
    run("ip", &["route", "replace", "blackhole", RANGE]).await?;
    // Made when missing, never rewritten: it holds live sandboxes' jumps.
    let _ = run("iptables", &["-w", "-N", CHAIN_EGRESS]).await;
    // Written in one step, in order: rules appended one by one when missing
    // could land after the final ACCEPT, where they do nothing.
    run_with_input(
        "iptables-restore",
        &["-w", "--noflush"],
        Some(&shared_rules(&host_nameservers())),
    )
    .await?;
    // Made when missing, never rewritten: it holds sandboxes' redirects.
    let _ = run("iptables", &["-w", "-t", "nat", "-N", CHAIN_DNS]).await;
    for (table, chain, parent) in [
        ("filter", CHAIN_FWD, "FORWARD"),
        ("filter", CHAIN_IN, "INPUT"),
        ("nat", CHAIN_NAT, "POSTROUTING"),
        ("nat", CHAIN_DNS, "PREROUTING"),
    ] {
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
    Ok(())
}

/// The `iptables-restore` input of the shared chains (declaring a chain
/// empties it first).
fn shared_rules(nameservers: &[Ipv4Addr]) -> String {
    let established = "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT";
    let mut fwd = vec![
        // Replies to what the host or the internet was asked.
        format!("-o sbx+ {established}"),
        "-i sbx+ -o sbx+ -j DROP".to_string(),
        format!("-i sbx+ -j {CHAIN_EGRESS}"),
    ];
    // The host's resolvers may sit in a private range: let DNS through to them.
    for ns in nameservers {
        for proto in ["udp", "tcp"] {
            fwd.push(format!(
                "-i sbx+ -d {ns}/32 -p {proto} --dport 53 -j ACCEPT"
            ));
        }
    }
    fwd.extend(
        BLOCKED
            .iter()
            .map(|net| format!("-i sbx+ -d {net} -j DROP")),
    );
    fwd.push("-i sbx+ -j ACCEPT".into());
    let mut r =
        format!("*filter\n:{CHAIN_FWD} - [0:0]\n:{CHAIN_IN} - [0:0]\n:{CHAIN_DENY} - [0:0]\n");
    for rule in fwd {
        r += &format!("-A {CHAIN_FWD} {rule}\n");
    }
    r += &format!(
        "-A {CHAIN_DENY} -p tcp -j REJECT --reject-with tcp-reset\n-A {CHAIN_DENY} -j DROP\n"
    );
    // Replies to connections the host opened (the proxy) come back in, and
    // lookups redirected to a sandbox's DNS guard (see `redirect_dns`);
    // nothing else does.
    r += &format!(
        "-A {CHAIN_IN} -i sbx+ {established}\n-A {CHAIN_IN} -i sbx+ -p udp --dport 53 -m conntrack --ctstate DNAT -j ACCEPT\n-A {CHAIN_IN} -i sbx+ -j DROP\nCOMMIT\n"
    );
    r += &format!(
        "*nat\n:{CHAIN_NAT} - [0:0]\n-A {CHAIN_NAT} -s {RANGE} ! -d {RANGE} -j MASQUERADE\nCOMMIT\n"
    );
    r
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
        configure(id, slot, &Egress::default(), &[alias, slot.sandbox_ip()])
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
        assert!(configure(id, slot, &Egress::default(), &[]).await.is_err());
        assert!(!netns_path(id).exists());
        assert!(run("ip", &["link", "show", &slot.host_if()]).await.is_err());
    }

    #[test]
    fn destinations_are_ipv4_addresses_blocks_or_host_names() {
        let p = |s: &str| match parse_destination(s) {
            Ok(Destination::Net(n)) => Ok(n.to_string()),
            Ok(Destination::Host(h)) => Ok(format!("host {h}")),
            Err(e) => Err(e),
        };
        assert_eq!(p("203.0.113.7").unwrap(), "203.0.113.7/32");
        assert_eq!(p(" 198.51.100.9/24 ").unwrap(), "198.51.100.0/24");
        assert_eq!(p("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert_eq!(p("PyPI.org.").unwrap(), "host pypi.org");
        assert_eq!(p("*.example.com").unwrap(), "host *.example.com");
        assert!(p("1.2.3.4/33").is_err());
        assert!(p("1.2.3").is_err(), "numbers are no host name");
        assert!(p("a..b").is_err());
        assert!(p("-a.com").is_err());
        assert!(p("a.*.com").is_err());
        assert!(p("::1").unwrap_err().contains("IPv6"));
    }

    #[test]
    fn names_are_opened_resolved_or_refused_by_the_policy() {
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("pypi.org", "pypi.org"));
        let walled = Egress::from_entries(
            false,
            &["pypi.org".into(), "*.pythonhosted.org".into()],
            &[],
        )
        .unwrap();
        assert!(walled.names_hosts());
        assert_eq!(walled.name_verdict("PyPI.org."), NameVerdict::Open);
        assert_eq!(
            walled.name_verdict("files.pythonhosted.org"),
            NameVerdict::Open
        );
        assert_eq!(walled.name_verdict("example.com"), NameVerdict::Refuse);
        let open = Egress::from_entries(
            true,
            &["ok.bad.com".into()],
            &["*.bad.com".into(), "198.18.0.0/15".into()],
        )
        .unwrap();
        assert_eq!(open.deny_out.len(), 1);
        assert_eq!(open.name_verdict("x.bad.com"), NameVerdict::Refuse);
        assert_eq!(open.name_verdict("ok.bad.com"), NameVerdict::Open);
        assert_eq!(open.name_verdict("example.com"), NameVerdict::Resolve);
        assert!(!Egress::default().names_hosts());
        assert!(Egress::from_entries(true, &["1.2.3".into()], &[]).is_err());
    }

    #[test]
    fn only_a_narrowed_policy_gets_a_chain_and_allow_comes_first() {
        let slot = Slot(7);
        assert_eq!(Egress::default().rules(slot), None);
        let allow_only = Egress {
            allow_out: vec!["1.1.1.1/32".parse().unwrap()],
            ..Egress::default()
        };
        assert_eq!(allow_only.rules(slot), None, "nothing to narrow");
        let policy = Egress {
            allow_internet: false,
            allow_out: vec!["198.18.0.1/32".parse().unwrap()],
            deny_out: vec!["198.18.0.0/15".parse().unwrap()],
            ..Egress::default()
        };
        let rules = policy.rules(slot).unwrap();
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(
            lines,
            [
                "*filter",
                ":SBX-N7 - [0:0]",
                "-A SBX-N7 -d 198.18.0.1/32 -j RETURN",
                "-A SBX-N7 -d 198.18.0.0/15 -j SBX-DENY",
                "-A SBX-N7 -j SBX-DENY",
                "-A SBX-EGRESS -i sbx7h -j SBX-N7",
                "COMMIT",
            ]
        );
        // What the chain decides, destination by destination.
        assert!(policy.allows(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(!policy.allows(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(!policy.allows(Ipv4Addr::new(203, 0, 113, 7)));
        assert!(Egress::default().allows(Ipv4Addr::new(203, 0, 113, 7)));
        // A live update rewrites the chain; the jump is added only once.
        let update = Egress::default().restore_input(slot, false);
        assert_eq!(update, "*filter\n:SBX-N7 - [0:0]\nCOMMIT\n");
    }

    #[test]
    fn tracked_connections_name_their_original_destination() {
        let line = "tcp      6 431999 ESTABLISHED src=10.200.0.2 dst=198.18.7.2 sport=40000 dport=8080 src=198.18.7.2 dst=198.18.7.1 sport=8080 dport=40000 [ASSURED] mark=0 use=1";
        assert_eq!(
            tracked_destination(line),
            Some(Ipv4Addr::new(198, 18, 7, 2))
        );
        assert_eq!(
            tracked_destination("conntrack v1.4.7 (conntrack-tools)"),
            None
        );
    }

    #[test]
    fn shared_rules_put_policies_and_dns_before_the_blocks_and_accept_last() {
        let rules = shared_rules(&[Ipv4Addr::new(10, 255, 255, 53)]);
        let fwd: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A SBX-FORWARD"))
            .collect();
        let at = |needle: &str| fwd.iter().position(|l| l.contains(needle)).unwrap();
        assert!(at("-o sbx+") < at("-o sbx+ -j DROP"));
        assert!(at("-o sbx+ -j DROP") < at("-j SBX-EGRESS"));
        assert!(at("-j SBX-EGRESS") < at("10.255.255.53/32 -p udp"));
        assert!(at("10.255.255.53/32 -p tcp") < at("-d 10.0.0.0/8 -j DROP"));
        assert_eq!(fwd.last(), Some(&"-A SBX-FORWARD -i sbx+ -j ACCEPT"));
        assert!(
            rules.contains("-A SBX-POSTROUTING -s 10.200.0.0/16 ! -d 10.200.0.0/16 -j MASQUERADE")
        );
        assert!(
            !rules.contains(":SBX-EGRESS"),
            "the policies' jumps are kept"
        );
        let input: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A SBX-INPUT"))
            .collect();
        assert!(
            input[1].contains("--dport 53 -m conntrack --ctstate DNAT -j ACCEPT"),
            "{input:?}"
        );
        assert_eq!(input.last(), Some(&"-A SBX-INPUT -i sbx+ -j DROP"));
    }

    /// Needs root and iptables: a policy's chain exists while the sandbox
    /// does and goes with it.
    #[tokio::test]
    async fn a_policy_chain_is_installed_and_removed_with_the_sandbox() {
        install_firewall().await.unwrap();
        let slot = Slot(MAX_SLOTS - 5);
        let id = "unittestpolicy";
        destroy(id, slot).await;
        create_link(id, slot).await.unwrap();
        let policy = Egress {
            allow_internet: false,
            allow_out: vec!["198.18.0.1/32".parse().unwrap()],
            ..Egress::default()
        };
        configure(id, slot, &policy, &[]).await.unwrap();
        let chain = run("iptables", &["-w", "-S", &slot.chain()]).await.unwrap();
        assert!(chain.contains("-d 198.18.0.1/32 -j RETURN"), "{chain}");
        let fwd = run("iptables", &["-w", "-S", CHAIN_EGRESS]).await.unwrap();
        let jump = format!("-i {} -j {}", slot.host_if(), slot.chain());
        assert_eq!(fwd.matches(&jump).count(), 1, "{fwd}");
        // Another server starting keeps the sandbox's policy.
        install_firewall().await.unwrap();
        let fwd = run("iptables", &["-w", "-S", CHAIN_EGRESS]).await.unwrap();
        assert_eq!(fwd.matches(&jump).count(), 1, "{fwd}");
        // A live update rewrites the chain whole and keeps the one jump.
        let walled = Egress {
            deny_out: vec!["198.18.0.0/15".parse().unwrap()],
            ..Egress::default()
        };
        update_egress(slot, &walled).await.unwrap();
        let chain = run("iptables", &["-w", "-S", &slot.chain()]).await.unwrap();
        assert!(!chain.contains("198.18.0.1/32"), "{chain}");
        assert!(chain.contains("-d 198.18.0.0/15 -j SBX-DENY"), "{chain}");
        let fwd = run("iptables", &["-w", "-S", CHAIN_EGRESS]).await.unwrap();
        assert_eq!(fwd.matches(&jump).count(), 1, "{fwd}");
        destroy(id, slot).await;
        // A sandbox without a chain of its own gets one on its first update.
        create_link(id, slot).await.unwrap();
        configure(id, slot, &Egress::default(), &[]).await.unwrap();
        assert!(run("iptables", &["-w", "-S", &slot.chain()]).await.is_err());
        update_egress(slot, &walled).await.unwrap();
        let fwd = run("iptables", &["-w", "-S", CHAIN_EGRESS]).await.unwrap();
        assert_eq!(fwd.matches(&jump).count(), 1, "{fwd}");
        destroy(id, slot).await;
        let fwd = run("iptables", &["-w", "-S", CHAIN_EGRESS]).await.unwrap();
        assert!(!fwd.contains(&jump), "{fwd}");
        assert!(run("iptables", &["-w", "-S", &slot.chain()]).await.is_err());
        assert!(!netns_path(id).exists());
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
