//! What the layer promises, one async fn per rule, generic over the store.

use std::time::Duration;

use http::{StatusCode, header};
use idem_core::IdempotencyStore;
use idem_http::{KeyScope, OversizedResponse, Storage, WaitPolicy, problem};

use crate::support::{Call, builder, by_principal, key, send, serve};

pub async fn a_repeat_is_replayed_byte_for_byte<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    let key = key("replay");
    let call = Call::post("/orders", &key, "alice", "pay 5");
    let first = send(app.addr, &call).await;
    let again = send(app.addr, &call).await;

    assert_eq!(app.runs(), 1);
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "alice:1:pay 5");
    assert!(!first.replayed());
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert!(again.replayed());
    for name in [header::CONTENT_TYPE, header::LOCATION] {
        assert_eq!(again.headers.get(&name), first.headers.get(&name), "{name}");
    }
    assert!(
        again.headers.get("x-run").is_none(),
        "unselected headers are not stored"
    );
}

pub async fn the_same_key_on_another_request_is_422<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    let key = key("reuse");
    let first = send(app.addr, &Call::post("/orders", &key, "alice", "pay 5")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for call in [
        Call::post("/orders", &key, "alice", "pay 6"),
        Call::post("/orders?coupon=1", &key, "alice", "pay 5"),
    ] {
        let reused = send(app.addr, &call).await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reused.problem_type(), problem::KEY_REUSED);
    }
    assert_eq!(app.runs(), 1);
}

/// Issue 12's first finding: a second client with the same key got the first client's
/// response (or a 422 that blocked its own payment).
pub async fn principals_never_share_keys<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    let key = key("tenant");
    let alice = send(app.addr, &Call::post("/orders", &key, "alice", "pay 5")).await;
    let bob = send(app.addr, &Call::post("/orders", &key, "bob", "pay 5")).await;
    assert_eq!(app.runs(), 2, "both payments ran");
    assert!(!bob.replayed());
    assert!(alice.text().starts_with("alice:"));
    assert!(bob.text().starts_with("bob:"));

    // Each replays its own; another body from a third client is its own request too.
    let alice_again = send(app.addr, &Call::post("/orders", &key, "alice", "pay 5")).await;
    let bob_again = send(app.addr, &Call::post("/orders", &key, "bob", "pay 5")).await;
    assert_eq!(alice_again.body, alice.body);
    assert_eq!(bob_again.body, bob.body);
    assert!(alice_again.replayed() && bob_again.replayed());
    let carol = send(app.addr, &Call::post("/orders", &key, "carol", "pay 6")).await;
    assert_eq!(carol.status, StatusCode::CREATED);
    assert_eq!(app.runs(), 3);
}

pub async fn a_global_scope_is_shared_and_routes_stay_apart<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, KeyScope::global()).build().expect("valid")).await;
    let key = key("global");
    let alice = send(app.addr, &Call::post("/orders", &key, "alice", "x")).await;
    let bob = send(app.addr, &Call::post("/orders", &key, "bob", "x")).await;
    assert!(bob.replayed(), "a global scope is one namespace, as asked");
    assert_eq!(bob.body, alice.body);
    let other_route = send(app.addr, &Call::post("/other", &key, "alice", "x")).await;
    assert!(!other_route.replayed(), "the route is part of the scope");
    assert_eq!(app.runs(), 2);
}

pub async fn a_request_without_its_principal_is_refused<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    let key = key("anonymous");
    let mut call = Call::post("/orders", &key, "alice", "x");
    call.principal = None;
    let refused = send(app.addr, &call).await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refused.problem_type(), problem::NO_SCOPE);
    assert_eq!(app.runs(), 0);
}

/// Sends `/status/{code}` twice with one key: whether the second was a replay.
async fn second_is_replayed(addr: std::net::SocketAddr, code: u16) -> bool {
    let key = key(&format!("status-{code}"));
    let path = format!("/status/{code}");
    let call = Call::post(&path, &key, "alice", "");
    let first = send(addr, &call).await;
    assert_eq!(first.status.as_u16(), code, "{}", first.text());
    let second = send(addr, &call).await;
    if second.replayed() {
        assert_eq!(
            (second.status.as_u16(), second.text()),
            (code, format!("first {code}"))
        );
        true
    } else {
        assert_eq!(second.status, StatusCode::CREATED);
        false
    }
}

pub async fn the_status_policy_decides_what_is_stored<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    for (code, stored) in [
        (200, true),
        (201, true),
        (303, true),
        (400, true),
        (402, true),
        (404, true),
        (422, true),
        (408, false),
        (409, false),
        (425, false),
        (429, false),
        (500, true),
        (502, true),
        (503, false),
    ] {
        assert_eq!(
            second_is_replayed(app.addr, code).await,
            stored,
            "status {code}"
        );
    }
}

