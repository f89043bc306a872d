//! The dashboard's page: static assets compiled into the controller (so
//! that `cargo build` alone makes a working dashboard), and the rules for
//! who may ask the admin server's API.
//!
//! The page is `assets/index.html`, `assets/app.js` and `assets/app.css`
//! (written by hand), and two libraries from npm (uPlot for charts, dagre
//! for the topology's layout) that `dashboard/build.sh` copies into
//! `assets/vendor/` at the versions `dashboard/package-lock.json` pins.

use crate::admin::{Body, full};
use http::{Method, Response, StatusCode, header};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        path: "/assets/vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/assets/vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/vendor/uPlot.min.css"),
    },
    Asset {
        path: "/assets/vendor/dagre.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/dagre.min.js"),
    },
];

/// The page or one of its assets, if `path` names one.
pub(crate) fn asset(path: &str) -> Option<Result<Response<Body>, http::Error>> {
    let path = if path == "/index.html" { "/" } else { path };
    let asset = ASSETS.iter().find(|a| a.path == path)?;
    Some(
        Response::builder()
            .header(header::CONTENT_TYPE, asset.content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::X_FRAME_OPTIONS, "DENY")
            .body(full(asset.body)),
    )
}

/// Why a request may not be answered, if it may not: nothing but reads
/// (nothing on the admin port changes the mesh), and only for a `Host`
/// that is an IP address or `localhost`, so that a page from another site
/// cannot reach the API by pointing its own name at 127.0.0.1 (DNS
/// rebinding), as Linkerd's dashboard enforces its host.
pub(crate) fn refusal<B>(req: &http::Request<B>) -> Option<Result<Response<Body>, http::Error>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(
            Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "GET, HEAD")
                .body(full("the dashboard and its API are read-only\n")),
        );
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if !local_host(host) {
        return Some(
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .body(full("the dashboard answers requests for an IP address or localhost only\n")),
        );
    }
    None
}

/// `127.0.0.1:9990`, `[::1]:9990`, `localhost:9990`, `10.1.2.3`: an
/// address or localhost (with or without a port).
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, host: &str) -> http::Request<()> {
        http::Request::builder().method(method).uri("/api/stat").header(header::HOST, host).body(()).unwrap()
    }

    #[test]
    fn only_reads_for_local_names_and_addresses() {
        for host in
            ["127.0.0.1:9990", "localhost:9990", "[::1]:9990", "10.1.2.3", "LOCALHOST", "web.localhost:80"]
        {
            assert!(refusal(&request(Method::GET, host)).is_none(), "{host}");
        }
        for host in ["evil.example:9990", "127.0.0.1.nip.io:9990", "", "[evil]:1"] {
            let refused = refusal(&request(Method::GET, host)).unwrap().unwrap();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{host}");
        }
        let refused = refusal(&request(Method::POST, "127.0.0.1:9990")).unwrap().unwrap();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn every_asset_is_there() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.path);
            assert!(asset(a.path).is_some());
        }
        let page = String::from_utf8_lossy(ASSETS[0].body);
        for a in &ASSETS[1..] {
            assert!(page.contains(a.path), "index.html does not load {}", a.path);
        }
    }
}
