//! The fake server's Noise responders: IK for a device that cached the
//! fake's certificate (every registered device in the suites), and XX for
//! one that did not (a device being paired, and its first login after):
//! XX names the fake's key in a certificate chain signed by nobody, which
//! only a client built with whatsapp-rust's `danger-skip-cert-chain-verify`
//! accepts (the pairing test crate's).

use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::framing;
use whatsapp_rust::wacore::handshake::{NoiseCipher, NoiseHandshake};
use whatsapp_rust::wacore::libsignal::protocol::PrivateKey;
use whatsapp_rust::wacore_binary::consts::{NOISE_PATTERN_IK, NOISE_PATTERN_XX, WA_CONN_HEADER};
use whatsapp_rust::waproto::whatsapp as wa;

use super::{FakeServer, Login, SystemClock};
use trekker_domain::time::Clock as _;

/// A client's hello, read.
pub(super) enum Hello {
    /// IK: who logs in, and the handshake to answer.
    Ik(Login, Accepting),
    /// XX: the client's ephemeral key only.
    Xx(Vec<u8>),
}

/// The server's half of an IK handshake between hello and answer.
pub(super) struct Accepting {
    noise: NoiseHandshake,
    client_ephemeral: Vec<u8>,
    client_static: Vec<u8>,
}

/// The server's half of an XX handshake between its hello and the
/// client's finish.
pub(super) struct Handshaking {
    noise: NoiseHandshake,
    ephemeral: Vec<u8>,
}

/// The transport ciphers: client to server, server to client.
pub(super) type Ciphers = (NoiseCipher, NoiseCipher);

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// The one frame of `raw` (its 3-byte length first).
fn frame_of(raw: &[u8]) -> Result<&[u8], String> {
    let length = raw.get(..3).ok_or("no frame")?;
    let length = (usize::from(length[0]) << 16) | (usize::from(length[1]) << 8) | usize::from(length[2]);
    raw.get(3..3 + length).ok_or_else(|| "a cut frame".to_owned())
}

/// What a client's payload says about it.
fn login_of(client_static: Vec<u8>, payload: &[u8]) -> Result<Login, String> {
    let payload = wa::ClientPayload::decode_from_slice(payload).map_err(text)?;
    Ok(Login { client_static, username: payload.username, device: payload.device, passive: payload.passive })
}

impl FakeServer {
    /// The fake's ephemeral key pair for a handshake: (private, public).
    fn ephemeral(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let ephemeral = PrivateKey::deserialize(&[self.private[0].wrapping_add(100); 32]).map_err(text)?;
        let public = ephemeral.public_key().map_err(text)?.public_key_bytes().to_vec();
        Ok((ephemeral.serialize().to_vec(), public))
    }

