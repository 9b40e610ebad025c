//! The lane's TLS handshake: TLS 1.3, both ends authenticated by their libp2p identity, and the
//! lane's version (ALPN): [`ALPN_AEGIS`] when both ends have AES instructions, [`ALPN`]
//! otherwise. Only the handshake: the records after it are the lane's own, under keys this
//! handshake gave ([`super::record`]): AEGIS-128X2 under [`ALPN_AEGIS`], under [`ALPN`] the
//! AEAD the handshake agreed — AES-GCM when both ends have AES instructions (an end of an
//! earlier build), ChaCha20-Poly1305 otherwise.
//!
//! The certificates are libp2p's (the `libp2p-tls` spec: a self-signed certificate carrying the
//! host's public key and its signature over the certificate's key), generated and parsed by
//! `libp2p::tls::certificate`, so a lane connection proves the same peer id as the swarm's
//! connection does. The configurations are built here rather than taken from `libp2p-tls`
//! because that crate fixes its cipher suites with ChaCha20-Poly1305 first and keeps its
//! certificate verifier private, and the LAN path is bound by CPU, not by the wire (see
//! [`crate::lane`]), so the cipher must be the one both ends run fastest.
//!
//! Which TLS suite (the handshake's, and the records' under [`ALPN`]): AES-GCM only when both
//! ends have AES and carry-less multiply instructions
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
/// the handshake, under the AEAD and the traffic secrets TLS agreed). Builds with no version in
/// common fail each other's handshake, and the asking side asks over the exchange protocol
/// instead (see [`crate::lane`]).
pub(crate) const ALPN: &[u8] = b"layerhop-lane/2";
/// The same protocol with its records under AEGIS-128X2, keyed from the handshake's exporter
/// (see [`super::record`]): offered and accepted only by ends with AES instructions, ahead of
/// [`ALPN`], so two such ends agree on it and any other pair on [`ALPN`].
pub(crate) const ALPN_AEGIS: &[u8] = b"layerhop-lane/3";

/// The versions this end speaks, the one it prefers first (the server's order decides).
fn alpn(aes: bool) -> Vec<Vec<u8>> {
    if aes { vec![ALPN_AEGIS.to_vec(), ALPN.to_vec()] } else { vec![ALPN.to_vec()] }
}

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
/// carry-less multiply GHASH needs) — and AEGIS, which needs only the AES rounds (x86-64 CPUs
/// with AES-NI have the multiply too, and ARMv8's multiply comes with its AES extension).
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
        server.alpn_protocols = alpn(aes);
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
        c.alpn_protocols = alpn(self.aes);
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
pub(crate) mod tests {
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

    /// A lane's handshake, in memory, between a client and a server each with AES
    /// instructions or not, offering the versions `client_alpn` and `server_alpn` (this build's
    /// when `None`): both ends' connections, finished.
    fn handshake_with(client_aes: bool, server_aes: bool, client_alpn: Option<&[u8]>, server_alpn: Option<&[u8]>) -> (Connection, Connection) {
        let (ck, sk) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let client = Identity::with_aes(&ck, client_aes).expect("client identity");
        let server = Identity::with_aes(&sk, server_aes).expect("server identity");
        let mut cc = (*client.client(sk.public().to_peer_id()).expect("config")).clone();
        let mut sc = (*server.server()).clone();
        if let Some(a) = client_alpn {
            cc.alpn_protocols = vec![a.to_vec()];
        }
        if let Some(a) = server_alpn {
            sc.alpn_protocols = vec![a.to_vec()];
        }
        let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let mut c = Connection::Client(rustls::ClientConnection::new(Arc::new(cc), name).expect("client"));
        let mut s = Connection::Server(rustls::ServerConnection::new(Arc::new(sc)).expect("server"));
        for _ in 0..8 {
            deliver(&mut c, &mut s);
            deliver(&mut s, &mut c);
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "the handshake did not finish");
        (c, s)
    }

    /// [`handshake_with`] this build's versions.
    pub(crate) fn handshake(client_aes: bool, server_aes: bool) -> (Connection, Connection) {
        handshake_with(client_aes, server_aes, None, None)
    }

    /// The suite and the lane version both ends agreed.
    fn agreed(c: &Connection, s: &Connection) -> (rustls::CipherSuite, Vec<u8>) {
        let suite = c.negotiated_cipher_suite().expect("a suite").suite();
        assert_eq!(s.negotiated_cipher_suite().map(|x| x.suite()), Some(suite));
        let alpn = c.alpn_protocol().expect("a lane version").to_vec();
        assert_eq!(s.alpn_protocol(), Some(&alpn[..]));
        (suite, alpn)
    }

    #[test]
    fn aes_gcm_and_aegis_records_only_when_both_ends_have_aes_instructions() {
        let both = |c, s| {
            let (c, s) = handshake(c, s);
            agreed(&c, &s)
        };
        assert_eq!(both(true, true), (AES, ALPN_AEGIS.to_vec()));
        assert_eq!(both(false, true), (CHACHA, ALPN.to_vec()), "a client without them");
        assert_eq!(both(true, false), (CHACHA, ALPN.to_vec()), "a server without them");
        assert_eq!(both(false, false), (CHACHA, ALPN.to_vec()));
    }

    #[test]
    fn an_end_of_an_earlier_build_agrees_on_the_earlier_records() {
        // An earlier build offers and accepts only `layerhop-lane/2`.
        let (c, s) = handshake_with(true, true, Some(ALPN), None);
        assert_eq!(agreed(&c, &s), (AES, ALPN.to_vec()), "a client of an earlier build");
        let (c, s) = handshake_with(true, true, None, Some(ALPN));
        assert_eq!(agreed(&c, &s), (AES, ALPN.to_vec()), "a server of an earlier build");
    }
}
