//! How connections to WhatsApp are made: its WebSocket, unless a test or a
//! benchmark puts another transport in its place.

use std::sync::Arc;

use async_trait::async_trait;
use whatsapp_rust::anyhow;
use whatsapp_rust::async_channel::Receiver;
use whatsapp_rust::transport::{TokioWebSocketTransportFactory, Transport, TransportEvent, TransportFactory};

/// The configured transport, or WhatsApp's WebSocket.
pub(crate) struct Transports(pub(crate) Option<Arc<dyn TransportFactory>>);

#[async_trait]
impl TransportFactory for Transports {
    async fn create_transport(&self) -> Result<(Arc<dyn Transport>, Receiver<TransportEvent>), anyhow::Error> {
        match &self.0 {
            Some(factory) => factory.create_transport().await,
            None => TokioWebSocketTransportFactory::new().create_transport().await,
        }
    }
}
