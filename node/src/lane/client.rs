//! The asking side of a lane: one connection to one site peer, requests pipelined on it.
//!
//! The event loop hands batches ([`Job`]) to the lane's task; the task writes each request as
//! it comes and reads the answers in order, reporting each answer, and at the end why the lane
//! closed (idle for [`IDLE`], or failed), as [`Event`]s through the event loop's `done`
//! channel. Everything still unanswered when a lane closes is asked again by the event loop
//! (see `EventLoop::on_lane`).

use super::Event;
use super::frame::{self, Failure};
use super::record::{Clock, Lane};
use super::tls::Identity;
use crate::codec::SITE_PACE;
use crate::event_loop::Done;
use crate::traffic::{Classifier, Counted, LinkClass};
use layerhop_protocol::ChunkId;
use libp2p::PeerId;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// A lane with nothing asked for this long is closed (a site of 50 holds 49 lanes per member
/// while it moves a release, none after).
pub(crate) const IDLE: Duration = Duration::from_secs(5);

/// A batch of chunk ids, numbered by the event loop.
pub(crate) struct Job {
    pub(crate) req: u64,
    pub(crate) ids: Vec<ChunkId>,
}

/// The event loop's handle on a lane; dropping it ends the lane once its answers are read.
pub(crate) struct Client {
    tx: mpsc::UnboundedSender<Job>,
    /// Tells this lane's events from those of an earlier lane to the same peer.
    pub(crate) generation: u64,
    /// Its handshake is done (batches go to it only then).
    pub(crate) open: bool,
}

impl Client {
    /// Queue a batch; false if the lane's task has ended (the batch was not sent).
    pub(crate) fn send(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }
}

/// What a lane needs to open.
pub(crate) struct Dial {
    pub(crate) peer: PeerId,
    pub(crate) addr: SocketAddr,
    pub(crate) generation: u64,
    pub(crate) identity: Arc<Identity>,
    pub(crate) classifier: Arc<Classifier>,
    pub(crate) timeout: Duration,
    /// Nothing asked for this long closes the lane ([`IDLE`]).
    pub(crate) idle: Duration,
}

/// Open a lane to `d.peer` in the background.
pub(crate) fn spawn(d: Dial, done: mpsc::Sender<Done>) -> Client {
    let (tx, rx) = mpsc::unbounded_channel();
    let generation = d.generation;
    tokio::spawn(async move {
        let (peer, generation) = (d.peer, d.generation);
        let why = run(d, rx, &done).await;
        let _ = done.send(Done::Lane(Event::Closed { peer, generation, why })).await;
    });
    Client { tx, generation, open: false }
}

/// Connect, shake hands, and wait for the server's `ready`, all within `d.timeout`.
async fn connect(d: &Dial) -> Result<Lane, Failure> {
    let lost = |what: &str, e: &dyn std::fmt::Display| Failure::Lost(format!("{what}: {e}"));
    let tcp = tokio::time::timeout(d.timeout, tokio::net::TcpStream::connect(d.addr))
        .await
        .map_err(|e| lost("connecting", &e))?
        .map_err(|e| lost("connecting", &e))?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr()?;
    let (class, link) = d.classifier.lane(d.addr, local);
    if class == LinkClass::Metered {
        return Err(Failure::Lost(format!("the lane to {} would leave over a metered link; not used", d.addr)));
    }
    d.classifier.bind(d.peer, class, &link);
    let stream = Counted::new(libp2p::tcp::tokio::TcpStream(tcp), class, link, d.classifier.clone());
    let config = d.identity.client(d.peer).map_err(Failure::Lost)?;
    // As libp2p's TLS handshake: no server name (the certificate names the peer id).
    let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let ready = async {
        let tls = futures_rustls::TlsConnector::from(config).connect(name, stream).await.map_err(|e| lost("TLS handshake", &e))?;
        let (io, conn) = tls.into_inner();
        let mut lane = Lane::new(io, conn.into()).map_err(Failure::Lost)?;
        frame::read_ready(&mut lane.rd, &mut lane.open, &mut Clock::new(SITE_PACE, d.timeout)).await?;
        Ok(lane)
    };
    tokio::time::timeout(d.timeout, ready).await.map_err(|e| lost("TLS handshake", &e))?
}

async fn run(d: Dial, mut jobs: mpsc::UnboundedReceiver<Job>, done: &mpsc::Sender<Done>) -> Failure {
    let Lane { mut rd, mut wr, mut seal, mut open, cipher } = match connect(&d).await {
        Ok(lane) => lane,
        Err(f) => return f,
    };
    tracing::debug!(peer = %d.peer, addr = %d.addr, %cipher, "lane open");
    if done.send(Done::Lane(Event::Opened { peer: d.peer, generation: d.generation })).await.is_err() {
        return Failure::Idle;
    }
    // Requests written and not yet answered, in order.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Job>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let waiting = in_flight.clone();
    let idle = d.idle;
    let writer = async move {
        loop {
            let job = match tokio::time::timeout(idle, jobs.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => break,
                // Idle: close (a batch queued meanwhile is asked again by the event loop).
                Err(_) if waiting.load(Ordering::Relaxed) == 0 => break,
                Err(_) => continue,
            };
            waiting.fetch_add(1, Ordering::Relaxed);
            frame::write_request(&mut wr, &mut seal, &job.ids).await?;
            if sent_tx.send(job).is_err() {
                break;
            }
        }
        Ok::<(), Failure>(())
    };
    let peer = d.peer;
    let timeout = d.timeout;
    let reader = async move {
        while let Some(job) = sent_rx.recv().await {
            let mut clock = Clock::new(SITE_PACE, timeout);
            let replies = frame::read_replies(&mut rd, &mut open, job.ids.len(), &mut clock).await?;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if done.send(Done::Lane(Event::Answer { peer, req: job.req, replies })).await.is_err() {
                break;
            }
        }
        Ok::<(), Failure>(())
    };
    // The reader ends once the writer has (its queue closes) and every answer is read; a
    // failure of either ends both.
    tokio::pin!(writer, reader);
    let mut writer_done = false;
    loop {
        tokio::select! {
            r = &mut writer, if !writer_done => match r {
                Ok(()) => writer_done = true,
                Err(f) => return f,
            },
            r = &mut reader => return match r {
                Ok(()) => Failure::Idle,
                Err(f) => f,
            },
        }
    }
}
