//! Connections of their own for the finishes that wait for replicas.
//!
//! `WAIT` must be sent on the connection that made the write (it counts the replicas that
//! have that connection's writes), and Redis holds that connection up until the replicas
//! answer or the wait times out. On the store's one multiplexed connection every other call
//! (claims, replays, other keys' finishes) would queue behind it; on a lane of its own, only
//! a finish that finds every lane busy does.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::connection::Connection;

/// The connections replicated finishes are sent on, each taken by the fewest finishes.
pub(crate) struct WaitLanes<C> {
    lanes: Arc<[Lane<C>]>,
}

struct Lane<C> {
    connection: Connection<C>,
    /// Finishes sent on this lane and not answered yet.
    in_flight: AtomicUsize,
}

impl<C> Clone for WaitLanes<C> {
    fn clone(&self) -> Self {
        Self {
            lanes: Arc::clone(&self.lanes),
        }
    }
}

impl<C> WaitLanes<C> {
    /// How many connections a store that waits for replicas opens besides its own: as many
    /// finishes wait for replicas at once without queueing behind one another.
    pub(crate) const COUNT: usize = 4;

    /// Lanes on `connections`: none for a store on a connection of the application's,
    /// whose finishes then go on that connection.
    pub(crate) fn new(connections: Vec<Connection<C>>) -> Self {
        let lanes = connections
            .into_iter()
            .map(|connection| Lane {
                connection,
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        Self { lanes }
    }

    /// How many lanes there are.
    pub(crate) fn len(&self) -> usize {
        self.lanes.len()
    }

    /// The lane with the fewest finishes in flight, counted as busy until the guard drops
    /// (a finish that is cancelled included); `None` when there are no lanes.
    pub(crate) fn take(&self) -> Option<TakenLane<'_, C>> {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|lane| lane.in_flight.load(Ordering::Relaxed))?;
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(TakenLane { lane })
    }
}

/// A lane a finish is sent on.
pub(crate) struct TakenLane<'a, C> {
    lane: &'a Lane<C>,
}

impl<C> Deref for TakenLane<'_, C> {
    type Target = Connection<C>;

    fn deref(&self) -> &Connection<C> {
        &self.lane.connection
    }
}

impl<C> Drop for TakenLane<'_, C> {
    fn drop(&mut self) {
        self.lane.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
