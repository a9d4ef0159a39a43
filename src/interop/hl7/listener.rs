//! The MLLP listener: one task per connection, messages answered in order.
//!
//! A connection may carry any number of messages, sent one at a time or pipelined;
//! each is stored, then acknowledged, in the order received (a sender's orders apply in
//! its order). A frame over the size cap is answered AR and skipped; a connection
//! silent for the idle timeout is closed; on shutdown a connection finishes the message
//! in hand and closes.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::ack::AckCode;
use super::inbound::{ack_bytes, AckMode};
use super::mllp::{self, Decoder, Frame};
use super::Hl7Service;
use crate::orders::from_hl7::error;

pub async fn serve(listener: TcpListener, service: Arc<Hl7Service>, stop: watch::Receiver<bool>) {
    let mut stopping = stop.clone();
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, "MLLP listener accepting HL7 v2");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    connections.spawn(connection(socket, peer.to_string(), service.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MLLP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = super::stopped(&mut stopping) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    tracing::info!(%addr, "MLLP listener stopped");
}

async fn connection(mut socket: TcpStream, peer: String, service: Arc<Hl7Service>, mut stop: watch::Receiver<bool>) {
    let idle = service.settings.idle_timeout;
    let mut decoder = Decoder::new(service.settings.max_message_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    tracing::debug!(%peer, "MLLP connection opened");
    'read: loop {
        while let Some(frame) = decoder.next_frame() {
            let ack = match frame {
                Frame::Message(bytes) => {
                    let prepared = service.prepare(bytes, Some(peer.clone())).await;
                    service.submit(prepared).await
                }
                Frame::TooLarge { size } => {
                    tracing::warn!(%peer, size, "MLLP frame over the size cap refused");
                    let text = format!("the message exceeds {} bytes", service.settings.max_message_bytes);
                    ack_bytes(None, &AckMode::Original, AckCode::AR, Some(&error("MSH", 1, 0, 207, text)))
                }
            };
            if let Some(ack) = ack {
                match tokio::time::timeout(idle, socket.write_all(&mllp::encode(&ack))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "MLLP peer went away before its ACK");
                        break 'read;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "MLLP peer does not read its ACKs; closing");
                        break 'read;
                    }
                }
            }
        }
        if *stop.borrow() {
            break;
        }
        let read = tokio::select! {
            r = tokio::time::timeout(idle, socket.read(&mut buf)) => r,
            _ = super::stopped(&mut stop) => break,
        };
        match read {
            Err(_) => {
                tracing::info!(%peer, seconds = idle.as_secs(), "MLLP connection idle; closing");
                break;
            }
            Ok(Ok(0)) => {
                if decoder.pending() > 0 {
                    tracing::warn!(%peer, bytes = decoder.pending(), "MLLP connection closed inside a frame; the partial message was not acknowledged");
                }
                break;
            }
            Ok(Ok(n)) => decoder.push(&buf[..n]),
            Ok(Err(_)) => break,
        }
    }
    if decoder.skipped > 0 {
        tracing::debug!(%peer, bytes = decoder.skipped, "bytes outside MLLP frames skipped");
    }
    let _ = socket.shutdown().await;
}
