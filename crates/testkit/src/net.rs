//! A network of the test's own: a bridge on the host with an address in
//! 10.251.X.0/24 (X chosen so that no interface of the host has an address
//! in it), and hosts on it, each a network namespace with a veth pair to
//! the bridge. Nothing leaves this machine: the host forwards nothing from
//! the bridge to other interfaces. The namespaces, links and the forwarding
//! rule go on drop, also when the test panics.
//!
//! Processes enter a host with `nsenter --net` ([`Host::command`]), not
//! `ip netns exec`: that one remounts `/sys`, hiding the cgroup v1
//! hierarchies an sbx server needs. Names start with `sbt-`, never `sbx`
//! (sbx's firewall matches `sbx+`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The first two octets of every test network.
const PREFIX: [u8; 2] = [10, 251];
/// Held while a network picks its subnet and claims it (bridge up with its
/// address), so that two tests of one process do not pick the same one.
static CLAIM: Mutex<()> = Mutex::new(());

/// A bridge with an address and the hosts on it; all removed on drop.
pub struct TestNet {
    subnet: u8,
    bridge: String,
    hosts: Vec<Host>,
    /// Whether the host's forwarding guard was installed (removed on drop).
    guarded: bool,
}

/// One host of a [`TestNet`]: a network namespace whose `eth0` has
/// 10.251.X.(10+i)/24, `lo` up and the bridge as its default route.
/// Removed with its net.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The namespace's name (`/run/netns/NAME`), also the host end of its veth.
    pub name: String,
    pub addr: Ipv4Addr,
}

impl TestNet {
    /// A bridge and `hosts` hosts on it. Panics, showing the failed `ip`
    /// command and its stderr, when one cannot be made (after removing
    /// what was made).
    pub fn new(hosts: usize) -> TestNet {
        assert!(hosts <= 200, "at most 200 hosts");
        let mut net = claim_subnet();
        for i in 0..hosts {
            net.add_host(i);
        }
        net
    }

    /// The bridge's address, 10.251.X.1: the host as its hosts see it.
    pub fn gateway(&self) -> Ipv4Addr {
        addr(self.subnet, 1)
    }

    /// `10.251.X.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}/24", addr(self.subnet, 0))
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Host `i` (in the order made).
    pub fn host(&self, i: usize) -> Host {
        self.hosts[i].clone()
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    fn add_host(&mut self, i: usize) {
        let host = Host {
            name: format!("{}-{i}", self.bridge),
            addr: addr(self.subnet, 10 + i as u8),
        };
        ip(&["netns", "add", &host.name]);
        // Recorded at once: removed on drop even if the rest fails.
        self.hosts.push(host.clone());
        // The host end of the veth pair is named after the namespace.
        let ns = host.name.as_str();
        ip(&[
            "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["link", "set", ns, "master", &self.bridge, "up"]);
        let cidr = format!("{}/24", host.addr);
        let gateway = self.gateway().to_string();
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "route", "add", "default", "via", &gateway]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other, even while a
        // process is still in its namespace; the bridge goes last.
        for h in &self.hosts {
            let _ = run("ip", &["link", "delete", &h.name]);
            try_ip(&["netns", "delete", &h.name]);
        }
        try_ip(&["link", "delete", &self.bridge]);
        if self.guarded {
            let _ = Command::new("iptables")
                .args(guard_rule("-D", &self.bridge))
                .output();
        }
    }
}

impl Host {
    /// `/run/netns/NAME`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `program` run in this host's network namespace: `nsenter
    /// --net=/run/netns/NAME program`. Without `--fork` nsenter execs the
    /// program, so the child's pid is the program's.
    /// nsenter is looked up on this process's `PATH`, so that the child's
    /// may differ.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(nsenter());
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg(program);
        c
    }
}

/// Where `nsenter` is on this process's `PATH`.
fn nsenter() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nsenter"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nsenter"))
}

/// 10.251.`subnet`.`host`.
fn addr(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(PREFIX[0], PREFIX[1], subnet, host)
}

/// Picks a free subnet and makes its bridge, with the address and the
/// forwarding guard, under [`CLAIM`]. Another process may claim the same
/// subnet between the look and the bridge: its name is then taken, so try
/// the next.
fn claim_subnet() -> TestNet {
    let _claim = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
    let mut tried = Vec::new();
    loop {
        let used = ip(&["-o", "-4", "addr", "show"]);
        let subnet = free_subnet(&used, &tried)
            .unwrap_or_else(|| panic!("no free subnet in 10.251.0.0/16: the host has\n{used}"));
        tried.push(subnet);
        let bridge = format!("sbt-{subnet}");
        if !run("ip", &["link", "add", &bridge, "type", "bridge"]).0 {
            continue;
        }
        let mut net = TestNet {
            subnet,
            bridge,
            hosts: Vec::new(),
            guarded: false,
        };
        let cidr = format!("{}/24", net.gateway());
        ip(&["addr", "add", &cidr, "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        // The host forwards between its interfaces (sbx turns that on):
        // nothing from the bridge goes anywhere but the bridge and the
        // host itself.
        let (ok, err) = run("iptables", &guard_rule("-I", &net.bridge));
        assert!(ok, "iptables {:?}: {err}", guard_rule("-I", &net.bridge));
        net.guarded = true;
        return net;
    }
}

/// The host firewall rule (`-I`: insert, `-D`: delete) that drops what the
/// hosts of `bridge` send beyond it.
fn guard_rule(action: &str, bridge: &str) -> Vec<String> {
    [
        "-w", action, "FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "DROP",
    ]
    .map(String::from)
    .to_vec()
}

/// The lowest X in 1..=254 such that 10.251.X.0/24 overlaps no address of
/// `ip -o -4 addr` output `used` (with its prefix) and X is not in `skip`.
pub fn free_subnet(used: &str, skip: &[u8]) -> Option<u8> {
    let nets: Vec<(u32, u32)> = used
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            let (a, len) = words.next()?.split_once('/')?;
            Some((u32::from(a.parse::<Ipv4Addr>().ok()?), len.parse().ok()?))
        })
        .filter(|(_, len)| *len <= 32)
        .collect();
    (1..=254u8).find(|x| {
        let ours = u32::from(addr(*x, 0));
        !skip.contains(x)
            && nets.iter().all(|&(a, len)| {
                // Two blocks overlap when the shorter prefix covers both.
                let shorter = len.min(24);
                let mask = if shorter == 0 {
                    0
                } else {
                    u32::MAX << (32 - shorter)
                };
                a & mask != ours & mask
            })
    })
}

