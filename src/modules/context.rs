//! The values a script holds about where it runs: hosts and host sets (opaque values that
//! only the inventory can create, so a script cannot aim a command at an address it made
//! up), the `env`/`app`/`args`/`run` maps, durations. The global functions that hand them
//! out are in `globals.rs`.

use crate::sync::Locked;
use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};

use crate::inventory::Host;
use crate::session::Session;

/// One host of the inventory.
#[derive(Debug, Clone)]
pub(crate) struct HostRef(pub Arc<Host>);

/// An ordered set of hosts (a role, or all hosts of the environment).
#[derive(Debug, Clone, Default)]
pub(crate) struct HostSet(pub Vec<Arc<Host>>);

/// A host shows as its name (`web1`).
impl std::fmt::Display for HostRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.name)
    }
}

/// A set shows as its hosts' names, in order (`web1, web2`).
impl std::fmt::Display for HostSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, h) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&h.name)?;
        }
        Ok(())
    }
}

impl IntoIterator for HostSet {
    type Item = HostRef;
    type IntoIter = std::iter::Map<std::vec::IntoIter<Arc<Host>>, fn(Arc<Host>) -> HostRef>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().map(HostRef as fn(Arc<Host>) -> HostRef)
    }
}

pub(crate) fn register_types(engine: &mut Engine) {
    engine
        .register_type_with_name::<HostRef>("Host")
        .register_get("name", |h: &mut HostRef| h.0.name.clone())
        .register_get("address", |h: &mut HostRef| h.0.address.clone())
        .register_get("port", |h: &mut HostRef| i64::from(h.0.port))
        .register_get("user", |h: &mut HostRef| {
            h.0.user.clone().map_or(Dynamic::UNIT, Dynamic::from)
        })
        .register_get("transport", |h: &mut HostRef| {
            h.0.transport.as_str().to_owned()
        })
        .register_get("url", |h: &mut HostRef| {
            h.0.url.clone().map_or(Dynamic::UNIT, Dynamic::from)
        })
        .register_get("preview_url", |h: &mut HostRef| {
            h.0.preview_url.clone().map_or(Dynamic::UNIT, Dynamic::from)
        })
        .register_get("deploy_path", |h: &mut HostRef| h.0.deploy_path.clone())
        .register_get("roles", |h: &mut HostRef| {
            h.0.roles
                .iter()
                .cloned()
                .map(Dynamic::from)
                .collect::<Array>()
        })
        .register_fn("to_string", |h: &mut HostRef| h.to_string())
        .register_fn("to_debug", |h: &mut HostRef| {
            format!("host({:?})", h.0.name)
        });
    // The indexer below returns this; named, editors' definitions show `-> Host`.
    engine.register_type_with_name_raw(
        std::any::type_name::<Result<HostRef, Box<EvalAltResult>>>(),
        "Host",
    );
    engine
        .register_type_with_name::<HostSet>("HostSet")
        .register_iterator::<HostSet>()
        .register_get("len", |s: &mut HostSet| {
            i64::try_from(s.0.len()).unwrap_or(i64::MAX)
        })
        .register_fn("len", |s: &mut HostSet| {
            i64::try_from(s.0.len()).unwrap_or(i64::MAX)
        })
        .register_fn("is_empty", |s: &mut HostSet| s.0.is_empty())
        .register_get("names", |s: &mut HostSet| {
            s.0.iter()
                .map(|h| Dynamic::from(h.name.clone()))
                .collect::<Array>()
        })
        .register_indexer_get(
            |s: &mut HostSet, i: i64| -> Result<HostRef, Box<EvalAltResult>> {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| s.0.get(i))
                    .map(|h| HostRef(h.clone()))
                    .ok_or_else(|| {
                        super::error(format!(
                            "host index {i} out of range: the set has {} hosts",
                            s.0.len()
                        ))
                    })
            },
        )
        .register_fn("to_string", |s: &mut HostSet| s.to_string())
        .register_fn("to_debug", |s: &mut HostSet| {
            let names: Vec<&str> = s.0.iter().map(|h| h.name.as_str()).collect();
            format!("hosts({names:?})")
        })
        // `hosts("web") + hosts("worker")`: every host once, in order of first appearance.
        .register_fn("+", |a: HostSet, b: HostSet| {
            let mut all = a.0;
            for h in b.0 {
                if !all.iter().any(|x| x.name == h.name) {
                    all.push(h);
                }
            }
            HostSet(all)
        })
        .register_fn("contains", |s: &mut HostSet, h: HostRef| {
            s.0.iter().any(|x| x.name == h.0.name)
        });
}