    /// Reads a client's first message: IK (its static key and payload
    /// decrypted with the fake's key) or XX.
    pub(super) fn read_hello(&self, raw: &[u8]) -> Result<Hello, String> {
        let body = raw.strip_prefix(&WA_CONN_HEADER[..]).ok_or("no connection header")?;
        let hello = wa::HandshakeMessage::decode_from_slice(frame_of(body)?).map_err(text)?;
        let hello = hello.client_hello.into_option().ok_or("no client hello")?;
        let ephemeral = hello.ephemeral.ok_or("no ephemeral key")?;
        let Some(encrypted_static) = hello.r#static else { return Ok(Hello::Xx(ephemeral)) };
        let encrypted_payload = hello.payload.ok_or("no payload")?;
        let mut noise = NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER).map_err(text)?;
        noise.authenticate(&self.public());
        noise.authenticate(&ephemeral);
        noise.mix_shared_secret(&self.private, &ephemeral).map_err(text)?;
        let client_static = noise.decrypt(&encrypted_static).map_err(|e| format!("static: {e}"))?;
        noise.mix_shared_secret(&self.private, &client_static).map_err(text)?;
        let payload = noise.decrypt(&encrypted_payload).map_err(|e| format!("payload: {e}"))?;
        let login = login_of(client_static.clone(), &payload)?;
        Ok(Hello::Ik(login, Accepting { noise, client_ephemeral: ephemeral, client_static }))
    }

    /// The IK answer: the server's hello (framed) and the ciphers.
    pub(super) fn answer_ik(&self, accepting: Accepting) -> Result<(Vec<u8>, Ciphers), String> {
        let Accepting { mut noise, client_ephemeral, client_static } = accepting;
        let (ephemeral, ephemeral_public) = self.ephemeral()?;
        noise.authenticate(&ephemeral_public);
        noise.mix_shared_secret(&ephemeral, &client_ephemeral).map_err(text)?;
        noise.mix_shared_secret(&ephemeral, &client_static).map_err(text)?;
        let certificate = noise.encrypt(b"fake certificate").map_err(text)?;
        let frame = server_hello(ephemeral_public, None, certificate)?;
        Ok((frame, noise.finish().map_err(text)?))
    }

    /// The XX answer: the server's hello (framed), its static key and a
    /// certificate chain naming it.
    pub(super) fn answer_xx(&self, client_ephemeral: &[u8]) -> Result<(Vec<u8>, Handshaking), String> {
        let mut noise = NoiseHandshake::new(NOISE_PATTERN_XX, &WA_CONN_HEADER).map_err(text)?;
        noise.authenticate(client_ephemeral);
        let (ephemeral, ephemeral_public) = self.ephemeral()?;
        noise.authenticate(&ephemeral_public);
        noise.mix_shared_secret(&ephemeral, client_ephemeral).map_err(text)?;
        let encrypted_static = noise.encrypt(&self.public()).map_err(text)?;
        noise.mix_shared_secret(&self.private, client_ephemeral).map_err(text)?;
        let certificate = noise.encrypt(&unsigned_chain(self.public())).map_err(text)?;
        let frame = server_hello(ephemeral_public, Some(encrypted_static), certificate)?;
        Ok((frame, Handshaking { noise, ephemeral }))
    }

    /// Reads the client's XX finish (its static key and payload).
    pub(super) fn finish_xx(&self, handshaking: Handshaking, raw: &[u8]) -> Result<(Login, Ciphers), String> {
        let Handshaking { mut noise, ephemeral } = handshaking;
        let finish = wa::HandshakeMessage::decode_from_slice(frame_of(raw)?).map_err(text)?;
        let finish = finish.client_finish.into_option().ok_or("no client finish")?;
        let client_static = noise.decrypt(&finish.r#static.ok_or("no static key")?).map_err(text)?;
        noise.mix_shared_secret(&ephemeral, &client_static).map_err(text)?;
        let payload = noise.decrypt(&finish.payload.ok_or("no payload")?).map_err(text)?;
        Ok((login_of(client_static, &payload)?, noise.finish().map_err(text)?))
    }
}

fn server_hello(ephemeral: Vec<u8>, encrypted_static: Option<Vec<u8>>, payload: Vec<u8>) -> Result<Vec<u8>, String> {
    let hello = wa::HandshakeMessage {
        server_hello: whatsapp_rust::buffa::MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(ephemeral),
            r#static: encrypted_static,
            payload: Some(payload),
            ..Default::default()
        }),
        ..Default::default()
    };
    framing::encode_frame(&hello.encode_to_vec(), None).map_err(text)
}

/// A certificate chain whose leaf names `key`, its signatures zero.
fn unsigned_chain(key: [u8; 32]) -> Vec<u8> {
    let now = SystemClock.now_ms() / 1000;
    let certificate = |serial: u32, issuer: u32, key: Vec<u8>| {
        let details = wa::cert_chain::noise_certificate::Details {
            serial: Some(serial),
            issuer_serial: Some(issuer),
            key: Some(key),
            not_before: Some(u64::try_from(now - 3600).unwrap_or_default()),
            not_after: Some(u64::try_from(now + 30 * 86_400).unwrap_or_default()),
        };
        whatsapp_rust::buffa::MessageField::some(wa::cert_chain::NoiseCertificate {
            details: Some(details.encode_to_vec()),
            signature: Some(vec![0; 64]),
        })
    };
    let chain =
        wa::CertChain { intermediate: certificate(1, 0, vec![0xcc; 32]), leaf: certificate(2, 1, key.to_vec()) };
    chain.encode_to_vec()
}
