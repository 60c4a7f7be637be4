//! The request fingerprint: what makes two requests with one key "the same request".

use http::request::Parts;
use idem_core::Fingerprint;

/// Fingerprints method, path, query and body.
///
/// Every field is length-prefixed and the query carries a presence flag, so no two
/// different requests share an encoding (`/a?b` vs `/a` + body `b`, `/a?` vs `/a`).
/// Headers are left out: clients and proxies rewrite them freely between retries.
pub(crate) fn request_fingerprint(parts: &Parts, body: &[u8]) -> Fingerprint {
    let method = parts.method.as_str().as_bytes();
    let path = parts.uri.path().as_bytes();
    let query = parts.uri.query().map(str::as_bytes);
    let mut encoded = Vec::with_capacity(
        33 + method.len() + path.len() + query.map_or(0, <[u8]>::len) + body.len(),
    );
    push_field(&mut encoded, method);
    push_field(&mut encoded, path);
    match query {
        Some(query) => {
            encoded.push(1);
            push_field(&mut encoded, query);
        }
        None => encoded.push(0),
    }
    push_field(&mut encoded, body);
    Fingerprint::from_bytes(&encoded)
}

fn push_field(encoded: &mut Vec<u8>, field: &[u8]) {
    encoded.extend_from_slice(&(field.len() as u64).to_be_bytes());
    encoded.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;

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
