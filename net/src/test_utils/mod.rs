//! Helpers for tests (feature `test_utils`): two [`Engine`]s joined by
//! channels, every message going through the real encoding ([`Pair`]), and
//! an in-memory [`SyncStore`] that applies the database's ingest rules
//! ([`MemStore`]), so protocol tests need no disk.
//!
//! ```
//! use kappadb_core::{CreateOptions, Db};
//! use kappadb_net::test_utils::Pair;
//! let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
//! let a = Db::create(da.path(), CreateOptions::default()).unwrap();
//! let b = Db::create(db_.path(), CreateOptions::default()).unwrap();
//! a.append(b"hello".to_vec()).unwrap();
//! let mut pair = Pair::new(a.clone(), b.clone());
//! pair.connect();
//! pair.run();
//! assert_eq!(b.head(&a.feed_id()).unwrap().seq, 1);
//! assert!(pair.synced());
//! ```

mod memstore;

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::Instant;

use kappadb_core::Db;

pub use self::memstore::MemStore;
use crate::protocol::{
    Engine, Input, Limits, Output, SyncConfig, SyncEvent, SyncStore, decode_announce,
    decode_request, decode_response, encode_announce, encode_request, encode_response, receive,
    receive_announce,
};

/// Which side of a [`Pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The first engine.
    A,
    /// The second engine.
    B,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// A frame on the wire between the two engines.
#[derive(Clone, Debug)]
pub enum Frame {
    /// An encoded request.
    Request {
        /// Tag (the sender's) doubling as the reply id.
        tag: u64,
        /// Encoded [`crate::protocol::Request`].
        bytes: Vec<u8>,
    },
    /// An encoded response.
    Response {
        /// The tag of the request.
        tag: u64,
        /// Encoded [`crate::protocol::Response`].
        bytes: Vec<u8>,
    },
    /// An encoded gossip announcement.
    Gossip(Vec<u8>),
}

/// Two engines joined by channels. Each engine's peer is the other
/// [`Side`].
pub struct Pair<S: SyncStore = Db> {
    /// Engine A (its peer is `Side::B`).
    pub a: Engine<Side, S>,
    /// Engine B (its peer is `Side::A`).
    pub b: Engine<Side, S>,
    to_a: (mpsc::Sender<Frame>, mpsc::Receiver<Frame>),
    to_b: (mpsc::Sender<Frame>, mpsc::Receiver<Frame>),
    limits: Limits,
    /// Everything the engines reported, with the side that reported it.
    pub events: Vec<(Side, SyncEvent<Side>)>,
    /// Bans, with the side that banned.
    pub bans: Vec<(Side, String)>,
    connected: bool,
    /// Stop delivering after this many frames (to cut a sync short); the
    /// frames not delivered stay queued.
    pub frame_budget: Option<usize>,
    /// Frames delivered so far.
    pub frames: usize,
    /// Bytes of the frames delivered so far (encoded messages).
    pub bytes: usize,
    /// Called on every frame just before it is delivered to the side
    /// given, to tamper with it (a hostile network in fuzz tests).
    pub tamper: Option<Tamper>,
}

/// A hook that may change a frame on its way to a side (see
/// [`Pair::tamper`]).
pub type Tamper = Box<dyn FnMut(Side, &mut Frame) + Send>;

impl<S: SyncStore> std::fmt::Debug for Pair<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("frames", &self.frames)
            .finish()
    }
}

impl<S: SyncStore> Pair<S> {
    /// Engines over `a` and `b` with the default config.
    pub fn new(a: S, b: S) -> Self {
        Self::with_config(a, b, SyncConfig::default())
    }

    /// Engines with a given config (which must pass [`SyncConfig::check`]).
    pub fn with_config(a: S, b: S, config: SyncConfig) -> Self {
        Self::with_configs(a, b, config.clone(), config)
    }

    /// Engines with a config each (to pair, say, a reconciling engine with
    /// one that is not: an older peer). The limits are `config_a`'s.
    pub fn with_configs(a: S, b: S, config_a: SyncConfig, config_b: SyncConfig) -> Self {
        let limits = config_a.limits.clone();
        let engine = |store: S, config: SyncConfig, side: Side| match Engine::new(store, config) {
            Ok(e) => e.with_local(side),
            Err(e) => panic!("{e}"),
        };
        Self {
            a: engine(a, config_a, Side::A),
            b: engine(b, config_b, Side::B),
            to_a: mpsc::channel(),
            to_b: mpsc::channel(),
            limits,
            events: Vec::new(),
            bans: Vec::new(),
            connected: false,
            frame_budget: None,
            frames: 0,
            bytes: 0,
            tamper: None,
        }
    }

