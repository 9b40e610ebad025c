//! Fleet trust statements in the running node: publisher key rotations and revoked devices.
//!
//! Both are signed statements that travel as one [`TrustBundle`]: the seed pushes its bundle to
//! every device when it changes (`layerhop rotate-key`, `layerhop revoke`) and to each device as
//! it says hello; a device that learns something new passes it on to its site, and a node that
//! hears an older bundle answers with its own, so a device that was away catches up from the
//! seed or from any site peer. A release signed by a key the node does not know yet makes it
//! send its bundle to the sender (which answers with a newer one if it has it) and ask again.
//!
//! What is accepted is checked on its own signatures (rotations from the pinned key, the list
//! by the fleet key), never on who sent it, and stored durably in `trust.json` before it is
//! acted on. A revoked peer is refused at hello and disconnected as soon as the list naming it
//! is learnt; the seed is never disconnected for it.

use crate::event_loop::{EventLoop, Pending};
use layerhop_protocol::release::PublicKey;
use layerhop_protocol::revocation::{RevocationList, SignedRevocations};
use layerhop_protocol::rotation;
use layerhop_protocol::wire::{Request, TrustBundle};
use layerhop_protocol::{ReleaseBody, SignedRelease};
use libp2p::PeerId;
use std::time::{Duration, Instant};

/// How often a node sends its bundle to a peer that offered a release under an unknown key.
const ASK_EVERY: Duration = Duration::from_secs(5);

/// The keys trusted by a node that pinned `pinned`, given its stored rotations (the pinned key
/// alone if the stored chain does not verify, which `trust.json` only holds if edited by hand).
pub fn release_keys(pinned: &PublicKey, rotations: &[rotation::SignedRotation]) -> Vec<PublicKey> {
    rotation::keys(pinned, rotations).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the stored key rotations do not verify; trusting the pinned key only");
        vec![*pinned]
    })
}

/// Verify a release the node already accepted: it may be signed by any key of the chain (a key
/// rotated out vouches for what it signed while it was current).
pub fn verify_recorded(signed: &SignedRelease, keys: &[PublicKey]) -> Result<ReleaseBody, layerhop_protocol::Error> {
    let key = keys.iter().find(|k| **k == signed.key).or(keys.last()).copied();
    match key {
        Some(k) => signed.verify(&k),
        None => Err(layerhop_protocol::Error::UnknownKey { found: signed.key.to_hex(), expected: "none".into() }),
    }
}

/// The revocation list in `signed` if it verifies under `fleet`.
pub fn load_revocations(signed: Option<&SignedRevocations>, fleet: Option<&PublicKey>) -> RevocationList {
    match (signed, fleet) {
        (Some(s), Some(f)) => s.verify(f).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the stored revocation list does not verify; ignored");
            RevocationList::default()
        }),
        _ => RevocationList::default(),
    }
}

impl EventLoop {
    /// What this node holds, to send.
    pub(crate) fn trust_bundle(&self) -> TrustBundle {
        let t = self.store.trust();
        TrustBundle { rotations: t.rotations, revocations: t.revocations }
    }

    /// Every key trusted for releases, oldest first; the last one signs new releases.
    pub(crate) fn release_keys(&self) -> Vec<PublicKey> {
        match self.cfg.publisher_key {
            Some(p) => release_keys(&p, &self.store.trust().rotations),
            None => Vec::new(),
        }
    }

    /// Whether `peer` (with credential id `device`, if known) is revoked. Never the seed.
    pub(crate) fn is_revoked(&self, peer: &PeerId, device: Option<&[u8; 16]>) -> bool {
        Some(*peer) != self.seed() && self.revoked.revokes(&peer.to_bytes(), device.or(self.peer_creds.get(peer)))
    }

    /// Send this node's bundle to `peer` if it says anything.
    pub(crate) fn send_trust(&mut self, peer: PeerId) {
        let b = self.trust_bundle();
        if !b.is_empty() {
            self.send(&peer, Request::Trust(b), Pending::Other);
        }
    }

    /// A release from `peer` was signed by a key not known here: offer our bundle (a peer with
    /// a newer one answers with it), at most every [`ASK_EVERY`] per peer.
    pub(crate) fn unknown_key_from(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self.trust_asked.get(&peer).is_some_and(|t| now.duration_since(*t) < ASK_EVERY) {
            return;
        }
        self.trust_asked.insert(peer, now);
        let b = self.trust_bundle();
        self.send(&peer, Request::Trust(b), Pending::Other);
    }

