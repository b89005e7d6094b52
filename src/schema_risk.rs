//! The migration risk gate's judgement: which statements of a release's pending
//! migrations (the SQL of `php artisan migrate --pretend`) the OLD code cannot live with.
//! During a rolling, blue-green or canary deploy the old release keeps serving against
//! the new schema, and a rollback returns to it: a dropped or renamed column or table, a
//! changed column type, a NOT NULL column without a default (the old code's inserts
//! fail), a dropped index (the old code's queries slow to a crawl), a truncated table.
//!
//! Plain Rust, no I/O: statements in, risks out. Understands what Laravel's schema
//! builder emits for MySQL/MariaDB, SQLite and PostgreSQL (identifiers quoted with `` ` ``,
//! `"` or `[]`, any case).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RiskKind {
    DropTable,
    RenameTable,
    DropColumn,
    RenameColumn,
    ChangeColumnType,
    NotNullWithoutDefault,
    DropIndex,
    Truncate,
}

impl RiskKind {
    /// What the old code meets, in a few words.
    pub(crate) fn why(self) -> &'static str {
        match self {
            RiskKind::DropTable => "drops a table the old code may still read and write",
            RiskKind::RenameTable => "renames a table: the old code still uses the old name",
            RiskKind::DropColumn => "drops a column the old code may still read and write",
            RiskKind::RenameColumn => "renames a column: the old code still uses the old name",
            RiskKind::ChangeColumnType => "changes a column's type under the old code",
            RiskKind::NotNullWithoutDefault => {
                "adds a NOT NULL column without a default: the old code's inserts fail"
            }
            RiskKind::DropIndex => "drops an index the old code's queries may need",
            RiskKind::Truncate => "empties a table",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Risk {
    pub kind: RiskKind,
    /// The migration the statement belongs to, when the output names it.
    pub migration: Option<String>,
    pub statement: String,
    /// The table (and column or index) it touches, as written.
    pub object: String,
}

/// Every risk in `pretend`, the output of `php artisan migrate --pretend` (one
/// `Migration: statement` per line) or plain SQL statements (one per line or `;`).
pub(crate) fn risks(pretend: &str) -> Vec<Risk> {
    let mut out = Vec::new();
    for line in pretend.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (migration, sql) = split_migration(line);
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            for (kind, object) in classify(statement) {
                out.push(Risk {
                    kind,
                    migration: migration.map(str::to_owned),
                    statement: statement.to_owned(),
                    object,
                });
            }
        }
    }
    out
}

/// `2024_01_01_000000_drop_x: alter table …` → (the migration, the SQL). Laravel 8
/// prints `Name: SQL`; newer versions indent the SQL under the name (then no prefix).
fn split_migration(line: &str) -> (Option<&str>, &str) {
    if let Some((name, sql)) = line.split_once(": ") {
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '\\');
        if is_name {
            return (Some(name), sql);
        }
    }
    // Newer Laravel: "  ⇂ alter table …".
    (None, line.trim_start_matches(['⇂', ' ']))
}

