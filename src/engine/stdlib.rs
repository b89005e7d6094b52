//! The stdlib `.rhai` files, embedded so that one binary is enough on a server.

/// `(module path, source)`; the module path is what scripts write in `import "…"`.
pub(crate) const FILES: &[(&str, &str)] = &[
    ("laravel", include_str!("../../stdlib/laravel.rhai")),
    ("traffic", include_str!("../../stdlib/traffic.rhai")),
    (
        "strategies/common",
        include_str!("../../stdlib/strategies/common.rhai"),
    ),
    (
        "strategies/rolling",
        include_str!("../../stdlib/strategies/rolling.rhai"),
    ),
    (
        "strategies/blue_green",
        include_str!("../../stdlib/strategies/blue_green.rhai"),
    ),
    (
        "strategies/canary",
        include_str!("../../stdlib/strategies/canary.rhai"),
    ),
    (
        "strategies/rollback",
        include_str!("../../stdlib/strategies/rollback.rhai"),
    ),
];

pub(crate) fn get(path: &str) -> Option<&'static str> {
    FILES.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    /// Every file under `stdlib/` must be embedded, or a fresh server would miss it.
    #[test]
    fn every_stdlib_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib");
        let mut on_disk: Vec<String> = crate::project::rhai_files(&root)
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .unwrap()
                    .with_extension("")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = super::FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }
}
