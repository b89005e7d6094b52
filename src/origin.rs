//! Who runs, and from where: the run id, the actor, the OS account and the CI run. The
//! session, the audit records and the lock holders all take them from here.

/// The URL of the CI run this process belongs to (GitHub Actions), if any.
pub(crate) fn ci_run_url() -> Option<String> {
    match (
        std::env::var("GITHUB_SERVER_URL"),
        std::env::var("GITHUB_REPOSITORY"),
        std::env::var("GITHUB_RUN_ID"),
    ) {
        (Ok(s), Ok(r), Ok(id)) => Some(format!("{s}/{r}/actions/runs/{id}")),
        _ => None,
    }
}

/// Who is running this: the GitHub actor inside GitHub Actions (`GITHUB_ACTIONS=true`),
/// else the OS account of this process. `$USER`, `$LOGNAME` and a `GITHUB_ACTOR` set
/// outside Actions are never believed: anyone can set them.
pub(crate) fn actor() -> String {
    let in_actions = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    match std::env::var("GITHUB_ACTOR") {
        Ok(a) if in_actions && !a.trim().is_empty() => a,
        _ => os_user(),
    }
}

/// The OS account this process runs as (real uid → passwd), `uid N` when it has no entry.
pub(crate) fn os_user() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

/// A run id that sorts by time and that nobody can guess or repeat: the time, the pid
/// (to find the process), and 48 random bits — two runs on two machines in the same
/// millisecond with the same pid still differ, and a lock's private names
/// (`lock.stale.<run>…`) cannot be predicted.
pub(crate) fn run_id() -> String {
    format!(
        "{}-{:x}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
        std::process::id(),
        random_hex(6)
    )
}

/// `bytes` random bytes from the operating system, as lower-case hex: run ids and the
/// per-command nonce of the remote process-group marker. Falls back to the clock and
/// pid only if the system has no random source at all.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            ^ u128::from(std::process::id()) << 64;
        for (i, b) in buf.iter_mut().enumerate() {
            // The low byte of the shifted seed.
            *b = (seed >> ((i % 16) * 8)).to_le_bytes()[0];
        }
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_differ_within_one_process() {
        let (a, b) = (run_id(), run_id());
        assert_ne!(
            a, b,
            "two run ids of one process in one millisecond are equal"
        );
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 3, "{a}");
        assert_eq!(parts[2].len(), 12, "{a}");
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{a}"
        );
    }
}
