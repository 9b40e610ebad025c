//! Releases on a node: deciding on one heard from a peer (signature, version, expiry, followed
//! channel), passing it on to the site, the seed's announcements (one member per site), and
//! starting or re-walking a release's fetch. Split from the event loop, whose state it uses.

use crate::accept;
use crate::event_loop::{EventLoop, Pending};
use crate::fetch::Fetch;
use layerhop_protocol::SignedRelease;
use layerhop_protocol::wire::Request;
use libp2p::PeerId;
use std::collections::HashMap;

impl EventLoop {
    /// Decide on a release heard from `from` (None: offered locally). Returns whether it was
    /// newly accepted, and a description.
    pub(crate) fn consider(&mut self, signed: SignedRelease, from: Option<PeerId>) -> Result<(bool, String), String> {
        let Some(key) = self.release_keys().last().copied() else {
            return Err("this node has no pinned publisher key".into());
        };
        if let Ok(body) = signed.peek()
            && let Some(f) = self.fetches.get(body.channel.as_str())
            && f.signed == signed
        {
            return Ok((false, format!("release {} v{} already known", body.channel, body.version)));
        }
        let trust = self.store.trust();
        let body = match accept::check(&signed, &key, &trust, accept::system_now()) {
            Ok(b) => b,
            Err(refusal) => {
                tracing::warn!(from = ?from, reason = %refusal, "release refused");
                // Perhaps signed by a key rotated in since: the sender may know the rotation.
                if let (accept::Refusal::Invalid(layerhop_protocol::Error::UnknownKey { .. }), Some(p)) = (&refusal, from) {
                    self.unknown_key_from(p);
                }
                return Err(refusal.to_string());
            }
        };
        if !self.cfg.follows(&body.channel) {
            return Ok((false, format!("channel {} is not followed", body.channel)));
        }
        let what = format!("release {} v{}", body.channel, body.version);
        // Recorded before the trusted version is raised: a crash between the two then leaves a
        // recorded release whose trust `resume` raises at the next start. The other order left
        // the version trusted and the release unrecorded, refused ever after as not newer.
        if let Err(e) = self.store.record_release(&signed, &body) {
            tracing::error!(error = %e, "cannot record release");
            return Err(e.to_string());
        }
        if let Err(e) = self.store.raise_trust(body.channel.as_str(), body.version, body.issued_at) {
            tracing::warn!(error = %e, "release refused");
            return Err(e.to_string());
        }
        tracing::info!(channel = %body.channel, version = body.version, artifacts = body.artifacts.len(), bytes = body.stored_bytes(), "release accepted");
        self.start_fetch(signed, body);
        Ok((true, format!("{what} accepted")))
    }

    /// Consider a release from a peer and, if it is new here, pass it on to the site: the seed
    /// announces each release to one member per site, and the site spreads it over the LAN.
    pub(crate) fn consider_and_forward(&mut self, signed: SignedRelease, from: PeerId) {
        if let Ok((true, _)) = self.consider(signed.clone(), Some(from)) {
            let members: Vec<PeerId> = self.site.members().map(|(p, _)| *p).filter(|p| *p != from).collect();
            for p in members {
                self.send(&p, Request::Announce(signed.clone()), Pending::Other);
            }
        }
    }

    /// Seed: announce a release to one live device per sharing site (its members pass it on
    /// over the LAN), and to every device that does not share. Returns how many were told.
    pub(crate) fn announce(&mut self, signed: SignedRelease) -> usize {
        let tag = layerhop_protocol::ChunkId::of(&signed.signature);
        let mut sites: HashMap<String, Vec<PeerId>> = HashMap::new();
        let mut direct = Vec::new();
        for (p, e) in &self.enrolled {
            if e.sharing {
                sites.entry(e.site.clone()).or_default().push(*p);
            } else {
                direct.push(*p);
            }
        }
        let told = sites.len() + direct.len();
        for p in direct {
            self.send(&p, Request::Announce(signed.clone()), Pending::Other);
        }
        for (_, mut members) in sites {
            // A different member per release, so no one device carries every announcement.
            members.sort_by_key(|p| std::cmp::Reverse(crate::site::score(&tag, p)));
            self.announce_to_next(signed.clone(), members);
        }
        told
    }

    pub(crate) fn announce_to_next(&mut self, signed: SignedRelease, mut members: Vec<PeerId>) {
        members.retain(|p| self.enrolled.contains_key(p));
        if members.is_empty() {
            return;
        }
        let first = members.remove(0);
        self.send(&first, Request::Announce(signed.clone()), Pending::Announce { signed, next: members });
    }

    pub(crate) fn start_fetch(&mut self, signed: SignedRelease, body: layerhop_protocol::ReleaseBody) {
        let channel = body.channel.as_str().to_owned();
        self.fetches.insert(channel.clone(), Fetch::new(self.site.moment(), signed, body));
        self.next_round(&channel);
        self.state_dirty = true;
        self.site.epoch += 1;
        self.pump_due = true;
    }

    /// Walk the release's trees and want what is known to be missing: when a fetch starts, and
    /// when nothing is wanted any more (to confirm it is complete).
    pub(crate) fn next_round(&mut self, channel: &str) {
        let Some(f) = self.fetches.get_mut(channel) else { return };
        match layerhop_store::blob::progress(&self.store, &f.blobs) {
            Ok(p) => {
                let was_complete = f.complete;
                f.refill(p);
                if f.complete && !was_complete {
                    tracing::info!(channel, version = f.body.version, bytes = f.progress.total, secs = f.started.elapsed().as_secs_f64(), "release complete");
                    self.state_dirty = true;
                }
                f.stalled = None;
            }
            Err(e) => {
                tracing::error!(channel, error = %e, "release trees are inconsistent; fetch stopped");
                f.stalled = Some(e.to_string());
            }
        }
    }
}
