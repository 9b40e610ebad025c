//! The lane's TLS handshake: TLS 1.3, both ends authenticated by their libp2p identity, AES-GCM
//! first. Only the handshake: the records after it are the lane's own, under the keys this
//! handshake derived ([`super::record`]).
//!
//! The certificates are libp2p's (the `libp2p-tls` spec: a self-signed certificate carrying the
//! host's public key and its signature over the certificate's key), generated and parsed by
//! `libp2p::tls::certificate`, so a lane connection proves the same peer id as the swarm's
//! connection does. The configurations are built here rather than taken from `libp2p-tls`
//! because that crate fixes its cipher suites with ChaCha20-Poly1305 first and keeps its
//! certificate verifier private: on hosts with AES instructions (every x86-64 and ARMv8 device
//! the fleet runs on) AES-GCM costs a fraction of ChaCha20's CPU, and the LAN path is bound by
//! CPU, not by the wire (see [`crate::lane`]).
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
}

fn provider() -> Arc<CryptoProvider> {
    let mut p = provider::default_provider();
    p.cipher_suites = vec![
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

impl Identity {
    /// The certificate for `key` and the server side's configuration.
    pub(crate) fn new(key: &identity::Keypair) -> Result<Identity, String> {
        let (cert, private) = certificate::generate(key).map_err(|e| format!("lane certificate: {e}"))?;
        let signer = provider().key_provider.load_private_key(private).map_err(|e| format!("lane certificate key: {e}"))?;
        let certified = Arc::new(SingleCertAndKey::from(CertifiedKey::new(vec![cert], signer)));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("lane TLS: {e}"))?
            .with_client_cert_verifier(Arc::new(PeerVerifier { expect: None }))
            .with_cert_resolver(certified.clone());
        server.alpn_protocols = vec![ALPN.to_vec()];
        // The server's preference decides: AES-GCM even for a client that lists ChaCha first.
        server.ignore_client_order = true;
        // Past the handshake the lane protects its own records ([`super::record`]): it takes
        // the keys, and nothing may follow the handshake on TLS's side.
        server.enable_secret_extraction = true;
        server.send_tls13_tickets = 0;
        Ok(Identity { certified, server: Arc::new(server) })
    }

    /// The server side's configuration (client certificates required, any valid libp2p one).
    pub(crate) fn server(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that accepts only `peer`'s certificate.
    pub(crate) fn client(&self, peer: PeerId) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
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
