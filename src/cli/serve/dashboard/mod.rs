//! The dashboard: one page of HTML, a stylesheet and a script, built into the binary and
//! served by `carapace serve` itself — no build step, no CDN, nothing fetched from anywhere
//! but this daemon.
//!
//! The page holds no data. Its script reads everything through the API with the token the
//! operator types in (kept in the tab's `sessionStorage`, sent as a bearer header), so the
//! dashboard sees exactly what that token sees: tenant scoping, rate limits and errors are the
//! API's, with no second authorization path to get wrong. No cookie is ever set, so a page on
//! another site cannot make the browser act with the operator's rights (no CSRF).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Only this daemon's own files and API, and the report plots the operator opens from disk
/// (`blob:`): no inline script, nothing from another origin, never inside another site's frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob:; connect-src 'self'; form-action 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

/// One embedded file and how it is served.
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("assets/app.js"),
};
const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("assets/style.css"),
};
const ICON: Asset = Asset {
    content_type: "image/svg+xml",
    body: include_str!("assets/icon.svg"),
};

/// The dashboard's routes, for the API's router (which runs them without a token check).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(|| async { serve(&INDEX) }))
        .route("/dashboard/app.js", get(|| async { serve(&SCRIPT) }))
        .route("/dashboard/style.css", get(|| async { serve(&STYLE) }))
        .route("/dashboard/icon.svg", get(|| async { serve(&ICON) }))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::to("/dashboard/icon.svg") }),
        )
}

fn serve(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // A new binary may bring new assets: the browser asks again each time (they are small).
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for (name, text) in [("index.html", INDEX.body), ("style.css", STYLE.body)] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(needle), "{name} refers to {needle}");
            }
        }
        assert!(INDEX.body.contains(r#"<script src="/dashboard/app.js""#));
        assert!(
            !INDEX.body.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
    }

    #[test]
    fn the_script_builds_the_page_without_html_strings() {
        // Every user-provided string reaches the page through textContent or attributes set
        // by the DOM, never parsed as HTML: escaping cannot be forgotten where nothing parses.
        for needle in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.body.contains(needle), "app.js uses {needle}");
        }
        // The token is sent as a header only, never in a URL.
        assert!(
            !SCRIPT.body.contains("token="),
            "app.js puts a token in a URL"
        );
    }
}
