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
use std::time::Duration;

use idem_core::Error;
use redis::{Cmd, Value};

use crate::connection::{Connection, RedisConnection};
use crate::reply::Reply;
use crate::scripts::LuaScript;

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

    /// The lane with the fewest finishes in flight, counted as busy until the guard drops;
    /// `None` when there are no lanes.
    pub(crate) fn take(&self) -> Option<TakenLane<C>> {
        loop {
            let (index, busy) = self
                .lanes
                .iter()
                .map(|lane| lane.in_flight.load(Ordering::Relaxed))
                .enumerate()
                .min_by_key(|&(_, busy)| busy)?;
            let lane = &self.lanes[index];
            // Taken only if no other finish took it since it was counted: two finishes that
            // both saw it free would otherwise share it while another lane stays free.
            if lane
                .in_flight
                .compare_exchange(busy, busy + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Some(TakenLane {
                    lanes: Arc::clone(&self.lanes),
                    index,
                });
            }
        }
    }
}

/// A lane a finish is sent on.
pub(crate) struct TakenLane<C> {
    lanes: Arc<[Lane<C>]>,
    index: usize,
}

impl<C> TakenLane<C> {
    fn lane(&self) -> &Lane<C> {
        &self.lanes[self.index]
    }
}

impl<C: RedisConnection> TakenLane<C> {
    /// [`Connection::run_then`] on this lane, in a task of its own that keeps the lane taken
    /// until the server has answered: once sent, a `WAIT` blocks the lane's connection until
    /// it ends, whether its caller still awaits it or went away, and a finish sent on the lane
    /// meanwhile would queue behind it. A call given up on unanswered (`Unavailable`: the
    /// response timeout passed while the server was paused or busy) leaves the lane taken
    /// until the server has caught up with it ([`drain`](Self::drain)).
    pub(crate) async fn run_then(
        self,
        script: &'static LuaScript,
        call: Cmd,
        then: impl Fn(Duration) -> Cmd + Send + Sync + 'static,
    ) -> Result<(Reply, Value), Error> {
        let sent = tokio::spawn(async move {
            let answer = Connection::run_then(&self, script, &call, then).await;
            if matches!(answer, Err(Error::Unavailable { .. })) {
                tokio::spawn(self.drain());
            }
            answer
        });
        match sent.await {
            Ok(answer) => answer,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The runtime is shutting down: the finish may or may not have been applied.
            Err(err) => Err(Error::unavailable(err)),
        }
    }
}

impl<C: RedisConnection> TakenLane<C> {
    /// Keeps the lane taken until the server has answered everything sent on it before, then
    /// frees it. The client gives up on a reply at its response timeout, but the server still
    /// runs what it was sent once it gets to it (a paused server, resumed): the finish, then
    /// its `WAIT`, which blocks the connection for up to the replica wait. Replies come in
    /// order, so a `PING`'s answer (or its own timeout, on a server still not answering) comes
    /// after theirs.
    async fn drain(self) {
        let _ = self.query::<Value>(&redis::cmd("PING")).await;
    }
}

impl<C> Deref for TakenLane<C> {
    type Target = Connection<C>;

    fn deref(&self) -> &Connection<C> {
        &self.lane().connection
    }
}

impl<C> Drop for TakenLane<C> {
    fn drop(&mut self) {
        self.lane().in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::Duration;

    use redis::aio::MultiplexedConnection;

    use super::*;
    use crate::connection::Deadline;

    /// Lanes on clones of one connection to the shared test server: only which lane each
    /// finish takes matters here.
    async fn lanes() -> WaitLanes<MultiplexedConnection> {
        let url =
            std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let connection = redis::Client::open(url)
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the shared Redis answers");
        let deadline = Deadline::Store(Duration::from_secs(3));
        WaitLanes::new(
            (0..WaitLanes::<MultiplexedConnection>::COUNT)
                .map(|_| Connection::new(connection.clone(), String::new(), deadline))
                .collect(),
        )
    }

    /// As many finishes as there are lanes, taking theirs at the same moment, each get a lane
    /// of their own: none waits behind another's `WAIT` while a lane is free.
    #[tokio::test]
    async fn finishes_taking_lanes_at_once_never_share_one_while_another_is_free() {
        let lanes = lanes().await;
        let count = lanes.len();
        let barrier = Barrier::new(count);
        std::thread::scope(|scope| {
            for _ in 0..count {
                scope.spawn(|| {
                    for _ in 0..2_000 {
                        barrier.wait();
                        let taken = lanes.take().expect("a lane");
                        barrier.wait();
                        let busy: Vec<usize> = lanes
                            .lanes
                            .iter()
                            .map(|lane| lane.in_flight.load(Ordering::SeqCst))
                            .collect();
                        assert_eq!(busy, vec![1; count], "finishes per lane");
                        barrier.wait();
                        drop(taken);
                    }
                });
            }
        });
    }
}