/// The `env`, `app`, `args` and `run` maps, as one map keyed by those names.
pub(crate) fn context_map(session: &Session) -> Map {
    let mut out = Map::new();
    let args: Map = session
        .info
        .args
        .iter()
        .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
        .collect();
    out.insert("args".into(), args.into());

    let mut env = Map::new();
    if let Some(e) = &session.env {
        // Always present, so scripts can test `env.url != ()`.
        env.insert("name".into(), e.name.clone().into());
        env.insert(
            "url".into(),
            e.url.clone().map_or(Dynamic::UNIT, Dynamic::from),
        );
        // `protected` is reserved in Rhai (`env.protected` does not parse), hence `is_protected`.
        env.insert("is_protected".into(), e.protected.into());
        env.insert("deploy_path".into(), e.deploy_path.clone().into());
        env.insert("backup_dir".into(), e.backup_dir.clone().into());
        env.insert("php".into(), e.php.clone().into());
        env.insert("composer".into(), e.composer.clone().into());
        env.insert("health".into(), strings(&e.health));
        env.insert(
            "migrate_on".into(),
            e.migrate_on.clone().map_or(Dynamic::UNIT, Dynamic::from),
        );
        let roles: Map = e
            .roles
            .iter()
            .map(|(r, members)| (r.as_str().into(), strings(members)))
            .collect();
        env.insert("roles".into(), roles.into());
        let vars = rhai::serde::to_dynamic(&e.vars).unwrap_or_else(|_| Map::new().into());
        env.insert("vars".into(), vars);
    }
    out.insert("env".into(), env.into());

    let mut app = Map::new();
    if let Some(inv) = &session.inventory {
        let a = &inv.app;
        app.insert("name".into(), a.name.clone().into());
        app.insert(
            "repository".into(),
            a.repository.clone().map_or(Dynamic::UNIT, Dynamic::from),
        );
        app.insert("keep_releases".into(), i64::from(a.keep_releases).into());
        app.insert("shared_dirs".into(), strings(&a.shared_dirs));
        app.insert("shared_files".into(), strings(&a.shared_files));
        app.insert("writable_dirs".into(), strings(&a.writable_dirs));
        app.insert(
            "root".into(),
            inv.root.to_string_lossy().into_owned().into(),
        );
    }
    out.insert("app".into(), app.into());

    let i = &session.info;
    let mut run = Map::new();
    run.insert("id".into(), i.id.clone().into());
    run.insert("script".into(), i.script.clone().into());
    run.insert(
        "reason".into(),
        i.reason.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    run.insert("actor".into(), i.actor.clone().into());
    run.insert("dry_run".into(), session.effects.dry_run().into());
    let down: rhai::Array = session
        .maintenance
        .locked()
        .iter()
        .cloned()
        .map(Dynamic::from)
        .collect();
    run.insert("maintenance".into(), down.into());
    out.insert("run".into(), run.into());
    out
}

fn strings(v: &[String]) -> Dynamic {
    v.iter()
        .cloned()
        .map(Dynamic::from)
        .collect::<Array>()
        .into()
}

/// Parses `"5s"`, `"500ms"`, `2` (seconds) or `0.5` (seconds).
pub(crate) fn duration_arg(value: &Dynamic) -> Result<std::time::Duration, Box<EvalAltResult>> {
    if let Ok(i) = value.as_int() {
        return u64::try_from(i)
            .map(std::time::Duration::from_secs)
            .map_err(|_| super::error(format!("duration must not be negative, got {i}")));
    }
    if let Ok(f) = value.as_float() {
        return std::time::Duration::try_from_secs_f64(f)
            .map_err(|_| super::error(format!("`{f}` is not a duration in seconds")));
    }
    if let Ok(s) = value.clone().into_string() {
        return humantime::parse_duration(&s).map_err(|e| {
            super::error(format!(
                "`{s}` is not a duration ({e}); write e.g. \"10s\", \"500ms\""
            ))
        });
    }
    Err(super::error(format!(
        "expected a duration (\"10s\" or seconds), got {}",
        value.type_name()
    )))
}
