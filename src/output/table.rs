//! Plain-text tables for the commands that print them (`status`, `releases`, `hosts`,
//! `lock status`, `rollout status`).

/// Columns padded to their widest cell; a short row (an unreachable host) ends early.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        // The last cell of a short row may overflow: it does not widen the column.
        for (w, c) in widths
            .iter_mut()
            .zip(r)
            .take(r.len().saturating_sub(1).max(1))
        {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            s.push_str(&" ".repeat(pad));
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}
