//! What the router emits besides the one datagram an [`Action`](super::Action) sends: fsroute's
//! own 100 Trying, CANCELs and ACKs, the next failover attempt after a timer. The shell drains it
//! with `poll_transmit` after every `handle` and `tick`, and gives the buffers back with
//! `recycle`, so a steady state allocates nothing.

use std::collections::VecDeque;

use crate::conn::Hop;

/// Recycled buffers kept for reuse; past this the allocator gets them back.
const MAX_FREE: usize = 256;
/// A fresh buffer holds a typical SIP message without growing.
const BUFFER_CAPACITY: usize = 2048;

#[derive(Default)]
pub struct Outbox {
    queue: VecDeque<(Hop, Vec<u8>)>,
    free: Vec<Vec<u8>>,
}

impl Outbox {
    /// The next datagram to send, in the order they were queued.
    pub fn poll(&mut self) -> Option<(Hop, Vec<u8>)> {
        self.queue.pop_front()
    }

    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if self.free.len() < MAX_FREE {
            self.free.push(buf);
        }
    }

    /// An empty buffer, recycled when one is at hand.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(BUFFER_CAPACITY))
    }

    /// Queues what `write` puts in a fresh buffer for `to`.
    pub fn emit(&mut self, to: Hop, write: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.take_buffer();
        write(&mut buf);
        self.queue.push_back((to, buf));
    }

    /// Queues a buffer already written (one from [`Self::take_buffer`]).
    pub fn push(&mut self, to: Hop, buf: Vec<u8>) {
        self.queue.push_back((to, buf));
    }
}
