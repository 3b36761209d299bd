//! TCP tunnels: one WebSocket per TCP connection to 127.0.0.1:port.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn serve(port: u16, mut ws: WebSocket) {
    let tcp = match crate::blocking::connect_local(port).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ws
                .send(Message::Text(
                    format!("cannot connect to 127.0.0.1:{port}: {e}").into(),
                ))
                .await;
            let _ = ws
                .send(Message::Close(Some(CloseFrame {
                    code: 1011,
                    reason: "connect failed".into(),
                })))
                .await;
            return;
        }
    };
    let (mut tcp_rx, mut tcp_tx) = tokio::io::split(tcp);
    let (mut ws_tx, mut ws_rx) = ws.split();

    let upstream = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let written = match msg {
                Message::Binary(data) => tcp_tx.write_all(&data).await,
                Message::Text(t) => tcp_tx.write_all(t.as_str().as_bytes()).await,
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if written.is_err() {
                break;
            }
        }
        let _ = tcp_tx.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match tcp_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = ws_tx
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "eof".into(),
            })))
            .await;
    };
    // Whichever side ends first ends the tunnel.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