    /// A bundle from `from`: keep what is newer and verifies, act on it, pass it on, and
    /// answer with ours if theirs is older.
    pub(crate) fn on_trust(&mut self, from: PeerId, bundle: TrustBundle) {
        let t = self.store.trust();
        let mut rotations = t.rotations.clone();
        let mut revocations = t.revocations.clone();
        let (mut key_changed, mut list_changed) = (false, false);
        if let Some(pinned) = self.cfg.publisher_key
            && bundle.rotations.len() > t.rotations.len()
        {
            let mine = release_keys(&pinned, &t.rotations);
            match rotation::keys(&pinned, &bundle.rotations) {
                Ok(k) if k.starts_with(&mine) => {
                    key_changed = k.len() > mine.len();
                    if let Some(new) = k.last().filter(|_| key_changed) {
                        tracing::info!(peer = %from, key = %new.to_hex(), steps = k.len() - mine.len(), "publisher key rotated");
                    }
                    rotations = bundle.rotations.clone();
                }
                Ok(_) => tracing::warn!(peer = %from, "refused key rotations that contradict the ones held here"),
                Err(e) => tracing::warn!(peer = %from, error = %e, "refused key rotations"),
            }
        }
        if let (Some(fleet), Some(theirs)) = (self.fleet_key, &bundle.revocations)
            && theirs.claimed_version().is_some_and(|v| v > self.revoked.version)
        {
            match theirs.verify(&fleet) {
                Ok(list) => {
                    tracing::info!(peer = %from, version = list.version, revoked = list.devices.len() + list.peers.len(), "revocation list updated");
                    self.revoked = list;
                    revocations = Some(theirs.clone());
                    list_changed = true;
                }
                Err(e) => tracing::warn!(peer = %from, error = %e, "refused a revocation list"),
            }
        }
        let theirs_older = bundle.rotations.len() < rotations.len()
            || bundle.revocations.as_ref().and_then(SignedRevocations::claimed_version).unwrap_or(0) < self.revoked.version;
        if rotations != t.rotations || list_changed {
            if let Err(e) = self.store.set_trust_statements(rotations, revocations) {
                tracing::error!(error = %e, "cannot store trust statements");
                key_changed = false;
            }
            // Pass it on to the site (the seed told one member, or this member heard first).
            let members: Vec<PeerId> = self.site.members().map(|(p, _)| *p).filter(|p| *p != from).collect();
            for p in members {
                self.send_trust(p);
            }
        }
        if list_changed {
            self.enforce_revocations();
        }
        if key_changed {
            // Releases refused under the old key are worth asking for again.
            self.send(&from, Request::Releases, Pending::Releases);
        }
        if theirs_older && !self.is_revoked(&from, None) {
            self.send_trust(from);
        }
    }

    /// Disconnect every connected peer the list revokes; returns how many.
    pub(crate) fn enforce_revocations(&mut self) -> usize {
        let connected: Vec<PeerId> = self.peers.keys().copied().collect();
        let mut n = 0;
        for p in connected {
            if self.is_revoked(&p, None) {
                tracing::warn!(peer = %p, "revoked peer disconnected");
                self.enrolled.remove(&p);
                self.site.leave(&p);
                let _ = self.swarm.disconnect_peer_id(p);
                n += 1;
            }
        }
        n
    }

    /// Seed: revoke `peers` (and the credentials they presented, if connected) and `devices`
    /// (credential ids); sign, store and push the new list, and disconnect the revoked.
    pub(crate) fn revoke(&mut self, peers: Vec<PeerId>, devices: Vec<[u8; 16]>) -> Result<serde_json::Value, String> {
        let signer = self.fleet_signer.clone().ok_or("only the seed revokes devices (this node has no fleet key)")?;
        let mut list = self.revoked.clone();
        let before = list.devices.len() + list.peers.len();
        for p in &peers {
            if let Some(d) = self.peer_creds.get(p)
                && !list.devices.contains(d)
            {
                list.devices.push(*d);
            }
            if !list.peers.contains(&p.to_bytes()) {
                list.peers.push(p.to_bytes());
            }
        }
        for d in devices {
            if !list.devices.contains(&d) {
                list.devices.push(d);
            }
        }
        let added = list.devices.len() + list.peers.len() - before;
        if added > 0 {
            list.version += 1;
            list.issued_at = crate::accept::system_now();
            let signed = list.sign(&signer).map_err(|e| e.to_string())?;
            let rotations = self.store.trust().rotations;
            self.store.set_trust_statements(rotations, Some(signed)).map_err(|e| format!("cannot store the revocation list: {e}"))?;
            self.revoked = list.clone();
            tracing::info!(version = list.version, added, "revocation list signed");
        }
        let disconnected = self.enforce_revocations();
        let told = self.push_trust();
        Ok(serde_json::json!({
            "version": list.version,
            "added": added,
            "token_ids": list.devices.iter().map(hex::encode).collect::<Vec<_>>(),
            "peers": list.peers.iter().filter_map(|p| PeerId::from_bytes(p).ok()).map(|p| p.to_string()).collect::<Vec<_>>(),
            "disconnected": disconnected,
            "devices_told": told,
        }))
    }

    /// Seed: push the bundle to every connected device; returns how many.
    pub(crate) fn push_trust(&mut self) -> usize {
        let devices: Vec<PeerId> = self.enrolled.keys().copied().collect();
        for p in &devices {
            self.send_trust(*p);
        }
        devices.len()
    }
}
