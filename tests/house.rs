//! The house has no circles: within each crate, no module imports a module
//! that imports it back (directly or around a longer loop), and `config`
//! imports nothing of `plan` (the planner reads the config, never the
//! other way round). Modules are files; a `mod.rs` only declares and
//! re-exports, so what its children share lives in a file of its own.
//!
//! Imports are read from the sources: `use` trees and inline
//! `crate::`/`super::`/`self::` paths, outside comments and strings, with
//! `mod name { .. }` blocks (tests) resolved as modules of their own file.
//! The checker's own tests below show it finds a planted circle.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// One crate's files by module path (`["config", "ha"]` → `config/ha.rs`).
struct Crate {
    files: BTreeMap<Vec<String>, String>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut files = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let rel = p.strip_prefix(src).unwrap().to_path_buf();
                    let text = std::fs::read_to_string(&p).unwrap();
                    // A library and a binary root side by side: the one
                    // that declares the modules is the crate's root (the
                    // other reaches it by the crate's name, not `crate::`).
                    let key = module_path(&rel);
                    let decls =
                        |t: &str| t.matches("\nmod ").count() + t.matches("\npub mod ").count();
                    if files
                        .get(&key)
                        .is_some_and(|old: &String| decls(old) >= decls(&text))
                    {
                        continue;
                    }
                    files.insert(key, text);
                }
            }
        }
        Crate { files }
    }

    fn from_sources(sources: &[(&str, &str)]) -> Crate {
        Crate {
            files: sources
                .iter()
                .map(|(p, s)| (module_path(Path::new(p)), s.to_string()))
                .collect(),
        }
    }

    /// The file a path names: its longest prefix that is a module file.
    fn resolve(&self, path: &[String]) -> Option<&Vec<String>> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.files.get_key_value(&path[..n]).map(|(k, _)| k))
    }

    /// Which module files each module file imports.
    fn edges(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (me, text) in &self.files {
            let code = strip(text);
            let inline = inline_modules(&code);
            let mut add = |at: usize, path: Vec<String>| {
                // The module this text is in: the file's, plus inline blocks.
                let mut here = me.clone();
                here.extend(
                    inline
                        .iter()
                        .filter(|(_, s, e)| *s <= at && at < *e)
                        .map(|(n, _, _)| n.clone()),
                );
                let Some(abs) = absolute(&here, me, &path, self) else {
                    return;
                };
                if let Some(target) = self.resolve(&abs)
                    && target != me
                {
                    out.entry(me.clone()).or_default().insert(target.clone());
                }
            };
            for (at, tree) in use_trees(&code) {
                for path in expand(&tree) {
                    add(at, path);
                }
            }
            for (at, path) in inline_paths(&code) {
                add(at, path);
            }
        }
        out
    }
}

