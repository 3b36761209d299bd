//! DNS guards: egress by host name. A sandbox whose policy names hosts
//! ([`Egress::names_hosts`]) has its UDP lookups, to whatever resolver,
//! redirected ([`net::redirect_dns`]) to a guard listening on the host end
//! of its link. The guard answers what the policy refuses with NXDOMAIN,
//! forwards the rest to the upstream resolvers, and opens the addresses
//! of an allowed name in the sandbox's chain ([`net::open_address`]) for
//! as long as the answer may be used (its TTL, at least
//! [`MIN_OPEN`]), so that a sandbox without internet reaches `pypi.org`
//! and nothing else. A lookup of an allowed name again keeps its
//! addresses open.

use crate::net::{self, Egress, NameVerdict, Slot};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Addresses of an allowed name stay open at least this long (a TTL of a
/// few seconds would close a download half-way).
const MIN_OPEN: Duration = Duration::from_secs(300);
/// And at most this long without another lookup.
const MAX_OPEN: Duration = Duration::from_secs(3600);
/// How long an upstream resolver has to answer.
const UPSTREAM_WAIT: Duration = Duration::from_secs(3);

/// The guards of the sandboxes of one executor.
pub struct DnsGuards {
    upstream: Vec<SocketAddr>,
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl DnsGuards {
    /// Guards that forward to `upstream` (the host's resolvers when empty).
    pub fn new(upstream: Vec<SocketAddr>) -> Self {
        let upstream = if upstream.is_empty() {
            net::host_nameservers()
                .into_iter()
                .map(|ip| SocketAddr::new(ip.into(), 53))
                .collect()
        } else {
            upstream
        };
        DnsGuards {
            upstream,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Guards sandbox `id` on `slot` under `egress` from now on (replacing
    /// a guard it had), or, when its policy names no host, stops guarding
    /// it. Its link's host end must be configured.
    pub async fn guard(&self, id: &str, slot: Slot, egress: &Egress) -> Result<(), crate::Error> {
        let had = self.stop(id).await;
        if !egress.names_hosts() {
            // Only a sandbox that had a guard has a redirect to remove: a
            // launch of any other costs nothing here.
            if had {
                net::redirect_dns(slot, false).await?;
            }
            return Ok(());
        }
        let listen = SocketAddr::new(slot.host_ip().into(), 53);
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|e| crate::Error::Host {
                what: format!("DNS guard on {listen}"),
                reason: e.to_string(),
            })?;
        net::redirect_dns(slot, true).await?;
        let guard = Guard {
            slot,
            egress: egress.clone(),
            upstream: self.upstream.clone(),
            open: Arc::new(Mutex::new(HashMap::new())),
        };
        let task = tokio::spawn(guard.serve(Arc::new(socket)));
        self.running.lock().unwrap().insert(id.to_string(), task);
        tracing::debug!(sandbox = id, %listen, "DNS guard started");
        Ok(())
    }

    /// Stops guarding sandbox `id` (its redirect goes with its link);
    /// returns once its socket is closed. Whether it had a guard.
    pub async fn stop(&self, id: &str) -> bool {
        let task = self.running.lock().unwrap().remove(id);
        match task {
            Some(task) => {
                task.abort();
                let _ = task.await;
                true
            }
            None => false,
        }
    }
}

/// One sandbox's guard.
#[derive(Clone)]
struct Guard {
    slot: Slot,
    egress: Egress,
    upstream: Vec<SocketAddr>,
    /// Addresses opened in its chain, until when.
    open: Arc<Mutex<HashMap<Ipv4Addr, Instant>>>,
}

impl Guard {
    async fn serve(self, socket: Arc<UdpSocket>) {
        let mut expiry = tokio::time::interval(Duration::from_secs(10));
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                got = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = got else { continue };
                    let query = buf[..n].to_vec();
                    let (me, socket) = (self.clone(), socket.clone());
                    tokio::spawn(async move {
                        if let Some(answer) = me.answer(&query).await {
                            let _ = socket.send_to(&answer, from).await;
                        }
                    });
                }
                _ = expiry.tick() => self.close_expired().await,
            }
        }
    }

    /// The answer to one query (`None`: not a query worth answering).
    async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        if msg.message_type() != MessageType::Query {
            return None;
        }
        let name = msg.queries().first()?.name().to_ascii();
        match self.egress.name_verdict(&name) {
            NameVerdict::Refuse => refusal(&msg),
            verdict => {
                let answer = self.forward(query).await?;
                if verdict == NameVerdict::Open && self.egress.narrows() {
                    self.open(&answer).await;
                }
                Some(answer)
            }
        }
    }

    /// The upstream resolvers' answer, the first that comes.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in &self.upstream {
            let Ok(socket) = UdpSocket::bind("0.0.0.0:0").await else {
                continue;
            };
            if socket.send_to(query, server).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(UPSTREAM_WAIT, socket.recv_from(&mut buf)).await
            {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }

    /// Opens the addresses an answer gives for as long as it may be used.
    async fn open(&self, answer: &[u8]) {
        let Ok(msg) = Message::from_vec(answer) else {
            return;
        };
        for record in msg.answers() {
            let Some(RData::A(a)) = record.data() else {
                continue;
            };
            let ttl = Duration::from_secs(record.ttl().into()).clamp(MIN_OPEN, MAX_OPEN);
            let fresh = self
                .open
                .lock()
                .unwrap()
                .insert(a.0, Instant::now() + ttl)
                .is_none();
            if fresh {
                if let Err(e) = net::open_address(self.slot, a.0, true).await {
                    tracing::warn!(slot = self.slot.0, addr = %a.0, "cannot open: {e}");
                    self.open.lock().unwrap().remove(&a.0);
                }
            }
        }
    }

    async fn close_expired(&self) {
        let now = Instant::now();
        let expired: Vec<Ipv4Addr> = {
            let mut open = self.open.lock().unwrap();
            let gone: Vec<Ipv4Addr> = open
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(a, _)| *a)
                .collect();
            for a in &gone {
                open.remove(a);
            }
            gone
        };
        for a in expired {
            let _ = net::open_address(self.slot, a, false).await;
        }
    }
}

