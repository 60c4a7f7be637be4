//! The facade's `axum` feature turns on idem-http's: one layer shared by nested axum
//! routers keeps their routes apart.

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use idem::MemoryStore;
use idem::http::{IdempotencyLayer, KeyScope};
use tower::ServiceExt;

/// Inside `Router::nest` the path the layer sees has the nest's prefix stripped, so without
/// the route template `/v1/orders` and `/v2/orders` are one route, and the second request
/// with the key got the first one's response replayed (`KeyScope`'s docs).
#[tokio::test]
async fn nested_routers_keep_their_routes_apart() {
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let v1 = Router::new()
        .route("/orders", post(|| async { "v1" }))
        .layer(layer.clone());
    let v2 = Router::new()
        .route("/orders", post(|| async { "v2" }))
        .layer(layer);
    let app = Router::new().nest("/v1", v1).nest("/v2", v2);
    for (path, answer) in [("/v1/orders", "v1"), ("/v2/orders", "v2")] {
        let request = axum::http::Request::post(path)
            .header("idempotency-key", "\"k\"")
            .body(Body::empty())
            .expect("a valid request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        assert!(
            !response.headers().contains_key("idempotent-replayed"),
            "{path} was replayed"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(body.as_ref(), answer.as_bytes(), "{path}");
    }
}