/// Lower-case words, identifiers unquoted; `(`, `)` and `,` are words of their own.
fn words(statement: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in statement.chars() {
        match quote {
            Some(q) if c == q || (q == '[' && c == ']') => quote = None,
            Some(_) => cur.push(c),
            None => match c {
                '`' | '"' | '[' => quote = Some(c),
                '\'' => {
                    // A string literal: one word, its content is not SQL.
                    quote = Some('\'');
                    cur.push('\'');
                }
                '(' | ')' | ',' => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    out.push(c.to_string());
                }
                c if c.is_whitespace() => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.extend(c.to_lowercase()),
            },
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The clauses of an `alter table` after its name, split at top-level commas.
fn clauses(words: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, w) in words.iter().enumerate() {
        match w.as_str() {
            "(" => depth += 1,
            ")" => depth = depth.saturating_sub(1),
            "," if depth == 0 => {
                out.push(&words[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&words[start..]);
    out.into_iter().filter(|c| !c.is_empty()).collect()
}

const INDEX_WORDS: [&str; 6] = ["index", "key", "unique", "primary", "foreign", "constraint"];

fn classify(statement: &str) -> Vec<(RiskKind, String)> {
    let w = words(statement);
    let at = |i: usize| w.get(i).map_or("", String::as_str);
    let s = |v: &[&str]| v.iter().enumerate().all(|(i, x)| at(i) == *x);
    let skip_if_exists = |i: usize| {
        if at(i) == "if" && at(i + 1) == "exists" {
            i + 2
        } else {
            i
        }
    };
    if s(&["drop", "table"]) {
        let i = skip_if_exists(2);
        return w[i.min(w.len())..]
            .iter()
            .filter(|t| *t != ",")
            .map(|t| (RiskKind::DropTable, t.clone()))
            .collect();
    }
    if s(&["truncate"]) {
        let i = if at(1) == "table" { 2 } else { 1 };
        return vec![(RiskKind::Truncate, at(i).to_owned())];
    }
    if s(&["rename", "table"]) {
        return vec![(RiskKind::RenameTable, format!("{} → {}", at(2), at(4)))];
    }
    if s(&["drop", "index"]) {
        let i = skip_if_exists(2);
        let on = if at(i + 1) == "on" {
            format!("{} on {}", at(i), at(i + 2))
        } else {
            at(i).to_owned()
        };
        return vec![(RiskKind::DropIndex, on)];
    }
    if !s(&["alter", "table"]) {
        return Vec::new();
    }
    alter_table(&w)
}

/// The risks in the clauses of an `alter table` statement, split into words.
fn alter_table(w: &[String]) -> Vec<(RiskKind, String)> {
    let at = |i: usize| w.get(i).map_or("", String::as_str);
    let mut i = 2;
    if at(i) == "only" || (at(i) == "if" && at(i + 1) == "exists") {
        i += if at(i) == "only" { 1 } else { 2 };
    }
    let table = at(i).to_owned();
    let mut out = Vec::new();
    for c in clauses(&w[(i + 1).min(w.len())..]) {
        let cw = |k: usize| c.get(k).map_or("", String::as_str);
        match cw(0) {
            "drop" => {
                if INDEX_WORDS.contains(&cw(1)) {
                    let name = match (cw(1), cw(2)) {
                        ("primary", _) => "primary key".to_owned(),
                        ("foreign" | "unique", "key" | "index") => cw(3).to_owned(),
                        _ => cw(2).to_owned(),
                    };
                    out.push((RiskKind::DropIndex, format!("{table}.{name}")));
                } else {
                    let k = if cw(1) == "column" { 2 } else { 1 };
                    let k = if cw(k) == "if" && cw(k + 1) == "exists" {
                        k + 2
                    } else {
                        k
                    };
                    out.push((RiskKind::DropColumn, format!("{table}.{}", cw(k))));
                }
            }
            "rename" => match cw(1) {
                "column" => out.push((
                    RiskKind::RenameColumn,
                    format!("{table}.{} → {}", cw(2), cw(4)),
                )),
                "index" | "key" => out.push((RiskKind::DropIndex, format!("{table}.{}", cw(2)))),
                "to" | "as" => out.push((RiskKind::RenameTable, format!("{table} → {}", cw(2)))),
                other => out.push((RiskKind::RenameTable, format!("{table} → {other}"))),
            },
            "change" => {
                let k = if cw(1) == "column" { 2 } else { 1 };
                if cw(k) == cw(k + 1) {
                    out.push((RiskKind::ChangeColumnType, format!("{table}.{}", cw(k))));
                } else {
                    out.push((
                        RiskKind::RenameColumn,
                        format!("{table}.{} → {}", cw(k), cw(k + 1)),
                    ));
                }
            }
            "modify" => {
                let k = if cw(1) == "column" { 2 } else { 1 };
                out.push((RiskKind::ChangeColumnType, format!("{table}.{}", cw(k))));
            }
            // PostgreSQL: `alter column x type …`; `set not null` on existing rows.
            "alter"
                if cw(1) == "column" && (cw(3) == "type" || (cw(3) == "set" && cw(4) == "not")) =>
            {
                out.push((RiskKind::ChangeColumnType, format!("{table}.{}", cw(2))));
            }
            "add" => {
                if INDEX_WORDS.contains(&cw(1)) {
                    continue;
                }
                let k = if cw(1) == "column" { 2 } else { 1 };
                let rest = &c[k..];
                let has = |x: &str| rest.iter().any(|t| t == x);
                let not_null = rest.windows(2).any(|p| p[0] == "not" && p[1] == "null");
                let generated = has("auto_increment")
                    || has("autoincrement")
                    || has("generated")
                    || has("as")
                    || has("serial")
                    || has("bigserial");
                if not_null && !has("default") && !generated && !has("primary") {
                    out.push((
                        RiskKind::NotNullWithoutDefault,
                        format!("{table}.{}", cw(k)),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(RiskKind, String)> {
        risks(sql).into_iter().map(|r| (r.kind, r.object)).collect()
    }

    #[test]
    fn laravel_mysql_statements_that_break_the_old_code_are_found() {
        use RiskKind::*;
        let cases: &[(&str, Vec<(RiskKind, &str)>)] = &[
            (
                "alter table `users` drop `nickname`",
                vec![(DropColumn, "users.nickname")],
            ),
            (
                "alter table `users` drop `a`, drop `b`",
                vec![(DropColumn, "users.a"), (DropColumn, "users.b")],
            ),
            (
                "ALTER TABLE users DROP COLUMN legacy",
                vec![(DropColumn, "users.legacy")],
            ),
            (
                "drop table if exists `sessions`",
                vec![(DropTable, "sessions")],
            ),
            (
                "drop table `a`, `b`",
                vec![(DropTable, "a"), (DropTable, "b")],
            ),
            (
                "rename table `posts` to `articles`",
                vec![(RenameTable, "posts → articles")],
            ),
            (
                "alter table \"posts\" rename to \"articles\"",
                vec![(RenameTable, "posts → articles")],
            ),
            (
                "alter table `users` rename column `name` to `full_name`",
                vec![(RenameColumn, "users.name → full_name")],
            ),
            (
                "ALTER TABLE users CHANGE name full_name VARCHAR(255) NOT NULL",
                vec![(RenameColumn, "users.name → full_name")],
            ),
            (
                "ALTER TABLE users CHANGE age age BIGINT NOT NULL",
                vec![(ChangeColumnType, "users.age")],
            ),
            (
                "alter table `users` modify `age` bigint not null",
                vec![(ChangeColumnType, "users.age")],
            ),
            (
                "alter table `users` add `tenant_id` bigint unsigned not null",
                vec![(NotNullWithoutDefault, "users.tenant_id")],
            ),
            (
                "alter table `users` drop index `users_email_index`",
                vec![(DropIndex, "users.users_email_index")],
            ),
            (
                "drop index `users_email_index` on `users`",
                vec![(DropIndex, "users_email_index on users")],
            ),
            (
                "alter table `orders` drop foreign key `orders_user_id_foreign`",
                vec![(DropIndex, "orders.orders_user_id_foreign")],
            ),
            ("truncate table `cache`", vec![(Truncate, "cache")]),
            (
                "alter table \"users\" alter column \"age\" type bigint",
                vec![(ChangeColumnType, "users.age")],
            ),
        ];
        for (sql, want) in cases {
            let want: Vec<(RiskKind, String)> =
                want.iter().map(|(k, o)| (*k, (*o).to_owned())).collect();
            assert_eq!(kinds(sql), want, "{sql}");
        }
    }

    #[test]
    fn additive_changes_pass() {
        for sql in [
            "create table `flags` (`id` bigint unsigned not null auto_increment primary key, `name` varchar(255) not null)",
            "alter table `users` add `nickname` varchar(255) null",
            "alter table `users` add `score` int not null default '0'",
            "alter table `users` add index `users_score_index`(`score`)",
            "alter table `users` add unique `users_email_unique`(`email`)",
            "alter table `users` add constraint `fk` foreign key (`team_id`) references `teams` (`id`)",
            "alter table `users` add `id2` bigint unsigned not null auto_increment primary key",
            "insert into `flags` (`name`) values ('drop table users')",
            "create index `users_score_index` on `users` (`score`)",
            "update `users` set `x` = 'alter table y drop z'",
        ] {
            assert_eq!(kinds(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn the_migration_is_named_from_laravels_pretend_output() {
        let out = "2024_05_01_000000_create_flags_table: create table `flags` (`id` int)\n\
                   2024_06_01_000000_drop_nickname: alter table `users` drop `nickname`\n";
        let r = risks(out);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].migration.as_deref(),
            Some("2024_06_01_000000_drop_nickname")
        );
        assert_eq!(r[0].statement, "alter table `users` drop `nickname`");
        assert!(r[0].kind.why().contains("drops a column"));
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let mut seed = 7u64;
        let alphabet: Vec<char> = "altrdopcbnemkyx `\"[](),;:' \n\tADROPßé".chars().collect();
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..(seed % 60) {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                s.push(
                    alphabet
                        [usize::try_from((seed >> 33) % alphabet.len() as u64).expect("an index")],
                );
            }
            let _ = risks(&s);
            let _ = risks(&format!("alter table {s}"));
            let _ = risks(&format!("drop {s}"));
        }
    }
}
