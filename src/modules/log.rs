//! `log::*`: messages in the run's output (and JSON events), never straight to the terminal.

use rhai::plugin::*;

use crate::output::Level;

fn emit(ctx: &NativeCallContext, level: Level, message: &str) -> Result<(), Box<EvalAltResult>> {
    super::session(ctx)?.effects.output().log(level, message);
    Ok(())
}

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod log_api {
    use crate::output::Level;

    /// Writes an informational line to the run's output.
    #[rhai_fn(return_raw)]
    pub fn info(ctx: NativeCallContext, message: &str) -> Result<(), Box<EvalAltResult>> {
        super::emit(&ctx, Level::Info, message)
    }

    /// Writes a warning (shown even with `-q`, and as a `warning` event).
    #[rhai_fn(return_raw)]
    pub fn warn(ctx: NativeCallContext, message: &str) -> Result<(), Box<EvalAltResult>> {
        super::emit(&ctx, Level::Warn, message)
    }

    /// Writes an error line without stopping the script (use `throw` to stop).
    #[rhai_fn(return_raw)]
    pub fn error(ctx: NativeCallContext, message: &str) -> Result<(), Box<EvalAltResult>> {
        super::emit(&ctx, Level::Error, message)
    }

    /// Writes a line shown only with `-v`.
    #[rhai_fn(return_raw)]
    pub fn debug(ctx: NativeCallContext, message: &str) -> Result<(), Box<EvalAltResult>> {
        super::emit(&ctx, Level::Debug, message)
    }
}
