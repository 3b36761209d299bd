//! Every descriptor the agent reads or writes is driven by blocking system
//! calls on threads of tokio's blocking pool, never through epoll: the
//! agent's runtime is built without an I/O driver.
//!
//! gVisor (the 2024 releases this host runs) does not carry epoll state
//! across checkpoint and restore safely: an interest deleted shortly before
//! a checkpoint can survive it through a stale list link and be reported
//! after the restore with its old user data (fixed upstream in
//! google/gvisor 5d857245b, March 2026) — for tokio that is a pointer to
//! freed memory, and the restored agent died of SIGSEGV in its I/O driver.
//! Live interests, in turn, can stop receiving notifications after a
//! restore (google/gvisor#13920). A thread blocked in `read(2)` or
//! `accept(2)` simply continues after the restore.
//!
//! Async code sees sockets as in-memory [`DuplexStream`]s and pipes as
//! channels of chunks.

use bytes::Bytes;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

const CHUNK: usize = 64 << 10;

/// A TCP connection as async code sees it: an in-memory stream whose bytes
/// blocking threads copy to and from the socket.
pub struct Socket {
    io: DuplexStream,
    tcp: TcpStream,
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Wakes the reading thread; the writing thread still sends what is
        // buffered, then closes the socket's write side.
        let _ = self.tcp.shutdown(Shutdown::Read);
    }
}

impl tokio::io::AsyncRead for Socket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Socket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `stream` to async code: bytes are copied between the socket and
/// the returned [`Socket`] by two blocking threads. A shutdown of the
/// returned stream half-closes the socket, dropping it closes it; the peer
/// closing its side ends the stream's reads.
pub fn socket(handle: &Handle, stream: TcpStream) -> io::Result<Socket> {
    stream.set_nonblocking(false)?;
    let reading = stream.try_clone()?;
    let owner = stream.try_clone()?;
    let (ours, theirs) = tokio::io::duplex(CHUNK);
    let (mut from_async, mut to_async) = tokio::io::split(theirs);
    handle.spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match (&reading).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if futures::executor::block_on(to_async.write_all(&buf[..n])).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = futures::executor::block_on(to_async.shutdown());
    });
    handle.spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match futures::executor::block_on(from_async.read(&mut buf)) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if (&stream).write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
    });
    Ok(Socket {
        io: ours,
        tcp: owner,
    })
}

/// Connects to `127.0.0.1:port` (on a blocking thread) and serves the
/// connection like [`socket`].
pub async fn connect_local(port: u16) -> io::Result<Socket> {
    let handle = Handle::current();
    let stream = tokio::task::spawn_blocking(move || TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(io::Error::other)??;
    let _ = stream.set_nodelay(true);
    socket(&handle, stream)
}

/// Reads `file` (a pipe or a pty master) on a blocking thread until EOF or
/// an error; the chunks arrive on the returned channel, which holds at most
/// `capacity` of them before the reader waits (backpressure on the writer).
/// Dropping the receiver ends the thread at its next chunk.
pub fn read_chunks(file: File, capacity: usize) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(capacity);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match (&file).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    rx
}

/// A pipe or pty master written with blocking `write(2)` on the blocking
/// pool. Callers that need ordered writes serialise them (one writer at a
/// time); the descriptor closes when the last clone is dropped.
#[derive(Clone)]
pub struct Writer(Arc<File>);

impl Writer {
    pub fn new(file: File) -> Self {
        Writer(Arc::new(file))
    }

    pub fn file(&self) -> &File {
        &self.0
    }

    pub async fn write_all(&self, data: Bytes) -> io::Result<()> {
        let file = self.0.clone();
        tokio::task::spawn_blocking(move || (&*file).write_all(&data))
            .await
            .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    async fn echo_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got).unwrap();
        });
        let mut io = connect_local(port).await.unwrap();
        io.write_all(b"hello").await.unwrap();
        io.shutdown().await.unwrap();
        let mut back = Vec::new();
        io.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        echo.join().unwrap();
    }

    #[tokio::test]
    async fn sockets_carry_bytes_both_ways_and_close() {
        echo_round_trip().await;
    }

    #[tokio::test]
    async fn dropping_a_socket_sends_what_was_written_then_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let mut io = connect_local(port).await.unwrap();
        let big = vec![7u8; 1 << 20];
        io.write_all(&big).await.unwrap();
        drop(io);
        assert_eq!(peer.join().unwrap(), big);
    }

    #[tokio::test]
    async fn pipes_are_read_to_eof_and_written() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut chunks = read_chunks(File::from(r), 4);
        let writer = Writer::new(File::from(w));
        writer.write_all(Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(chunks.recv().await.unwrap(), Bytes::from_static(b"abc"));
        drop(writer);
        assert!(chunks.recv().await.is_none());
    }

    #[test]
    fn works_on_a_runtime_without_an_io_driver() {
        // As the agent builds its own.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(echo_round_trip());
    }
}
