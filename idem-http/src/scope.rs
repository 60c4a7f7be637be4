//! Whose keys: the scope every key lives in.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use http::request::Parts;
use idem_core::{Fingerprint, MAX_KEY_LEN};

/// Reads the principal's scope from a request's extensions.
type ScopeFn = dyn Fn(&http::Extensions) -> Option<String> + Send + Sync;

/// The scope of idempotency keys: two requests share a key only when they have the same
/// scope, the same route and the same `Idempotency-Key`.
///
/// There is no default: a layer is built with a scope the application chose, so keys are
/// never silently global. Most APIs want [`KeyScope::principal`]: the authenticated client
/// (account, tenant, API key id) that the application's auth layer put in the request's
/// extensions. Without it, a second client that sends the same key gets the first
/// client's response (another tenant's payment), and can block a key by reusing it with
/// another body.
///
/// The raw `Authorization` header is a poor scope: bearer tokens are refreshed between a
/// request and its retry (a retry after a timeout often follows a token refresh), so the
/// retry would land in another scope and run again. Scope by who the token names, not by
/// the token.
///
/// The route (method and path) is part of the scope by default, so one key on two
/// endpoints names two operations; with the `axum` feature the route is the matched path
/// template (`/orders/{id}`), otherwise the request path as the layer sees it. Inside an
/// axum `Router::nest`, that path has the nest's prefix stripped: without the `axum`
/// feature, a layer shared by `/v1` and `/v2` nests would see one route, `/orders`, for
/// `/v1/orders` and `/v2/orders`, and replay one's response to the other. Enable the
/// feature with axum (or put the layer outside the nests).
///
/// ```
/// use idem_http::KeyScope;
///
/// #[derive(Clone)]
/// struct Principal(String); // set by the app's auth layer: request.extensions_mut().insert(..)
///
/// let per_client = KeyScope::principal(|principal: &Principal| principal.0.clone());
/// let shared = KeyScope::global(); // an internal API with one trusted caller, say
/// # let _ = (per_client, shared);
/// ```
#[derive(Clone)]
#[must_use]
pub struct KeyScope {
    principal: Option<Arc<ScopeFn>>,
    per_route: bool,
}

impl fmt::Debug for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyScope")
            .field(
                "scope",
                &if self.principal.is_some() {
                    "principal"
                } else {
                    "global"
                },
            )
            .field("per_route", &self.per_route)
            .finish()
    }
}

/// Why a request has no namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoPrincipal;

impl KeyScope {
    /// Keys are scoped by the request extension `T` that the application's auth layer
    /// inserts (the authenticated account, tenant or API client), turned into a string by
    /// `id`. A request without that extension is refused with 500 (`no-scope`), since the
    /// layer cannot tell whose key it is: put the auth layer in front of this one.
    pub fn principal<T, F>(id: F) -> Self
    where
        T: Send + Sync + 'static,
        F: Fn(&T) -> String + Send + Sync + 'static,
    {
        Self {
            principal: Some(Arc::new(move |extensions: &http::Extensions| {
                extensions.get::<T>().map(&id)
            })),
            per_route: true,
        }
    }

    /// One scope for every client: the same key from two clients names one operation.
    /// Only for APIs whose every caller is trusted with every other caller's responses.
    pub fn global() -> Self {
        Self {
            principal: None,
            per_route: true,
        }
    }

    /// Leaves the route out of the scope, so one key on two endpoints names one operation
    /// (the second endpoint then gets 422, as its request differs). Default: the route is
    /// in the scope.
    pub fn across_routes(mut self) -> Self {
        self.per_route = false;
        self
    }

    /// Writes the key namespace for a request into `out` (cleared first): the principal
    /// (length-prefixed, so no principal can pose as another plus a route) or `*` for the
    /// global scope, then the route, or the route's digest when the route would make the
    /// namespace too long for a key (a long path is the client's, not the scope's fault), or
    /// the digest of both when even the route's digest does not fit beside the principal.
    pub(crate) fn namespace(&self, parts: &Parts, out: &mut String) -> Result<(), NoPrincipal> {
        out.clear();
        match &self.principal {
            Some(principal) => {
                let id = principal(&parts.extensions).ok_or(NoPrincipal)?;
                // Writing to a `String` cannot fail.
                let _ = write!(out, "{}:{id}", id.len());
            }
            None => out.push('*'),
        }
        if self.per_route {
            let scope_len = out.len();
            let (method, route) = (parts.method.as_str(), route(&parts.extensions, &parts.uri));
            out.push(' ');
            out.push_str(method);
            out.push(' ');
            out.push_str(route);
            if out.len() > MAX_KEY_LEN {
                // The route is the client's (a long path): too long for a key, its digest
                // stands for it. One space, where a route has two (neither a method nor a
                // path holds one), so a digest never spells a route.
                let digest =
                    Fingerprint::from_byte_parts([method.as_bytes(), b" ", route.as_bytes()]);
                out.truncate(scope_len);
                let _ = write!(out, " #{digest}");
            }
            if out.len() > MAX_KEY_LEN
                && scope_len <= MAX_KEY_LEN
                && !out[..scope_len].chars().any(char::is_control)
            {
                // A principal that fits a key, but not with the route's digest: the digest
                // of both stands for them. It starts with `#`, where every other namespace
                // starts with a principal's length or `*`, so it spells no other namespace.
                // (A principal no key could hold is left to be refused as the scope's.)
                let digest = Fingerprint::from_byte_parts([
                    &out.as_bytes()[..scope_len],
                    b" ",
                    method.as_bytes(),
                    b" ",
                    route.as_bytes(),
                ]);
                out.clear();
                let _ = write!(out, "#{digest}");
            }
        }
        Ok(())
    }
}