    fn engine(&mut self, side: Side) -> &mut Engine<Side, S> {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn sender(&self, to: Side) -> mpsc::Sender<Frame> {
        match to {
            Side::A => self.to_a.0.clone(),
            Side::B => self.to_b.0.clone(),
        }
    }

    /// Tell both engines they are connected.
    pub fn connect(&mut self) {
        self.connected = true;
        self.a.handle(Input::Connected(Side::B));
        self.b.handle(Input::Connected(Side::A));
    }

    /// Tell both engines the connection dropped; frames in flight are lost.
    pub fn disconnect(&mut self) {
        self.connected = false;
        self.a.handle(Input::Disconnected(Side::B));
        self.b.handle(Input::Disconnected(Side::A));
        while self.to_a.1.try_recv().is_ok() {}
        while self.to_b.1.try_recv().is_ok() {}
    }

    /// True if both engines report the other side in sync.
    pub fn synced(&self) -> bool {
        self.a.is_synced(&Side::B) && self.b.is_synced(&Side::A)
    }

    fn step(&mut self, side: Side) {
        let now = Instant::now();
        let engine = self.engine(side);
        if let Err(e) = engine.step(now) {
            panic!("engine {side:?} failed: {e}");
        }
        let outs = engine.take_outputs();
        let tx = self.sender(side.other());
        for out in outs {
            match out {
                Output::Request { tag, request, .. } => {
                    let _ = tx.send(Frame::Request {
                        tag,
                        bytes: encode_request(&request),
                    });
                }
                Output::Respond { id, response, .. } => {
                    let _ = tx.send(Frame::Response {
                        tag: id,
                        bytes: encode_response(&response),
                    });
                }
                Output::Announce(a) => {
                    let _ = tx.send(Frame::Gossip(encode_announce(&a)));
                }
                Output::Ban { reason, .. } => {
                    self.bans.push((side, reason.to_string()));
                    self.connected = false;
                }
                Output::Disconnect { .. } => self.connected = false,
                Output::Event(ev) => self.events.push((side, ev)),
            }
        }
    }

    /// Deliver one frame to `to`, decoding it as the real transport would
    /// (a frame that does not decode is reported as malformed).
    pub fn deliver(&mut self, to: Side, frame: Frame) {
        let from = to.other();
        let limits = self.limits.clone();
        let max_payload = self.engine(to).store().max_payload();
        let input = match frame {
            Frame::Request { tag, bytes } => match decode_request(&bytes, &limits) {
                Ok(request) => Input::Request {
                    peer: from,
                    id: tag,
                    request,
                },
                Err(e) => Input::Malformed {
                    peer: from,
                    error: e.to_string(),
                },
            },
            Frame::Response { tag, bytes } => match decode_response(&bytes, &limits) {
                Ok(response) => receive(from, tag, response, max_payload),
                Err(e) => Input::Malformed {
                    peer: from,
                    error: e.to_string(),
                },
            },
            Frame::Gossip(bytes) => match decode_announce(&bytes, &limits) {
                Ok(announce) => receive_announce(from, announce),
                Err(_) => return,
            },
        };
        self.engine(to).handle(input);
    }

    /// Run until no frame is left (or the frame budget is spent).
    pub fn run(&mut self) {
        self.step(Side::A);
        self.step(Side::B);
        loop {
            let mut moved = false;
            for side in [Side::A, Side::B] {
                let mut frames = VecDeque::new();
                let rx = match side {
                    Side::A => &self.to_a.1,
                    Side::B => &self.to_b.1,
                };
                while let Ok(f) = rx.try_recv() {
                    frames.push_back(f);
                }
                while let Some(f) = frames.pop_front() {
                    if !self.connected {
                        continue;
                    }
                    if self.frame_budget.is_some_and(|b| self.frames >= b) {
                        // Out of budget: what is left stays on the wire,
                        // in order, for a later run.
                        let tx = self.sender(side);
                        for f in std::iter::once(f).chain(frames) {
                            let _ = tx.send(f);
                        }
                        return;
                    }
                    self.frames += 1;
                    self.bytes += match &f {
                        Frame::Request { bytes, .. } | Frame::Response { bytes, .. } => bytes.len(),
                        Frame::Gossip(bytes) => bytes.len(),
                    };
                    moved = true;
                    let mut f = f;
                    if let Some(tamper) = self.tamper.as_mut() {
                        tamper(side, &mut f);
                    }
                    self.deliver(side, f);
                }
                self.step(side);
            }
            if !moved {
                return;
            }
        }
    }
}