/// Runs `ip ARGS`; panics with its stderr on failure. Returns stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS`, failures reported on stderr only (cleanup).
fn try_ip(args: &[&str]) {
    let (ok, err) = run("ip", args);
    if !ok {
        eprintln!("ip {}: {err}", args.join(" "));
    }
}

/// Runs a program: (succeeded, stderr).
fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ),
        Err(e) => (false, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                        4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n";

    #[test]
    fn the_first_subnet_no_address_is_in() {
        assert_eq!(free_subnet(HOST, &[]), Some(1));
        assert_eq!(free_subnet(HOST, &[1, 2]), Some(3));
        let taken = format!("{HOST}9: sbt-1    inet 10.251.1.1/24 scope global sbt-1\n");
        assert_eq!(free_subnet(&taken, &[]), Some(2));
        // A longer prefix inside a subnet takes it; a shorter one takes all it covers.
        let taken = format!("{HOST}5: a    inet 10.251.1.77/30 scope global a\n");
        assert_eq!(free_subnet(&taken, &[]), Some(2));
        let taken = format!("{HOST}5: a    inet 10.251.0.1/23 scope global a\n");
        assert_eq!(free_subnet(&taken, &[]), Some(2));
        let taken = format!("{HOST}5: a    inet 10.0.0.1/8 scope global a\n");
        assert_eq!(free_subnet(&taken, &[]), None);
        let all: Vec<u8> = (1..=254).collect();
        assert_eq!(free_subnet(HOST, &all), None);
        assert_eq!(free_subnet("", &[]), Some(1));
    }

    /// Runs `f` on a thread in `host`'s network namespace.
    fn inside<T: Send + 'static>(host: &Host, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(host.netns_path()).unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscall on an open namespace file; only this
            // thread moves.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .join()
        .unwrap()
    }

    /// Needs root, `ip`, `iptables` and `nsenter`.
    #[test]
    fn hosts_reach_each_other_and_everything_goes_on_drop() {
        use std::net::{TcpListener, TcpStream};
        let net = TestNet::new(2);
        let (a, b) = (net.host(0), net.host(1));
        assert_eq!(a.addr, addr(net.subnet, 10));
        assert_eq!(b.addr, addr(net.subnet, 11));
        assert!(!net.bridge().starts_with("sbx") && net.bridge().len() <= 15);
        // Host to host, and the test's own namespace to a host, over the bridge.
        let at_b = inside(&b, move || TcpListener::bind((b.addr, 0)).unwrap());
        let to_b = at_b.local_addr().unwrap();
        assert!(inside(&a, move || TcpStream::connect(to_b).is_ok()));
        assert!(TcpStream::connect(to_b).is_ok());
        // A host to the bridge's address.
        let at_gateway = TcpListener::bind((net.gateway(), 0)).unwrap();
        let to_gateway = at_gateway.local_addr().unwrap();
        assert!(inside(&a, move || TcpStream::connect(to_gateway).is_ok()));
        // `command` runs a program in the namespace: it sees eth0 with the
        // host's address.
        let out = a.command("ip").args(["-o", "-4", "addr"]).output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains(&format!("eth0    inet {}/24", a.addr)),
            "{shown}"
        );

        let (bridge, names) = (net.bridge().to_string(), [a.name.clone(), b.name.clone()]);
        assert!(forward_rules().contains(&bridge), "the guard is on");
        drop(net);
        assert_gone(&bridge, &names);
    }

    #[test]
    fn a_test_that_panics_leaves_nothing() {
        let mut made = None;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let net = TestNet::new(1);
            made = Some((net.bridge().to_string(), vec![net.host(0).name]));
            panic!("the test fails");
        }));
        assert!(panicked.is_err());
        let (bridge, names) = made.unwrap();
        assert_gone(&bridge, &names);
    }

    /// Neither the bridge, the hosts' namespaces and links nor the guard exist.
    fn assert_gone(bridge: &str, hosts: &[String]) {
        let links = ip(&["-o", "link"]);
        let netns = ip(&["netns", "list"]);
        assert!(!links.contains(&format!("{bridge}:")), "{links}");
        for h in hosts {
            assert!(!links.contains(h) && !netns.contains(h), "{links}{netns}");
        }
        assert!(!forward_rules().contains(bridge));
    }

    fn forward_rules() -> String {
        let out = Command::new("iptables").args(["-S", "FORWARD"]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    }
}
