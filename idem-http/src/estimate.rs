//! How long a handler usually takes: the `Retry-After` hint of a 409.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The most routes tracked one by one; further ones share one average, so a server that
/// routes by raw paths (`/orders/17`, `/orders/18`, ...) cannot grow the map without bound.
const MAX_ROUTES: usize = 1024;

/// The longest route tracked one by one: a longer one (a long raw path, the client's) is
/// not kept as a map key, but shares the one average, so the map holds a bounded amount of
/// memory whatever paths clients send.
const MAX_ROUTE_LEN: usize = idem_core::MAX_KEY_LEN;

/// A [`RunTime`] per route (method and path template), shared by every service of a layer.
#[derive(Debug, Default)]
pub(crate) struct RunTimes {
    routes: RwLock<HashMap<String, Arc<RunTime>>>,
    others: Arc<RunTime>,
}

thread_local! {
    /// Where a request's route (`METHOD path`) is spelled for the lookup, so a lookup
    /// allocates nothing.
    static ROUTE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl RunTimes {
    /// The average of the route `method` `path` (a path template with the `axum` feature):
    /// one route is a method and a path, as in the key's scope, so a quick `PATCH /x` says
    /// nothing of how long `POST /x` takes.
    pub(crate) fn method_route(&self, method: &http::Method, path: &str) -> Arc<RunTime> {
        let method = method.as_str();
        if method.len() + 1 + path.len() > MAX_ROUTE_LEN {
            return Arc::clone(&self.others);
        }
        ROUTE.with_borrow_mut(|route| {
            route.clear();
            route.push_str(method);
            route.push(' ');
            route.push_str(path);
            self.route(route)
        })
    }

    /// The route's average, made on first use.
    pub(crate) fn route(&self, route: &str) -> Arc<RunTime> {
        if route.len() > MAX_ROUTE_LEN {
            return Arc::clone(&self.others);
        }
        // A poisoned lock only means a panic elsewhere mid-insert: the map is still whole.
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = routes.get(route) {
            return Arc::clone(found);
        }
        let full = routes.len() >= MAX_ROUTES;
        drop(routes);
        if full {
            return Arc::clone(&self.others);
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(routes.entry(route.to_owned()).or_default())
    }
}

/// A moving average of a route's handler run time.
///
/// A duplicate that finds the key in progress cannot know when the first request started
/// (it may run in another process), so the hint is the typical run time: a client that
/// waits that long usually finds the replay. It never exceeds the time the lease has left,
/// after which the key is taken over.
#[derive(Debug, Default)]
pub(crate) struct RunTime {
    /// The average in microseconds; zero until the first run.
    average_us: AtomicU64,
}

impl RunTime {
    /// Adds a run. Racing updates may lose one sample, which an average can afford.
    pub(crate) fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.average_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            // Weight 1/8 for the new sample.
            old - old / 8 + sample / 8
        };
        self.average_us.store(new, Ordering::Relaxed);
    }

    /// When a duplicate should ask again, given how long the lease has left.
    pub(crate) fn retry_after(&self, lease_left: Duration) -> Duration {
        match self.average_us.load(Ordering::Relaxed) {
            0 => lease_left,
            average => Duration::from_micros(average).min(lease_left),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_their_own_averages_up_to_a_bound() {
        let times = RunTimes::default();
        times.route("POST /a").record(Duration::from_secs(2));
        let lease = Duration::from_secs(30);
        assert_eq!(
            times.route("POST /a").retry_after(lease),
            Duration::from_secs(2)
        );
        assert_eq!(times.route("POST /b").retry_after(lease), lease);
        for i in 0..MAX_ROUTES {
            times.route(&format!("POST /{i}"));
        }
        let long = format!("POST /{}", "a".repeat(MAX_ROUTE_LEN));
        assert!(
            Arc::ptr_eq(&times.route(&long), &times.others),
            "never a map key"
        );
        let shared = times.route("POST /late");
        assert!(Arc::ptr_eq(&shared, &times.route("POST /later")));
    }

    #[test]
    fn a_route_is_a_method_and_a_path() {
        let times = RunTimes::default();
        times
            .method_route(&http::Method::PATCH, "/x")
            .record(Duration::from_millis(1));
        let lease = Duration::from_secs(30);
        assert_eq!(
            times
                .method_route(&http::Method::POST, "/x")
                .retry_after(lease),
            lease,
            "nothing known of POST /x"
        );
        assert!(Arc::ptr_eq(
            &times.method_route(&http::Method::PATCH, "/x"),
            &times.route("PATCH /x")
        ));
        let long = format!("/{}", "a".repeat(MAX_ROUTE_LEN));
        assert!(Arc::ptr_eq(
            &times.method_route(&http::Method::POST, &long),
            &times.others
        ));
    }

    #[test]
    fn a_route_longer_than_a_key_shares_the_one_average_even_with_room_left() {
        let times = RunTimes::default();
        let longest = format!("POST /{}", "a".repeat(MAX_ROUTE_LEN - "POST /".len()));
        assert_eq!(longest.len(), MAX_ROUTE_LEN);
        assert!(
            !Arc::ptr_eq(&times.route(&longest), &times.others),
            "a route as long as a key has an average of its own"
        );
        let longer = format!("{longest}a");
        assert!(
            Arc::ptr_eq(&times.route(&longer), &times.others),
            "a longer one is never a map key"
        );
    }

    #[test]
    fn the_hint_follows_the_runs_and_never_passes_the_lease() {
        let runs = RunTime::default();
        let lease = Duration::from_secs(30);
        assert_eq!(runs.retry_after(lease), lease, "nothing known yet");
        runs.record(Duration::from_secs(2));
        assert_eq!(runs.retry_after(lease), Duration::from_secs(2));
        for _ in 0..100 {
            runs.record(Duration::from_millis(500));
        }
        let hint = runs.retry_after(lease);
        assert!(hint < Duration::from_millis(510), "{hint:?}");
        assert_eq!(
            runs.retry_after(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
