//! The answering side of lanes: a TCP listener beside the swarm's, serving chunks to site
//! members.
//!
//! Who is served: the peer id the TLS handshake proved must be in [`Access`] — the event loop
//! keeps there the site members connected over a LAN link (the same rule as chunk requests on
//! the exchange protocol, see [`crate::inbound`]) and takes a peer out when it disconnects or is
//! banned; the set is looked at again before every request. A connection whose addresses class
//! it as metered is closed before its handshake. At most [`MAX_LANES`] lanes are open at once
//! and [`PER_PEER`] per peer, a handshake gets [`HANDSHAKE_TIMEOUT`], an answer
//! [`WRITE_TIMEOUT`] to be written, and a lane idle for [`IDLE`] is closed (the asking side
//! opens a new one when it needs it). Requests are answered in order; the next answer is read
//! from the store while one is written ([`AHEAD`]).

use super::frame;
use super::record::{Clock, Lane};
use super::tls::{Identity, peer_of};
use crate::codec::SITE_PACE;
use crate::status::ServedCounters;
use crate::traffic::{Classifier, Counted, LinkClass};
use layerhop_protocol::wire::ChunkReply;
use layerhop_store::Store;
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Lanes served at once.
pub(crate) const MAX_LANES: usize = 64;
/// Time for a lane's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A lane with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(120);
/// Lanes one peer may have open at once (as its libp2p connections).
const PER_PEER: usize = 2;
/// Time to write one answer (up to 16 chunks): a member that stops reading is let go.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Answers prepared while one is written: a lane holds at most `AHEAD + 1` answers of up to 16
/// chunks in memory (8 MiB at the chunk bound).
const AHEAD: usize = 1;

/// The peers lanes are served to (see the module docs), how many lanes each has open, and when
/// each last asked for chunks: a member asking is alive, which the event loop counts as hearing
/// from it (`crate::site::Site::heard_at`) — a member busy fetching whose state messages are
/// late keeps its lease.
#[derive(Default)]
pub(crate) struct Access {
    allowed: RwLock<HashSet<PeerId>>,
    open: Mutex<HashMap<PeerId, usize>>,
    asked: Mutex<HashMap<PeerId, Instant>>,
}

impl Access {
    pub(crate) fn allow(&self, p: PeerId) {
        self.allowed.write().unwrap_or_else(|e| e.into_inner()).insert(p);
    }
    pub(crate) fn deny(&self, p: &PeerId) {
        self.allowed.write().unwrap_or_else(|e| e.into_inner()).remove(p);
    }
    fn allowed(&self, p: &PeerId) -> bool {
        self.allowed.read().unwrap_or_else(|e| e.into_inner()).contains(p)
    }
    fn note_asked(&self, p: PeerId) {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).insert(p, Instant::now());
    }
    /// Who asked for chunks since the last call, and when last.
    pub(crate) fn take_asked(&self) -> HashMap<PeerId, Instant> {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(|e| e.into_inner()))
    }
    /// Count a lane of `p` open while the guard lives; none if it has [`PER_PEER`] already.
    fn enter(self: &Arc<Self>, p: PeerId) -> Option<Entered> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(p).or_default();
        if *n >= PER_PEER {
            return None;
        }
        *n += 1;
        Some(Entered { access: self.clone(), peer: p })
    }
}

/// A lane counted open (see [`Access::enter`]).
struct Entered {
    access: Arc<Access>,
    peer: PeerId,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut open = self.access.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// What serving needs.
pub(crate) struct Serving {
    pub(crate) identity: Arc<Identity>,
    pub(crate) store: Arc<Store>,
    pub(crate) classifier: Arc<Classifier>,
    pub(crate) access: Arc<Access>,
    pub(crate) served: Arc<ServedCounters>,
    pub(crate) incompressible: Arc<crate::incompressible::Incompressible>,
}

/// Accept lanes on `listener` until the runtime stops.
pub(crate) fn spawn(listener: TcpListener, s: Serving) {
    let s = Arc::new(s);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_LANES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "lane accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "lane refused: too many open");
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                if let Err(why) = serve(tcp, remote, &s).await {
                    tracing::debug!(%remote, %why, "lane closed");
                }
                drop(slot);
            });
        }
    });
}

async fn serve(tcp: tokio::net::TcpStream, remote: std::net::SocketAddr, s: &Serving) -> Result<(), String> {
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let (class, link) = s.classifier.lane(remote, local);
    if class == LinkClass::Metered {
        return Err("a lane over a metered link; closed".into());
    }
    let _ = tcp.set_nodelay(true);
    let stream = Counted::new(libp2p::tcp::tokio::TcpStream(tcp), class, link.clone(), s.classifier.clone());
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, futures_rustls::TlsAcceptor::from(s.identity.server()).accept(stream))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let peer = peer_of(tls.get_ref().1).ok_or("no peer certificate")?;
    s.classifier.bind(peer, class, &link);
    let Some(_entered) = s.access.enter(peer) else {
        return Err(format!("{peer} has {PER_PEER} lanes open already"));
    };
    let (io, conn) = tls.into_inner();
    let Lane { mut rd, mut wr, mut seal, mut open, cipher } = Lane::new(io, conn.into())?;
    tracing::debug!(%peer, %remote, %cipher, "lane served");
    // Into the socket's empty send buffer: does not wait on the peer.
    frame::write_ready(&mut wr, &mut seal).await.map_err(|e| format!("{peer}: {e}"))?;
    // The next request is read, and its chunks read from the store, while an answer is
    // written (AHEAD answers ahead at most): reading and hashing a batch overlaps encrypting and
    // sending the one before.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio::task::JoinHandle<Vec<ChunkReply>>>(AHEAD);
    // Ends when the peer closes the lane or leaves it idle; `tx` goes with it, so the writer
    // ends once it has written every answer asked for.
    let reader = async move {
        loop {
            // A request may take IDLE to begin, and must keep the site's pace after.
            let mut clock = Clock::new(SITE_PACE, IDLE);
            let ids = match frame::read_request(&mut rd, &mut open, &mut clock).await {
                Ok(None) => return Ok(()),
                Ok(Some(ids)) => ids,
                Err(_) if !clock.begun() => return Ok(()),
                Err(e) => return Err(format!("{peer}: {e}")),
            };
            if !s.access.allowed(&peer) {
                return Err(format!("{peer} is not a site member reached over the LAN"));
            }
            s.access.note_asked(peer);
            // A slot first, so at most AHEAD answers wait in memory besides the one written.
            let Ok(slot) = tx.reserve().await else { return Ok(()) };
            let (store, served, known) = (s.store.clone(), s.served.clone(), s.incompressible.clone());
            slot.send(tokio::task::spawn_blocking(move || crate::inbound::serve_chunks(&store, &ids, &served, &known, crate::inbound::Read::ForPeer)));
        }
    };
    let writer = async move {
        while let Some(next) = rx.recv().await {
            let mut replies = next.await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(WRITE_TIMEOUT, frame::write_replies(&mut wr, &mut seal, &mut replies)).await {
                Ok(r) => r.map_err(|e| format!("{peer}: {e}"))?,
                Err(_) => return Err(format!("{peer} read nothing of an answer for {} s", WRITE_TIMEOUT.as_secs())),
            }
        }
        Ok(())
    };
    tokio::pin!(reader, writer);
    let mut reading = true;
    loop {
        tokio::select! {
            r = &mut reader, if reading => {
                r?;
                reading = false;
            }
            w = &mut writer => return w,
        }
    }
}
