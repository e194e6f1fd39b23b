//! `docs/config.md` names every key the config parser knows: the keys are
//! read off the `Deserialize` structs in `lb-userspace/src/config/` (their
//! `pub` fields, or the name a `#[serde(rename = "...")]` gives), so a new
//! key without documentation fails here. No root needed.

use std::path::Path;

/// Keys of the `Deserialize` structs in `source`.
fn keys(source: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut derive = false;
    let mut inside = false;
    let mut rename: Option<String> = None;
    // `#[serde(skip)]`: a field the file cannot set.
    let mut skip = false;
    for line in source.lines() {
        let t = line.trim();
        if t.starts_with("#[derive(") && t.contains("Deserialize") {
            derive = true;
            continue;
        }
        if t.starts_with("pub struct ") {
            inside = derive && t.ends_with('{');
            derive = false;
            continue;
        }
        if t.starts_with("pub enum ") {
            derive = false;
            continue;
        }
        if line == "}" {
            inside = false;
            continue;
        }
        if !inside {
            continue;
        }
        if t.starts_with("#[serde(") {
            skip |= t == "#[serde(skip)]";
            if let Some(r) = t.split("rename = \"").nth(1) {
                rename = r.split('"').next().map(str::to_string);
            }
            continue;
        }
        if let Some(field) = t.strip_prefix("pub ").and_then(|f| f.split(':').next()) {
            let key = rename.take().unwrap_or_else(|| field.to_string());
            if !std::mem::take(&mut skip) {
                keys.push(key);
            }
        }
    }
    keys
}

#[test]
fn every_config_key_is_in_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/config.md")).unwrap();
    let mut all = Vec::new();
    for f in ["mod.rs", "ha.rs", "cluster.rs"] {
        let text = std::fs::read_to_string(root.join("lb-userspace/src/config").join(f)).unwrap();
        all.extend(keys(&text));
    }
    // The reader found the structs (a changed layout must not make this
    // pass by finding nothing).
    for k in [
        "flow_table_size",
        "backend",
        "service",
        "mysql_password",
        "announce_table",
        "key_file",
    ] {
        assert!(
            all.iter().any(|a| a == k),
            "the key reader missed {k}: {all:?}"
        );
    }
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| {
            !doc.contains(&format!("`{k}`"))
                && !doc.contains(&format!("`[{k}]`"))
                && !doc.contains(&format!("`[[{k}]]`"))
        })
        .collect();
    assert!(missing.is_empty(), "docs/config.md lacks {missing:?}");
}

#[test]
fn the_key_reader_reads_renames_and_skips_other_structs_and_skipped_fields() {
    let src = "#[derive(Debug, Deserialize)]\n#[serde(deny_unknown_fields)]\npub struct A {\n    pub one: u8,\n    #[serde(rename = \"two\", default)]\n    pub second: u8,\n    #[serde(skip)]\n    pub internal: u8,\n}\n\n#[derive(Debug)]\npub struct B {\n    pub not_a_key: u8,\n}\n";
    assert_eq!(keys(src), ["one", "two"]);
}
