//! One-shot HTTP/1.0 requests from the host to a sandbox's agent, for the
//! executor's own needs (health, idle state, sync): a request, the whole
//! answer, the connection closed.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An agent's answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends `method path` (no body) to the agent at `addr`; `None` when it
/// does not answer within `limit` or the answer is not HTTP.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    limit: Duration,
) -> Option<Answer> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("{method} {path} HTTP/1.0\r\nHost: agent\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        parse(&buf)
    };
    tokio::time::timeout(limit, exchange).await.ok().flatten()
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status_line = head.lines().next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        body: raw[split + 4..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_into_status_and_body() {
        let a = parse(b"HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"{\"a\":1}");
        assert_eq!(
            parse(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap().status,
            204
        );
        assert!(parse(b"garbage").is_none());
        assert!(parse(b"SSH-2.0\r\n\r\n").is_none());
    }

    #[tokio::test]
    async fn a_silent_peer_is_no_answer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert!(request(addr, "GET", "/", Duration::from_millis(100))
            .await
            .is_none());
    }
}
