//! A command's failure over a host set, as data: which hosts failed (each a
//! [`CommandError`] with its host, command, exit code and stderr tail) and which were not
//! started. The sentence people read is rendered once, in `Display`; scripts read the
//! fields (`modules::host_error`).

use std::fmt;

use super::CommandError;

/// Failed (and not started) hosts of one fan-out, in the order of the set.
#[derive(Debug, Clone)]
pub(crate) struct Failures {
    /// How many hosts the command was for.
    pub total: usize,
    /// Never empty: a fan-out with no failed host is not an error.
    pub failed: Vec<CommandError>,
    /// Hosts not started because an earlier failure stopped the rollout.
    pub skipped: Vec<String>,
}

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let ([only], 1) = (self.failed.as_slice(), self.total) {
            return write!(f, "{only}");
        }
        write!(f, "{} of {} hosts failed:", self.failed.len(), self.total)?;
        for e in &self.failed {
            write!(f, "\n- {}", e.to_string().replace('\n', "\n  "))?;
        }
        if !self.skipped.is_empty() {
            write!(
                f,
                "\nnot started (stopped after the failure): {}",
                self.skipped.join(", ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Failures {}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(host: &str, code: i32) -> CommandError {
        CommandError::Failed {
            host: host.into(),
            command: "sh -c 'exit 4'".into(),
            code,
            stderr_tail: vec!["boom".into()],
        }
    }

    #[test]
    fn one_host_of_one_reads_as_that_host_s_error() {
        let f = Failures {
            total: 1,
            failed: vec![failed("a", 4)],
            skipped: Vec::new(),
        };
        assert_eq!(f.to_string(), failed("a", 4).to_string());
    }

    #[test]
    fn several_hosts_are_listed_with_their_stderr_indented_and_the_skipped_named() {
        let f = Failures {
            total: 3,
            failed: vec![failed("a", 4), failed("b", 5)],
            skipped: vec!["c".into()],
        };
        assert_eq!(
            f.to_string(),
            "2 of 3 hosts failed:\n- command failed on `a`: `sh -c 'exit 4'` exited with code 4\n    stderr (last lines):\n    | boom\n- command failed on `b`: `sh -c 'exit 4'` exited with code 5\n    stderr (last lines):\n    | boom\nnot started (stopped after the failure): c"
        );
    }
}
