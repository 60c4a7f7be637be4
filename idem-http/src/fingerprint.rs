//! The request fingerprint: what makes two requests with one key "the same request".

use http::Uri;
use http::request::Parts;
use idem_core::Fingerprint;

/// Fingerprints method, path, query and body.
///
/// Every field is length-prefixed and the query carries a presence flag, so no two
/// different requests share an encoding (`/a?b` vs `/a` + body `b`, `/a?` vs `/a`).
/// Headers are left out: clients and proxies rewrite them freely between retries.
pub(crate) fn request_fingerprint(parts: &Parts, body: &[u8]) -> Fingerprint {
    let uri = sent_uri(parts);
    let method = parts.method.as_str().as_bytes();
    let path = uri.path().as_bytes();
    let query = uri.query().map(str::as_bytes);
    // Each field's length (8 bytes, big-endian), then the field; the query after a presence
    // byte. Hashed part by part, so the body is not copied into one buffer with the rest.
    let [method_len, path_len, query_len, body_len] = [
        method.len(),
        path.len(),
        query.map_or(0, <[u8]>::len),
        body.len(),
    ]
    .map(|len| (len as u64).to_be_bytes());
    let presence: &[u8] = if query.is_some() { &[1] } else { &[0] };
    let query_field: [&[u8]; 2] = match query {
        Some(query) => [&query_len, query],
        None => [&[], &[]],
    };
    Fingerprint::from_byte_parts(
        [&method_len[..], method, &path_len, path, presence]
            .into_iter()
            .chain(query_field)
            .chain([&body_len[..], body]),
    )
}

/// The URI as the client sent it. Inside an axum `Router::nest` the request's own has the
/// nest's prefix stripped, so `/v1/orders` and `/v2/orders`, or `/tenants/a/orders` and
/// `/tenants/b/orders`, would read as one request and replay each other's response; axum
/// keeps the client's in `OriginalUri`. (Outside a nest the two are the same URI, so a
/// fingerprint stored before this read it is unchanged.)
fn sent_uri(parts: &Parts) -> &Uri {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(uri)) = parts.extensions.get() {
        return uri;
    }
    &parts.uri
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding the fingerprint hashes, built whole: each field length-prefixed (8
    /// bytes, big-endian), the query after a presence byte.
    fn encoded(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Vec<u8> {
        fn push(encoded: &mut Vec<u8>, field: &[u8]) {
            encoded.extend_from_slice(&(field.len() as u64).to_be_bytes());
            encoded.extend_from_slice(field);
        }
        let mut encoded = Vec::new();
        push(&mut encoded, method.as_bytes());
        push(&mut encoded, path.as_bytes());
        match query {
            Some(query) => {
                encoded.push(1);
                push(&mut encoded, query.as_bytes());
            }
            None => encoded.push(0),
        }
        push(&mut encoded, body);
        encoded
    }

    /// Pinned to the encoding: a fingerprint stored by an earlier release (one that built
    /// the encoding in a buffer) must still match the same request.
    #[test]
    fn the_fingerprint_hashes_the_length_prefixed_encoding() {
        let cases: [(&str, &str, Option<&str>, &[u8]); 4] = [
            ("POST", "/a", Some("x=1"), b"body"),
            ("POST", "/a", Some(""), b""),
            ("PUT", "/orders/7", None, b"{}"),
            ("PATCH", "/", None, b""),
        ];
        for (method, path, query, body) in cases {
            let uri = match query {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            };
            assert_eq!(
                fingerprint(method, &uri, body),
                Fingerprint::from_bytes(&encoded(method, path, query, body)),
                "{method} {uri}"
            );
        }
    }

    fn fingerprint(method: &str, uri: &str, body: &[u8]) -> Fingerprint {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("valid request")
            .into_parts();
        request_fingerprint(&parts, body)
    }

    #[test]
    fn same_request_same_fingerprint() {
        assert_eq!(
            fingerprint("POST", "/a?x=1", b"body"),
            fingerprint("POST", "/a?x=1", b"body")
        );
    }

    #[test]
    fn every_part_counts() {
        let base = fingerprint("POST", "/a?x=1", b"body");
        assert_ne!(base, fingerprint("PATCH", "/a?x=1", b"body"));
        assert_ne!(base, fingerprint("POST", "/b?x=1", b"body"));
        assert_ne!(base, fingerprint("POST", "/a?x=2", b"body"));
        assert_ne!(base, fingerprint("POST", "/a?x=1", b"bodY"));
    }

    #[test]
    fn boundaries_are_unambiguous() {
        assert_ne!(
            fingerprint("POST", "/a?", b""),
            fingerprint("POST", "/a", b"")
        );
        assert_ne!(
            fingerprint("POST", "/a?b", b""),
            fingerprint("POST", "/a", b"b")
        );
    }
}