/// The NXDOMAIN answer to `query`.
fn refusal(query: &Message) -> Option<Vec<u8>> {
    let mut r = Message::new();
    r.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NXDomain);
    r.add_queries(query.queries().to_vec());
    r.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, Record, RecordType};
    use std::str::FromStr;

    fn query(name: &str) -> Message {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m
    }

    #[test]
    fn a_refusal_answers_the_query_with_nxdomain() {
        let q = query("blocked.example.");
        let r = Message::from_vec(&refusal(&q).unwrap()).unwrap();
        assert_eq!(r.id(), 7);
        assert_eq!(r.message_type(), MessageType::Response);
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        assert_eq!(r.queries()[0].name().to_ascii(), "blocked.example.");
    }

    /// A stand-in resolver on loopback: the guard forwards what the policy
    /// lets through, refuses the rest, and reads the addresses answered.
    #[tokio::test]
    async fn queries_are_forwarded_or_refused_by_the_policy() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = upstream.recv_from(&mut buf).await.unwrap();
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::new();
                r.set_id(q.id()).set_message_type(MessageType::Response);
                r.add_queries(q.queries().to_vec());
                let name = q.queries()[0].name().clone();
                r.add_answer(Record::from_rdata(
                    name,
                    5,
                    RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(198, 18, 9, 2))),
                ));
                upstream.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        let guard = Guard {
            slot: Slot(1),
            // Internet on, no chain: nothing to open in a firewall.
            egress: Egress::from_entries(true, &["ok.test".into()], &["*.bad.test".into()])
                .unwrap(),
            upstream: vec![at],
            open: Arc::new(Mutex::new(HashMap::new())),
        };
        let ask = |name: &str| {
            let (g, q) = (guard.clone(), query(name).to_vec().unwrap());
            async move { Message::from_vec(&g.answer(&q).await.unwrap()).unwrap() }
        };
        let ok = ask("ok.test.").await;
        assert_eq!(ok.response_code(), ResponseCode::NoError);
        assert!(
            matches!(ok.answers()[0].data(), Some(RData::A(a)) if a.0 == Ipv4Addr::new(198, 18, 9, 2))
        );
        assert_eq!(
            ask("x.bad.test.").await.response_code(),
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("other.test.").await.response_code(),
            ResponseCode::NoError
        );
    }
}
