//! The page a visitor gets when a request fails before its response began
//! (500). It tells the site's owner where the details are without naming a
//! server path, and shows the details themselves only where the owner asked
//! for them: `WSGI_ENV=development` (OpenLiteSpeed's `appserverEnv`, set by
//! hosting panels), as Passenger's friendly error pages do. A site that
//! cannot run at all says why on every page (nothing secret: two versions).

use std::sync::OnceLock;

/// Set once at start-up by [`configure`].
struct Page {
    /// Where the details are, for the page: "the web server's error log" or
    /// the log file's name (never its path).
    hint: String,
    /// `WSGI_ENV=development`: tracebacks are shown in the browser.
    details: bool,
}

static PAGE: OnceLock<Page> = OnceLock::new();

/// Records where request errors are logged (`log_file`: LSAPI_STDERR_LOG,
/// else the server's error log through the connection) and whether
/// WSGI_ENV asks for development pages.
pub fn configure(log_file: Option<&str>) {
    let hint = match log_file.and_then(|p| std::path::Path::new(p).file_name()) {
        Some(name) => format!("the application's log file {}", name.to_string_lossy()),
        None => "the web server's error log".into(),
    };
    let details = std::env::var("WSGI_ENV").is_ok_and(|v| v.eq_ignore_ascii_case("development"));
    let _ = PAGE.set(Page { hint, details });
}

/// `detail` when the page may show it (development), else `None`.
pub(super) fn shown(detail: &str) -> Option<&str> {
    PAGE.get().filter(|p| p.details).map(|_| detail)
}

/// The 500 page, with `detail` (already chosen by [`shown`] or a
/// site-wide problem) HTML-escaped in a `<pre>` block.
pub(super) fn page(detail: Option<&str>) -> Vec<u8> {
    let hint = PAGE.get().map_or("the error log", |p| p.hint.as_str());
    let mut out = Vec::with_capacity(320 + detail.map_or(0, |d| d.len() + 16));
    out.extend_from_slice(
        b"<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>\
<body><h1>Internal Server Error</h1><p>The application failed to handle this request. \
The site's owner finds the details in ",
    );
    out.extend_from_slice(hint.as_bytes());
    out.extend_from_slice(b".</p>");
    if let Some(d) = detail {
        out.extend_from_slice(b"<pre>");
        for b in d.bytes() {
            match b {
                b'<' => out.extend_from_slice(b"&lt;"),
                b'>' => out.extend_from_slice(b"&gt;"),
                b'&' => out.extend_from_slice(b"&amp;"),
                b'"' => out.extend_from_slice(b"&quot;"),
                _ => out.push(b),
            }
        }
        out.extend_from_slice(b"</pre>");
    }
    out.extend_from_slice(b"</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn details_are_escaped() {
        let p = String::from_utf8(page(Some("<script>&\""))).unwrap();
        assert!(p.contains("<pre>&lt;script&gt;&amp;&quot;</pre>"), "{p}");
        assert!(!String::from_utf8(page(None)).unwrap().contains("<pre>"));
    }
}