pub async fn the_status_policy_is_configurable<S: IdempotencyStore>(store: S) {
    let layer = builder(store, by_principal())
        .server_errors(Storage::Release)
        .status(StatusCode::NOT_FOUND, Storage::Release)
        .status(StatusCode::TOO_MANY_REQUESTS, Storage::Store)
        .status(StatusCode::BAD_GATEWAY, Storage::Store)
        .build()
        .expect("valid");
    let app = serve(layer).await;
    for (code, stored) in [
        (500, false),
        (502, true),
        (404, false),
        (429, true),
        (400, true),
    ] {
        assert_eq!(
            second_is_replayed(app.addr, code).await,
            stored,
            "status {code}"
        );
    }
}

pub async fn an_oversized_response_is_never_run_twice<S: IdempotencyStore>(store: S) {
    let layer = builder(store, by_principal())
        .max_response_body(4096)
        .build()
        .expect("valid");
    let app = serve(layer).await;
    let key = key("big");
    let call = Call::post("/big/10000", &key, "alice", "");
    let first = send(app.addr, &call).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body.len(), 10_000, "the first client gets it all");
    assert!(first.body.iter().all(|&b| b == 1));
    let retry = send(app.addr, &call).await;
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.problem_type(), problem::RESPONSE_NOT_STORED);
    assert!(retry.replayed());
    assert_eq!(app.runs(), 1, "never a silent second run");

    // At the limit it is stored and replayed as usual.
    let at_limit = crate::support::key("at-limit");
    let call = Call::post("/big/4096", &at_limit, "alice", "");
    let first = send(app.addr, &call).await;
    let again = send(app.addr, &call).await;
    assert_eq!(again.body, first.body);
    assert!(again.replayed());
    assert_eq!(app.runs(), 2);
}

pub async fn an_oversized_response_can_be_refused<S: IdempotencyStore>(store: S) {
    let layer = builder(store, by_principal())
        .max_response_body(4096)
        .oversized(OversizedResponse::Refuse)
        .build()
        .expect("valid");
    let app = serve(layer).await;
    let key = key("refused");
    let call = Call::post("/big/5000", &key, "alice", "");
    let first = send(app.addr, &call).await;
    assert_eq!(first.problem_type(), problem::RESPONSE_NOT_STORED);
    let retry = send(app.addr, &call).await;
    assert_eq!(retry.problem_type(), problem::RESPONSE_NOT_STORED);
    assert_eq!(app.runs(), 1);
}

fn retry_after(reply: &crate::support::Reply) -> u64 {
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert_eq!(reply.problem_type(), problem::IN_PROGRESS);
    reply.headers[header::RETRY_AFTER]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds")
}

pub async fn a_duplicate_gets_409_with_a_useful_retry_after<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    // Nothing is known of the route yet: the hint is the lease's time left (30 s).
    let first_key = key("slow-1");
    let call = Call::post("/gated", &first_key, "alice", "");
    let first = tokio::spawn({
        let addr = app.addr;
        let key = first_key.clone();
        async move { send(addr, &Call::post("/gated", &key, "alice", "")).await }
    });
    app.until_started(1).await;
    assert!(retry_after(&send(app.addr, &call).await) > 5);
    app.gate.add_permits(1);
    assert_eq!(first.await.expect("first").status, StatusCode::CREATED);

    // Now the route's runs are known to be short: the hint says so, not the lease.
    let second_key = key("slow-2");
    let second = tokio::spawn({
        let addr = app.addr;
        let key = second_key.clone();
        async move { send(addr, &Call::post("/gated", &key, "alice", "")).await }
    });
    app.until_started(2).await;
    let duplicate = send(app.addr, &Call::post("/gated", &second_key, "alice", "")).await;
    assert!(retry_after(&duplicate) <= 5, "{:?}", duplicate.headers);
    app.gate.add_permits(1);
    assert_eq!(second.await.expect("second").status, StatusCode::CREATED);
    assert_eq!(app.runs(), 2);
}

