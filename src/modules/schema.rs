//! `schema::risks`: the migration risk gate's judgement, for scripts (see
//! `crate::schema_risk`).

use rhai::plugin::*;

#[export_module]
#[allow(unreachable_pub, reason = "rhai exports only pub functions")]
pub mod schema_api {
    use rhai::{Array, Dynamic, Map};

    /// The statements of `sql` (the output of `php artisan migrate --pretend`, or plain
    /// SQL) that the old release cannot live with while it still serves or after a
    /// rollback: dropped or renamed tables and columns, changed column types, NOT NULL
    /// columns without a default, dropped indexes, truncated tables. Each is
    /// `#{ kind, migration, statement, object, why }`; an empty array when all is additive.
    pub fn risks(sql: &str) -> Array {
        crate::schema_risk::risks(sql)
            .into_iter()
            .map(|r| {
                let mut m = Map::new();
                let kind = serde_json::to_value(r.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                m.insert("kind".into(), kind.into());
                m.insert(
                    "migration".into(),
                    r.migration.map_or(Dynamic::UNIT, Dynamic::from),
                );
                m.insert("statement".into(), r.statement.into());
                m.insert("object".into(), r.object.into());
                m.insert("why".into(), r.kind.why().into());
                Dynamic::from(m)
            })
            .collect()
    }
}
