//! TLS set-up shared by the HTTP and SMTP clients: rustls with the `ring` provider,
//! installed once per process.

/// Installs the process-wide rustls crypto provider (idempotent).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