pub async fn a_duplicate_can_wait_for_the_replay<S: IdempotencyStore>(store: S) {
    let layer = builder(store, by_principal())
        .wait(WaitPolicy::wait(Duration::from_secs(20)))
        .build()
        .expect("valid");
    let app = serve(layer).await;
    let key = key("wait");
    let first = tokio::spawn({
        let (addr, key) = (app.addr, key.clone());
        async move { send(addr, &Call::post("/gated", &key, "alice", "")).await }
    });
    app.until_started(1).await;
    let waiting = tokio::spawn({
        let (addr, key) = (app.addr, key.clone());
        async move { send(addr, &Call::post("/gated", &key, "alice", "")).await }
    });
    // The duplicate is waiting (not answered) while the first runs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "a waiting duplicate is not answered early"
    );
    app.gate.add_permits(1);
    let first = first.await.expect("first");
    let waited = waiting.await.expect("duplicate");
    assert_eq!(
        (first.status, waited.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(waited.replayed());
    assert_eq!(waited.body, first.body);
    assert_eq!(app.runs(), 1);
}

pub async fn sixty_four_identical_requests_run_the_handler_once<S: IdempotencyStore>(store: S) {
    let layer = builder(store, by_principal())
        .wait(WaitPolicy::wait(Duration::from_secs(30)))
        .build()
        .expect("valid");
    let app = serve(layer).await;
    let key = key("race");
    let replies: Vec<_> = (0..64)
        .map(|_| {
            let (addr, key) = (app.addr, key.clone());
            tokio::spawn(
                async move { send(addr, &Call::post("/orders", &key, "alice", "x")).await },
            )
        })
        .collect();
    let mut bodies = Vec::new();
    for reply in replies {
        let reply = reply.await.expect("a reply");
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        bodies.push(reply.body);
    }
    assert_eq!(app.runs(), 1);
    assert!(
        bodies.iter().all(|body| *body == bodies[0]),
        "one response for all"
    );
}

pub async fn the_key_is_a_structured_field_string<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    let too_long = format!("\"{}\"", "k".repeat(256));
    for bad in [
        "\"abc",
        "\"k\";x=1",
        "a, b",
        "abc",
        "\"\"",
        too_long.as_str(),
    ] {
        let reply = send(app.addr, &Call::post("/orders", bad, "alice", "x")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(reply.problem_type(), problem::INVALID_KEY, "{bad:?}");
    }
    assert_eq!(app.runs(), 0);
}

pub async fn bare_keys_are_accepted_only_when_allowed<S: IdempotencyStore>(store: S) {
    let layer = builder(store, by_principal())
        .allow_bare_keys(true)
        .build()
        .expect("valid");
    let app = serve(layer).await;
    let quoted = key("bare");
    let bare = quoted.trim_matches('"').to_owned();
    let first = send(app.addr, &Call::post("/orders", &bare, "alice", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(app.addr, &Call::post("/orders", &quoted, "alice", "x")).await;
    assert!(again.replayed(), "both spellings name one key");
    for bad in ["\"abc", "\"k\";x=1", "a, b"] {
        let reply = send(app.addr, &Call::post("/orders", bad, "alice", "x")).await;
        assert_eq!(reply.problem_type(), problem::INVALID_KEY, "{bad:?}");
    }
    assert_eq!(app.runs(), 1);
}

pub async fn missing_keys_and_other_methods<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    let mut call = Call::post("/orders", "", "alice", "x");
    call.key = None;
    assert_eq!(send(app.addr, &call).await.status, StatusCode::CREATED);
    assert_eq!(send(app.addr, &call).await.status, StatusCode::CREATED);
    assert_eq!(app.runs(), 2, "optional by default: no key, no idempotency");
    let key = key("get");
    let get = Call {
        method: "GET",
        ..Call::post("/orders", &key, "alice", "")
    };
    assert_eq!(send(app.addr, &get).await.text(), "listing");
    assert!(!send(app.addr, &get).await.replayed(), "GET passes through");

    let (store, _) = (crate::stores::memory().await, ());
    let app = serve(
        builder(store, by_principal())
            .require_key(true)
            .build()
            .expect("valid"),
    )
    .await;
    let refused = send(app.addr, &call).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.problem_type(), problem::MISSING_KEY);
    assert_eq!(app.runs(), 0);
}

pub async fn an_oversized_request_is_413<S: IdempotencyStore>(store: S) {
    let layer = builder(store, by_principal())
        .max_request_body(16)
        .build()
        .expect("valid");
    let app = serve(layer).await;
    let key = key("413");
    let over = send(
        app.addr,
        &Call::post("/orders", &key, "alice", &"a".repeat(17)),
    )
    .await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(over.problem_type(), problem::REQUEST_TOO_LARGE);
    let at = send(
        app.addr,
        &Call::post("/orders", &key, "alice", &"a".repeat(16)),
    )
    .await;
    assert_eq!(at.status, StatusCode::CREATED);
    assert_eq!(app.runs(), 1);
}

/// Issue 11's case: a client with a short timeout hangs up while the handler runs; its
/// retry must never run the handler a second time.
pub async fn a_client_that_hangs_up_never_causes_a_second_run<S: IdempotencyStore>(store: S) {
    let app = serve(builder(store, by_principal()).build().expect("valid")).await;
    let key = key("hang-up");
    let impatient = tokio::spawn({
        let (addr, key) = (app.addr, key.clone());
        async move { send(addr, &Call::post("/gated", &key, "alice", "")).await }
    });
    app.until_started(1).await;
    impatient.abort(); // the connection is dropped mid-handler
    let _ = impatient.await;

    let retry = send(app.addr, &Call::post("/gated", &key, "alice", "")).await;
    assert_eq!(
        retry.status,
        StatusCode::CONFLICT,
        "still running: {}",
        retry.text()
    );
    app.gate.add_permits(1);
    let mut replay = retry;
    for _ in 0..400 {
        replay = send(app.addr, &Call::post("/gated", &key, "alice", "")).await;
        if replay.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        (replay.status, replay.text()),
        (StatusCode::CREATED, "done".to_owned())
    );
    assert!(
        replay.replayed(),
        "the disconnected request's response was stored"
    );
    assert_eq!(app.runs(), 1, "the handler ran once");
}