/// The route template axum matched, or the path.
pub(crate) fn route<'a>(extensions: &'a http::Extensions, uri: &'a http::Uri) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    #[cfg(not(feature = "axum"))]
    let _ = extensions;
    uri.path()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Principal(&'static str);

    fn parts(method: &str, uri: &str, principal: Option<&'static str>) -> Parts {
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("valid request");
        if let Some(principal) = principal {
            request.extensions_mut().insert(Principal(principal));
        }
        request.into_parts().0
    }

    /// The namespace as a value, for comparing.
    fn namespace(scope: &KeyScope, parts: &Parts) -> Result<String, NoPrincipal> {
        // Something in the buffer beforehand: it must be cleared.
        let mut out = String::from("left over");
        scope.namespace(parts, &mut out).map(|()| out)
    }

    fn by_principal() -> KeyScope {
        KeyScope::principal(|p: &Principal| p.0.to_owned())
    }

    #[test]
    fn principals_and_routes_make_distinct_namespaces() {
        let scope = by_principal();
        let alice = namespace(&scope, &parts("POST", "/orders?x=1", Some("alice")));
        assert_eq!(alice, Ok("5:alice POST /orders".to_owned()));
        let namespaces = [
            alice,
            namespace(&scope, &parts("POST", "/orders", Some("bob"))),
            namespace(&scope, &parts("PATCH", "/orders", Some("alice"))),
            namespace(&scope, &parts("POST", "/refunds", Some("alice"))),
            namespace(&KeyScope::global(), &parts("POST", "/orders", None)),
        ];
        for (i, a) in namespaces.iter().enumerate() {
            for b in &namespaces[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_principal_cannot_pose_as_another_plus_a_route() {
        let scope = by_principal().across_routes();
        assert_ne!(
            namespace(&scope, &parts("POST", "/", Some("a 1"))),
            namespace(&by_principal(), &parts("POST", "/", Some("a")))
        );
        assert_eq!(
            namespace(&scope, &parts("POST", "/x", Some("alice"))),
            namespace(&scope, &parts("PUT", "/y", Some("alice")))
        );
    }

    #[test]
    fn a_route_too_long_for_a_key_is_scoped_by_its_digest() {
        let long = |last: char| format!("/{}{last}", "a".repeat(300));
        let scope = by_principal();
        let first =
            namespace(&scope, &parts("POST", &long('a'), Some("alice"))).expect("a namespace");
        assert!(first.len() <= MAX_KEY_LEN, "{}", first.len());
        assert!(first.starts_with("5:alice #"), "{first}");
        assert_eq!(
            namespace(&scope, &parts("POST", &long('a'), Some("alice"))),
            Ok(first.clone())
        );
        for other in [
            parts("POST", &long('b'), Some("alice")),
            parts("PATCH", &long('a'), Some("alice")),
            parts("POST", &long('a'), Some("bob")),
        ] {
            assert_ne!(namespace(&scope, &other), Ok(first.clone()));
        }
        // A namespace exactly as long as a key keeps its spelling too.
        let prefix = "5:alice POST /";
        let fits = format!("/{}", "a".repeat(MAX_KEY_LEN - prefix.len()));
        let exact = namespace(&scope, &parts("POST", &fits, Some("alice"))).expect("a namespace");
        assert_eq!(exact.len(), MAX_KEY_LEN);
        assert_eq!(exact, format!("5:alice POST {fits}"));
        // A route that fits keeps its spelling.
        assert_eq!(
            namespace(&scope, &parts("POST", "/orders", Some("alice"))),
            Ok("5:alice POST /orders".to_owned())
        );
    }

    #[test]
    fn a_principal_that_fits_a_key_keeps_its_requests_scoped_on_any_path() {
        let scope = KeyScope::principal(|p: &Principal| p.0.to_owned());
        let long_a: &'static str = "a".repeat(200).leak();
        let long_b: &'static str = "b".repeat(200).leak();
        let path = format!("/{}", "p".repeat(400));
        let first = namespace(&scope, &parts("POST", &path, Some(long_a))).expect("a namespace");
        assert!(first.len() <= MAX_KEY_LEN, "{}", first.len());
        assert!(first.starts_with('#'), "{first}");
        assert_eq!(
            namespace(&scope, &parts("POST", &path, Some(long_a))),
            Ok(first.clone())
        );
        for other in [
            parts("POST", &path, Some(long_b)),
            parts("PATCH", &path, Some(long_a)),
            parts("POST", &format!("{path}q"), Some(long_a)),
        ] {
            assert_ne!(namespace(&scope, &other), Ok(first.clone()));
        }
        // A principal too long for a key alone, or with a control character, is still the
        // scope's fault, whatever the path.
        let longest: &'static str = "c".repeat(MAX_KEY_LEN).leak();
        let refused = namespace(&scope, &parts("POST", "/x", Some(longest))).expect("built");
        assert!(refused.len() > MAX_KEY_LEN);
        let control: &'static str = format!("{}\n", "d".repeat(199)).leak();
        let kept = namespace(&scope, &parts("POST", &path, Some(control))).expect("built");
        assert!(kept.contains('\n'), "{kept}");
    }

    #[test]
    fn no_principal_no_namespace() {
        assert_eq!(
            namespace(&by_principal(), &parts("POST", "/orders", None)),
            Err(NoPrincipal)
        );
    }
}
