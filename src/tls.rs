//! TLS set-up shared by the HTTP and SMTP clients: rustls with the `ring` provider,
//! installed once per process.

/// Installs the process-wide rustls crypto provider (idempotent).
pub(crate) fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The values `notify.email.tls` may take.
pub(crate) const TLS_MODES: &[&str] = &["starttls", "tls", "none"];

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1 (also `[::1]` and
/// ::ffff:127.x.x.x). The only hosts a mail may be sent to without TLS (`tls = "none"`):
/// anywhere else the password and the mail would cross the network in clear.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim().trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Why these TLS settings may not be used, if they may not (`None`: they may).
pub(crate) fn tls_problem(host: &str, tls: &str) -> Option<String> {
    if !TLS_MODES.contains(&tls) {
        return Some(format!(
            "`{tls}` is not a TLS mode (one of: {})",
            TLS_MODES.join(", ")
        ));
    }
    if tls == "none" && !is_loopback(host) {
        return Some(format!(
            "`none` (no TLS) is allowed only for a loopback host (localhost, 127.0.0.0/8, ::1), not `{host}`: the password and the mail would cross the network in clear; use `starttls` or `tls`"
        ));
    }
    None
}
