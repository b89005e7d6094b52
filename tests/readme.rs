//! Every ```rhai block of the README must pass `runbook check`.

use crate::harness::Test;

#[test]
fn every_rhai_block_in_the_readme_checks() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```rhai") => current = Some(String::new()),
            (Some(block), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 2, "the README should show scripts");
    let mut t = Test::new();
    for (i, block) in blocks.iter().enumerate() {
        t = t.file(&format!("scripts/readme_{i}.rhai"), block);
    }
    t.args(&["check"]).run().code(0);
}
