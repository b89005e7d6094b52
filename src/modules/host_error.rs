//! `HostError`: what a failed command throws into a script. `catch (e)` reads its fields
//! (`e.host`, `e.command`, `e.code`, `e.stderr`, `e.kind`, `e.message`, `e.hosts`), while
//! `"" + e`, `` `${e}` ``, `print(e)` and `e.to_string()` give the same sentence a string
//! error gave before — so scripts that only printed their errors keep working.
//!
//! Every field is masked by the run's redactor when the value is made: a secret a
//! command wrote to stderr never reaches the script in the clear. This adapter converts
//! only; the failure itself is the effect layer's [`CommandError`] / [`Failures`].

use rhai::{Array, Dynamic, Engine, EvalAltResult, Position};

use crate::effects::{CommandError, Failures};
use crate::redact::Redactor;

/// The value a script catches when a command failed on one or more hosts.
#[derive(Debug, Clone)]
pub(crate) struct HostError {
    /// The whole sentence, as the run's error would print it (masked).
    message: String,
    /// Each failed host, in the order of the host set. Never empty.
    hosts: Vec<Failure>,
    /// Hosts not started because an earlier failure stopped the rollout.
    skipped: Vec<String>,
}

#[derive(Debug, Clone)]
struct Failure {
    host: String,
    command: String,
    code: Option<i32>,
    stderr: String,
    kind: &'static str,
    message: String,
}

impl Failure {
    fn of(e: &CommandError, r: &Redactor) -> Failure {
        let mask = |s: &str| r.redact(s).into_owned();
        Failure {
            host: mask(e.host()),
            command: mask(e.command()),
            code: e.code(),
            stderr: mask(&e.stderr_tail().join("\n")),
            kind: e.kind().as_str(),
            message: mask(&e.to_string()),
        }
    }
}

impl HostError {
    /// One host's failure.
    pub(crate) fn command(e: &CommandError, redactor: &Redactor) -> HostError {
        let one = Failure::of(e, redactor);
        HostError {
            message: one.message.clone(),
            hosts: vec![one],
            skipped: Vec::new(),
        }
    }

    /// A fan-out's failures: `e.host` and the other single-host fields are the first
    /// failed host's; `e.hosts` lists them all.
    pub(crate) fn fan_out(f: &Failures, redactor: &Redactor) -> HostError {
        HostError::listed(&f.to_string(), &f.failed, &f.skipped, redactor)
    }

    /// Failures under a sentence of the caller's own (an upload names each host's line).
    pub(crate) fn listed(
        message: &str,
        failed: &[CommandError],
        skipped: &[String],
        redactor: &Redactor,
    ) -> HostError {
        HostError {
            message: redactor.redact(message).into_owned(),
            hosts: failed.iter().map(|e| Failure::of(e, redactor)).collect(),
            skipped: skipped
                .iter()
                .map(|s| redactor.redact(s).into_owned())
                .collect(),
        }
    }

    /// The sentence a script sees when it prints the error.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The error a native function returns: a value `catch (e)` receives as it is.
    pub(crate) fn into_rhai(self) -> Box<EvalAltResult> {
        EvalAltResult::ErrorRuntime(Dynamic::from(self), Position::NONE).into()
    }

    fn first<T>(&self, field: impl Fn(&Failure) -> T) -> Dynamic
    where
        T: Into<Dynamic>,
    {
        self.hosts
            .first()
            .map_or(Dynamic::UNIT, |f| field(f).into())
    }
}

