//! The lane's TLS handshake: TLS 1.3, both ends authenticated by their libp2p identity, AES-GCM
//! when both ends have AES instructions, ChaCha20-Poly1305 otherwise. Only the handshake: the
//! records after it are the lane's own, under the keys this handshake derived
//! ([`super::record`]).
//!
//! The certificates are libp2p's (the `libp2p-tls` spec: a self-signed certificate carrying the
//! host's public key and its signature over the certificate's key), generated and parsed by
//! `libp2p::tls::certificate`, so a lane connection proves the same peer id as the swarm's
//! connection does. The configurations are built here rather than taken from `libp2p-tls`
//! because that crate fixes its cipher suites with ChaCha20-Poly1305 first and keeps its
//! certificate verifier private, and the LAN path is bound by CPU, not by the wire (see
//! [`crate::lane`]), so the cipher must be the one both ends run fastest.
//!
//! Which cipher: AES-GCM only when both ends have AES and carry-less multiply instructions
//! ([`aes_hardware`]), ChaCha20-Poly1305 otherwise — the rule of Go's TLS and of OpenSSL's
//! `PRIORITIZE_CHACHA`. ARMv8 makes those instructions optional and gateway boards ship without
//! them (the Raspberry Pi 4's Cortex-A72 has none). Measured on the LAN bench (512 MiB, both
//! devices, `--compare`, three runs each): with the development host's AES instructions masked
//! from `aws-lc` (`OPENSSL_ia32cap`), as on such a board, AES-GCM moved the release in
//! 1.78-1.90 s (receiving CPU 1.75-1.82 s, sending 1.32-1.43 s) and ChaCha20 in 0.78-0.80 s
//! (0.75-0.79 s, 0.56-0.57 s); with them, AES-GCM in 0.57-0.73 s (0.60-0.70 s, 0.29-0.50 s) and
//! ChaCha20 in 0.87-0.91 s (0.84-0.89 s, 0.63-0.65 s). So each end orders the suites by its
//! own hardware; a server with the instructions follows the client's order (AES-GCM if the
//! client has them too, ChaCha20 if not), and one without them puts ChaCha20 first whatever
//! the client asks.
//!
//! The handshake's crypto is `ring`'s: with rustls's `aws-lc-rs` provider, lanes opened too late
//! to carry a 40 MiB transfer on a busy host (the `issue3_lanes` test, two busy loops beside
//! it: 3 of 4 runs with 0-12 answers over the lane, against 4 of 4 passing with `ring`); what
//! made it slower was not measured further.

use libp2p::tls::certificate;
use libp2p::{PeerId, identity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring as provider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// ALPN of the lane's protocol; bumped on incompatible change (2: the lane's own records after
/// the handshake). Builds of different versions fail each other's handshake, and the asking
/// side asks over the exchange protocol instead (see [`crate::lane`]).
pub(crate) const ALPN: &[u8] = b"layerhop-lane/2";

/// This node's lane certificate and its key, made once at start.
pub(crate) struct Identity {
    /// Certificate and signing key, resolved without checking the certificate with webpki
    /// (which refuses libp2p's critical extension; the peer's verifier checks it instead).
    certified: Arc<SingleCertAndKey>,
    server: Arc<rustls::ServerConfig>,
    /// This end has AES instructions ([`aes_hardware`]).
    aes: bool,
}

/// Whether this CPU has the instructions that make AES-GCM fast (AES rounds and the
/// carry-less multiply GHASH needs).
pub(crate) fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The TLS 1.3 suites, the ones this end runs fastest first.
fn provider(aes: bool) -> Arc<CryptoProvider> {
    use provider::cipher_suite::{TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256, TLS13_CHACHA20_POLY1305_SHA256 as CHACHA};
    let mut p = provider::default_provider();
    p.cipher_suites = if aes { vec![AES128, AES256, CHACHA] } else { vec![CHACHA, AES128, AES256] };
    Arc::new(p)
}

impl Identity {
    /// The certificate for `key` and the server side's configuration.
    pub(crate) fn new(key: &identity::Keypair) -> Result<Identity, String> {
        Identity::with_aes(key, aes_hardware())
    }

    /// [`Identity::new`] for an end that has AES instructions or not.
    pub(crate) fn with_aes(key: &identity::Keypair, aes: bool) -> Result<Identity, String> {
        let (cert, private) = certificate::generate(key).map_err(|e| format!("lane certificate: {e}"))?;
        let signer = provider(aes).key_provider.load_private_key(private).map_err(|e| format!("lane certificate key: {e}"))?;
        let certified = Arc::new(SingleCertAndKey::from(CertifiedKey::new(vec![cert], signer)));
        let mut server = rustls::ServerConfig::builder_with_provider(provider(aes))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("lane TLS: {e}"))?
            .with_client_cert_verifier(Arc::new(PeerVerifier { expect: None }))
            .with_cert_resolver(certified.clone());
        server.alpn_protocols = vec![ALPN.to_vec()];
        // With AES instructions, the client's order decides (it lists ChaCha20 first when it
        // lacks them); without, this end's (ChaCha20 first).
        server.ignore_client_order = !aes;
        // Past the handshake the lane protects its own records ([`super::record`]): it takes
        // the keys, and nothing may follow the handshake on TLS's side.
        server.enable_secret_extraction = true;
        server.send_tls13_tickets = 0;
        Ok(Identity { certified, server: Arc::new(server), aes })
    }

    /// The server side's configuration (client certificates required, any valid libp2p one).
    pub(crate) fn server(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that accepts only `peer`'s certificate.
    pub(crate) fn client(&self, peer: PeerId) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider(self.aes))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("lane TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier { expect: Some(peer) }))
            .with_client_cert_resolver(self.certified.clone());
        c.alpn_protocols = vec![ALPN.to_vec()];
        c.enable_secret_extraction = true;
        Ok(Arc::new(c))
    }
}

