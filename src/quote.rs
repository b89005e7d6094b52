//! Shell quoting. A value from a script or the CLI never reaches a shell unquoted: remote
//! commands are built from argument lists with [`command_line`].

/// An argument no shell can carry (it holds a NUL byte). One variant on purpose: no
/// caller branches on it, it is a message for the person who passed the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an argument contains a NUL byte, which cannot be passed to a shell")]
pub(crate) struct NulByte;

/// Quotes each argument for a POSIX shell and joins them with spaces.
///
/// Fails only for a NUL byte, which no shell argument can carry.
pub(crate) fn command_line(argv: &[String]) -> Result<String, NulByte> {
    shlex::try_join(argv.iter().map(String::as_str)).map_err(|_| NulByte)
}

/// The command for display: quoted like [`command_line`], never failing.
pub(crate) fn join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| match shlex::try_quote(a) {
            Ok(q) => q.into_owned(),
            Err(_) => format!("{a:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(argv: &[&str]) {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let line = command_line(&argv).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for a in {line}; do printf '%s\\0' \"$a\"; done"))
            .output()
            .unwrap();
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(str::to_owned)
            .collect();
        assert_eq!(got, argv, "line was {line}");
    }

    #[test]
    fn hostile_arguments_reach_the_shell_as_single_words() {
        round_trip(&[
            "plain",
            "with space",
            "semi;colon",
            "$(touch /tmp/pwned)",
            "`id`",
            "it's",
            "\"dq\"",
            "new\nline",
            "*",
            "",
            "--flag=a b",
        ]);
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert_eq!(command_line(&["a\0b".to_owned()]), Err(NulByte));
    }
}
