//! Real services for tests, each started by the test on 127.0.0.1 (or on
//! another address of this machine: a [`net::TestNet`]'s bridge) with its
//! data in a temp dir and stopped on drop, and networks of the test's own
//! (network namespaces joined by a bridge, [`net`]), removed on drop:
//! nothing is shared with other tests or left on the host.

pub mod net;
pub mod postgres;
pub mod s3;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Waits until something listens on `addr`; false after `limit`.
pub fn wait_listening(addr: &str, limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}
