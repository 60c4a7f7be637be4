//! Outages: with its server killed, the token store fails fast with `Unavailable`, never
//! hangs or panics, and the same store works again once the server is back. And replies
//! lost to a timeout: a consume the server applied after its client gave up is its
//! consumer's, and the consumer's resend is `Consumed`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::{RedisServer, raw_connection, token_store_at, value_of};
use crate::outage::{NO_HANG, builder, is_unavailable, nothing_listening, once_back, timed};
use idem_core::{
    Consumption, Error, OwnerToken, Rejection, Scope, Token, TokenStore, Tokens, Ttl, async_trait,
};
use idem_redis::RedisTokenStore;
use idem_redis::redis::{self, aio::MultiplexedConnection};

#[tokio::test]
async fn a_killed_server_gives_unavailable_and_the_store_recovers() {
    let mut server = RedisServer::start();
    let tokens = Tokens::new(token_store_at(&server.url(), builder()).await);
    let alice = Scope::new("alice").expect("a valid scope");
    let before = tokens.issue(&alice).await.expect("issue");

    server.kill();
    let started = Instant::now();
    let issued = tokens.issue(&alice).await;
    assert!(is_unavailable(&issued), "issue: {issued:?}");
    let consumed = tokens.consume(&alice, before.as_str()).await;
    assert!(is_unavailable(&consumed), "consume: {consumed:?}");
    let loaded = tokens.store().load_scripts().await;
    assert!(is_unavailable(&loaded), "load_scripts: {loaded:?}");
    assert!(started.elapsed() < NO_HANG, "took {:?}", started.elapsed());

    // A fresh server (its memory is gone) and the same store value.
    server.restart();
    let after = once_back(|| tokens.issue(&alice)).await;
    assert_eq!(
        tokens
            .consume(&alice, after.as_str())
            .await
            .expect("consume"),
        Consumption::Consumed
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable_at_once() {
    let result = timed(builder::<RedisTokenStore>().connect(&nothing_listening())).await;
    assert!(is_unavailable(&result), "{result:?}");
}

#[tokio::test]
async fn a_prefix_with_braces_is_refused() {
    let result = RedisTokenStore::builder()
        .prefix("app{1}:")
        .connect("redis://127.0.0.1:1")
        .await;
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
}

/// Far longer than the store's response timeout: a consume sent during the pause times out
/// on the client, and is held by the server until [`unpause`] (or this, if the test fails
/// first).
const PAUSE_MS: u64 = 10_000;

/// A token store on `server` whose response timeout is short (300 ms), with its script
/// loaded: a consume is one `EVALSHA`, never a `SCRIPT LOAD` the pause would hold too.
async fn timing_out_store(server: &RedisServer) -> RedisTokenStore {
    let store = token_store_at(
        &server.url(),
        builder().response_timeout(Duration::from_millis(300)),
    )
    .await;
    store.load_scripts().await.expect("load the consume script");
    store
}

/// `CLIENT PAUSE ms WRITE`: from its `OK` on, the server holds every command that may write
/// (the consume script included) unanswered and unrun, then runs them when the pause ends.
/// A consume sent now times out on the client and is applied afterwards, its reply lost:
/// unlike a `DEBUG SLEEP`, whose start the test cannot see, the `OK` says the pause is on.
async fn pause_writes(admin: &mut MultiplexedConnection) {
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE_MS)
        .arg("WRITE")
        .query_async::<()>(admin)
        .await
        .expect("CLIENT PAUSE");
}

/// `CLIENT UNPAUSE`: the held commands run, in the order each connection sent them.
async fn unpause(admin: &mut MultiplexedConnection) {
    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async::<()>(admin)
        .await
        .expect("CLIENT UNPAUSE");
}

/// The value of a token of `scope` that `consumer` used up.
fn used_by(consumer: &OwnerToken, scope: &str) -> Vec<u8> {
    [
        b"\x01\x02".as_slice(),
        consumer.as_bytes(),
        scope.as_bytes(),
    ]
    .concat()
}

#[tokio::test]
async fn a_consume_applied_after_its_timeout_is_consumed_by_the_same_consumers_resend() {
    let server = RedisServer::start();
    let store = timing_out_store(&server).await;
    let mut admin = raw_connection(&server.url()).await;
    let alice = Scope::new("alice").expect("a valid scope");
    let token = Tokens::new(store.clone())
        .issue(&alice)
        .await
        .expect("issue");
    let (first, second) = (OwnerToken::random(), OwnerToken::random());

    pause_writes(&mut admin).await;
    let lost = store.consume(&token, &alice, &first).await;
    assert!(is_unavailable(&lost), "the paused consume: {lost:?}");
    unpause(&mut admin).await;

    // The resend goes after the first send on the same connection, so the server has run
    // the first by the time it reads this one: the token is used, by `first`.
    assert_eq!(
        store.consume(&token, &alice, &first).await.expect("resend"),
        Consumption::Consumed
    );
    let redis_key = store.redis_key(&token);
    assert_eq!(
        value_of(&mut admin, &redis_key).await,
        Some(used_by(&first, "alice")),
        "the first send was applied, the resend wrote nothing"
    );
    assert_eq!(
        store
            .consume(&token, &alice, &second)
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
}

/// A token store in front of the Redis one that ends the server's pause when a consume
/// times out, and keeps every consume's consumer and answer: the test sees the resend
/// [`Tokens::consume`] makes, and knows it followed a send the server held.
#[derive(Debug)]
struct UnpauseOnTimeout {
    store: RedisTokenStore,
    admin: tokio::sync::Mutex<MultiplexedConnection>,
    sends: Mutex<Vec<(OwnerToken, Result<Consumption, String>)>>,
}

impl UnpauseOnTimeout {
    fn sends(&self) -> Vec<(OwnerToken, Result<Consumption, String>)> {
        self.sends.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl TokenStore for UnpauseOnTimeout {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.store.issue(token, scope, ttl).await
    }

    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        let answer = self.store.consume(token, scope, consumer).await;
        if is_unavailable(&answer) {
            unpause(&mut *self.admin.lock().await).await;
        }
        let kept = answer
            .as_ref()
            .map(Clone::clone)
            .map_err(ToString::to_string);
        self.sends
            .lock()
            .expect("not poisoned")
            .push((*consumer, kept));
        answer
    }
}

/// End to end: the consume's first send times out and is applied by the server afterwards,
/// and `Tokens::consume`, resending as the same consumer, answers `Consumed`; the business
/// runs, where a fresh consumer's retry would be refused and the client's token lost.
#[tokio::test]
async fn tokens_consume_resends_a_consume_whose_reply_timed_out_and_is_consumed() {
    let server = RedisServer::start();
    let mut admin = raw_connection(&server.url()).await;
    let tokens = Tokens::new(UnpauseOnTimeout {
        store: timing_out_store(&server).await,
        admin: tokio::sync::Mutex::new(raw_connection(&server.url()).await),
        sends: Mutex::new(Vec::new()),
    });
    let alice = Scope::new("alice").expect("a valid scope");
    let token = tokens.issue(&alice).await.expect("issue");

    pause_writes(&mut admin).await;
    assert_eq!(
        tokens
            .consume(&alice, token.as_str())
            .await
            .expect("answered by the resend"),
        Consumption::Consumed
    );
    let sends = tokens.store().sends();
    let consumer = sends[0].0;
    assert!(sends[0].1.is_err(), "the first send timed out: {sends:?}");
    // One resend, unless the machine stalled past a resend's timeout too.
    assert_eq!(
        sends.last(),
        Some(&(consumer, Ok(Consumption::Consumed))),
        "{sends:?}"
    );
    assert!(
        sends.iter().all(|(sent_by, _)| *sent_by == consumer),
        "every send is the same consumer's: {sends:?}"
    );
    let redis_key = tokens.store().store.redis_key(&token);
    assert_eq!(
        value_of(&mut admin, &redis_key).await,
        Some(used_by(&consumer, "alice")),
        "used once, by the consumer of both sends"
    );

    // The next call is another consumer.
    assert_eq!(
        tokens
            .consume(&alice, token.as_str())
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
}