/// The peer id a TLS connection's other end proved, from its (already verified) certificate.
pub(crate) fn peer_of(conn: &rustls::CommonState) -> Option<PeerId> {
    match conn.peer_certificates() {
        Some([cert]) => certificate::parse(cert).ok().map(|c| c.peer_id()),
        _ => None,
    }
}

/// Accepts exactly one libp2p certificate (self-signed, its libp2p extension valid), of
/// `expect` if set.
#[derive(Debug)]
struct PeerVerifier {
    expect: Option<PeerId>,
}

impl PeerVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General("a lane peer presents exactly one certificate".into()));
        }
        let cert = certificate::parse(end_entity).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        if self.expect.is_some_and(|p| p != cert.peer_id()) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(())
    }
}

fn tls13_signature(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
    certificate::parse(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?
        .verify_signature(dss.scheme, message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// The schemes libp2p certificates are signed with (its spec's list, elliptic curves first).
fn schemes() -> Vec<SignatureScheme> {
    vec![
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
    ]
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], _: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256 as AES, TLS13_CHACHA20_POLY1305_SHA256 as CHACHA};
    use rustls::Connection;

    /// Hand everything `from` has to write to `to`, which takes it in.
    fn deliver(from: &mut Connection, to: &mut Connection) {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).expect("write");
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).expect("read");
            to.process_new_packets().expect("handshake");
        }
    }

    /// The suite a lane's client and server agree on, each end with AES instructions or not.
    fn agreed(client_aes: bool, server_aes: bool) -> rustls::CipherSuite {
        let (ck, sk) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let client = Identity::with_aes(&ck, client_aes).expect("client identity");
        let server = Identity::with_aes(&sk, server_aes).expect("server identity");
        let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let mut c = Connection::Client(rustls::ClientConnection::new(client.client(sk.public().to_peer_id()).expect("config"), name).expect("client"));
        let mut s = Connection::Server(rustls::ServerConnection::new(server.server()).expect("server"));
        for _ in 0..8 {
            deliver(&mut c, &mut s);
            deliver(&mut s, &mut c);
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "the handshake did not finish");
        let suite = c.negotiated_cipher_suite().expect("a suite").suite();
        assert_eq!(s.negotiated_cipher_suite().map(|x| x.suite()), Some(suite));
        suite
    }

    #[test]
    fn aes_gcm_only_when_both_ends_have_aes_instructions() {
        assert_eq!(agreed(true, true), AES);
        assert_eq!(agreed(false, true), CHACHA, "a client without them");
        assert_eq!(agreed(true, false), CHACHA, "a server without them");
        assert_eq!(agreed(false, false), CHACHA);
    }
}