/// Registers `HostError` with its getters and its string forms.
pub(crate) fn register_type(engine: &mut Engine) {
    engine
        .register_type_with_name::<HostError>("HostError")
        .register_get("message", |e: &mut HostError| e.message.clone())
        .register_get("host", |e: &mut HostError| e.first(|f| f.host.clone()))
        .register_get("command", |e: &mut HostError| {
            e.first(|f| f.command.clone())
        })
        .register_get("code", |e: &mut HostError| {
            e.hosts
                .first()
                .and_then(|f| f.code)
                .map_or(Dynamic::UNIT, |c| Dynamic::from(i64::from(c)))
        })
        .register_get("stderr", |e: &mut HostError| e.first(|f| f.stderr.clone()))
        .register_get("kind", |e: &mut HostError| e.first(|f| f.kind.to_owned()))
        .register_get("hosts", |e: &mut HostError| {
            e.hosts
                .iter()
                .map(|f| {
                    Dynamic::from(HostError {
                        message: f.message.clone(),
                        hosts: vec![f.clone()],
                        skipped: Vec::new(),
                    })
                })
                .collect::<Array>()
        })
        .register_get("skipped", |e: &mut HostError| {
            e.skipped
                .iter()
                .cloned()
                .map(Dynamic::from)
                .collect::<Array>()
        })
        .register_fn("to_string", |e: &mut HostError| e.message.clone())
        .register_fn("to_debug", |e: &mut HostError| {
            format!("HostError({:?})", e.message)
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(e: HostError, script: &str) -> String {
        let mut engine = Engine::new();
        register_type(&mut engine);
        let mut scope = rhai::Scope::new();
        scope.push("e", e);
        engine
            .eval_with_scope::<Dynamic>(&mut scope, script)
            .map_or_else(|err| format!("error: {err}"), |v| v.to_string())
    }

    fn failed(host: &str, code: i32, stderr: &str) -> CommandError {
        CommandError::Failed {
            host: host.into(),
            command: "migrate".into(),
            code,
            stderr_tail: stderr.lines().map(str::to_owned).collect(),
        }
    }

    #[test]
    fn a_script_reads_the_fields_and_still_prints_the_sentence() {
        let r = Redactor::new();
        let e = HostError::command(&failed("web2", 3, "one\ntwo"), &r);
        let sentence = failed("web2", 3, "one\ntwo").to_string();
        assert_eq!(
            eval(
                e.clone(),
                "`${e.host}|${e.command}|${e.code}|${e.kind}|${e.stderr}`"
            ),
            "web2|migrate|3|exit|one\ntwo"
        );
        assert_eq!(eval(e.clone(), "\"\" + e"), sentence);
        assert_eq!(eval(e.clone(), "`${e}`"), sentence);
        assert_eq!(eval(e.clone(), "e.to_string()"), sentence);
        assert_eq!(eval(e.clone(), "e + \"!\""), format!("{sentence}!"));
        assert_eq!(eval(e, "e.message == e.hosts[0].message"), "true");
    }

    #[test]
    fn a_fan_out_lists_every_host_and_the_first_is_e_host() {
        let r = Redactor::new();
        let f = Failures {
            total: 3,
            failed: vec![failed("a", 4, ""), failed("b", 5, "")],
            skipped: vec!["c".into()],
        };
        let e = HostError::fan_out(&f, &r);
        assert_eq!(eval(e.clone(), "e.host"), "a");
        assert_eq!(
            eval(
                e.clone(),
                "let s = \"\"; for h in e.hosts { s += `${h.host}=${h.code};` } s"
            ),
            "a=4;b=5;"
        );
        assert_eq!(eval(e.clone(), "e.skipped[0]"), "c");
        assert_eq!(eval(e, "e.message"), f.to_string());
    }

    #[test]
    fn secrets_are_masked_in_every_field() {
        let r = Redactor::new();
        r.add("hunter22");
        let mut err = failed("a", 1, "token hunter22 rejected");
        if let CommandError::Failed { command, .. } = &mut err {
            *command = "login hunter22".into();
        }
        let e = HostError::command(&err, &r);
        let all = eval(e, "`${e.command}|${e.stderr}|${e.message}`");
        assert!(!all.contains("hunter22"), "{all}");
        assert_eq!(all.matches("***").count(), 4, "{all}");
    }

    #[test]
    fn a_host_that_never_answered_has_no_code() {
        let r = Redactor::new();
        let e = HostError::command(
            &CommandError::Unavailable {
                host: "a".into(),
                command: "true".into(),
                message: "cannot connect".into(),
                stderr_tail: Vec::new(),
                kind: crate::transport::ErrorKind::Unreachable,
            },
            &r,
        );
        assert_eq!(eval(e, "`${e.kind} ${e.code == ()}`"), "unreachable true");
    }
}