/// `config/ha.rs` → `["config", "ha"]`; `config/mod.rs`, `lib.rs` → their
/// folder's path.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// `path` as written in module `here` (inside file `file`), from the crate
/// root; `None` for paths into other crates.
fn absolute(
    here: &[String],
    file: &[String],
    path: &[String],
    krate: &Crate,
) -> Option<Vec<String>> {
    let first = path.first()?;
    let (mut base, rest) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.to_vec(), &path[1..]),
        "super" => {
            let mut b = here.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                b.pop()?;
                rest = &rest[1..];
            }
            (b, rest)
        }
        // A relative path: a child module of this one (2018 paths), as
        // `mod.rs` re-exports its children; anything else is another crate.
        _ => {
            let mut child = file.to_vec();
            child.push(first.clone());
            if here == file && krate.files.contains_key(&child) {
                (file.to_vec(), path)
            } else {
                return None;
            }
        }
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The text with comments and string and char literals blanked out
/// (lengths kept, so positions still match).
fn strip(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = s[i..].find('\n').map_or(b.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = s[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                blank(&mut out, i, end);
                i = end;
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close = format!("\"{}", "#".repeat(hashes));
                let start = i + 2 + hashes;
                let end = s[start..]
                    .find(&close)
                    .map_or(b.len(), |n| start + n + close.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, i, j + 1);
                i = j + 1;
            }
            // A char literal ('x', '\n', '"'), not a lifetime ('a).
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                let end = s[i + 1..].find('\'').map_or(b.len(), |n| i + 1 + n + 1);
                let end = if b.get(i + 1) == Some(&b'\\') && b.get(i + 2) == Some(&b'\'') {
                    end + 1 // '\''
                } else {
                    end
                };
                blank(&mut out, i, end);
                i = end;
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).unwrap()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `mod name { .. }` blocks: name, start and end offsets.
fn inline_modules(code: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(n) = code[from..].find("mod ") {
        let at = from + n;
        from = at + 4;
        if at > 0 && is_ident(code[..at].chars().next_back().unwrap()) {
            continue;
        }
        let rest = &code[at + 4..];
        let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        let after = rest[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = at + 4 + rest.len() - after.len();
        let mut depth = 0;
        let mut end = code.len();
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((name, open, end));
    }
    out
}

/// Every `use` tree's text (between `use` and `;`), with its offset.
fn use_trees(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(n) = code[from..].find("use ") {
        let at = from + n;
        from = at + 4;
        if at > 0 && is_ident(code[..at].chars().next_back().unwrap()) {
            continue;
        }
        if let Some(end) = code[at..].find(';') {
            out.push((at, code[at + 4..at + end].to_string()));
        }
    }
    out
}

/// The paths of a use tree (`a::{b, c::{d, e}}` → `a::b`, `a::c::d`, ...).
fn expand(tree: &str) -> Vec<Vec<String>> {
    fn go(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(open) = tree.find('{') {
            let mut p = prefix.to_vec();
            p.extend(segments(&tree[..open]));
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&inner[start..i], &p, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            go(&inner[start..], &p, out);
        } else {
            let mut p = prefix.to_vec();
            let item = tree.split(" as ").next().unwrap_or(tree);
            p.extend(
                segments(item)
                    .into_iter()
                    .filter(|s| s != "*" && s != "self"),
            );
            out.push(p);
        }
    }
    let mut out = Vec::new();
    go(tree, &[], &mut out);
    out
}

fn segments(s: &str) -> Vec<String> {
    s.split("::")
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// `crate::a::b`, `super::x`, `self::y` paths outside `use` (calls, types).
fn inline_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for head in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(n) = code[from..].find(head) {
            let at = from + n;
            from = at + head.len();
            if at > 0 && is_ident(code[..at].chars().next_back().unwrap()) {
                continue;
            }
            let text: String = code[at..]
                .chars()
                .take_while(|c| is_ident(*c) || *c == ':')
                .collect();
            // `super::{a, b}` and `super::*`: a use tree, read as one.
            if !text.ends_with("::") {
                out.push((at, segments(&text)));
            }
        }
    }
    out
}

/// Groups of modules that import each other around a loop (Tarjan).
fn circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.get(v) {
            for w in ws {
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "(crate root)".into()
    } else {
        m.join("::")
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn no_crate_has_an_import_circle() {
    let mut found = Vec::new();
    let mut files = 0;
    for krate in [
        "lb-userspace/src",
        "lb-ebpf/src",
        "lb-common/src",
        "tests/src",
    ] {
        let c = Crate::read(&workspace().join(krate));
        files += c.files.len();
        let edges = c.edges();
        for circle in circles(&edges) {
            let members: Vec<String> = circle.iter().map(|m| show(m)).collect();
            let links: Vec<String> = circle
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| circle.contains(b))
                        .map(move |b| format!("{} -> {}", show(a), show(b)))
                })
                .collect();
            found.push(format!("{krate}: {members:?}: {}", links.join(", ")));
        }
    }
    assert!(files > 80, "read only {files} source files");
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn config_imports_nothing_of_the_planner() {
    let c = Crate::read(&workspace().join("lb-userspace/src"));
    let edges = c.edges();
    // The checker sees imports at all: the planner reads the config.
    assert!(
        edges[&vec!["plan".to_string()]].contains(&vec!["config".to_string()]),
        "plan -> config not found: the checker is blind"
    );
    let wrong: Vec<String> = edges
        .iter()
        .filter(|(from, _)| from.first().is_some_and(|m| m == "config"))
        .flat_map(|(from, to)| {
            to.iter()
                .filter(|t| t.first().is_some_and(|m| m != "config"))
                .map(move |t| format!("{} -> {}", show(from), show(t)))
        })
        .collect();
    assert!(wrong.is_empty(), "config is not a leaf: {wrong:?}");
}

/// The checker finds what it is for: a circle through a parent's
/// re-export, one through a use tree, one through an inline path, and none
/// where a test block imports its own file.
#[test]
fn the_checker_finds_planted_circles() {
    let circle = |sources: &[(&str, &str)]| circles(&Crate::from_sources(sources).edges());
    let parent_child = circle(&[
        (
            "net/mod.rs",
            "mod watch;\npub use watch::Watch;\npub struct Error;",
        ),
        ("net/watch.rs", "use super::Error;\npub struct Watch;"),
    ]);
    assert_eq!(parent_child.len(), 1, "{parent_child:?}");
    let siblings = circle(&[
        ("config/mod.rs", "mod ha;\nmod validate;"),
        (
            "config/ha.rs",
            "use super::{validate::ok, other};\npub fn check() {}",
        ),
        ("config/validate.rs", "pub fn ok() { super::ha::check() }"),
    ]);
    assert_eq!(siblings.len(), 1, "{siblings:?}");
    let across = circle(&[
        ("lib.rs", "mod config;\nmod plan;"),
        ("config/mod.rs", "fn k() -> crate::plan::Key { todo!() }"),
        (
            "plan/mod.rs",
            "use crate::{config::Config, other};\npub struct Key;",
        ),
    ]);
    assert_eq!(across.len(), 1, "{across:?}");
    let none = circle(&[
        ("api/mod.rs", "pub mod view;\npub use view::View;"),
        (
            "api/view.rs",
            "pub struct View;\n// use super::Nothing;\nconst S: &str = \"super::x\";\n#[cfg(test)]\nmod tests { use super::*; use super::View; }",
        ),
    ]);
    assert!(none.is_empty(), "{none:?}");
}
