//! No import circles: in `enforcer-ebpf/src` and in the `enforcer` library (`enforcer/src`), no
//! module reaches, through the modules it names (`use crate::...`, `crate::a::b` in code,
//! `super::...`), a module that reaches it back. A module naming its own parent or child is no
//! edge (that is how Rust splits one module over files); siblings and cousins are.
//!
//! Reads the source text, no compiler: a path is tied to the longest module it starts with.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

type Module = Vec<String>;

/// Every `.rs` file under `root`, as (module path, text). `lib.rs` / `main.rs` are the root,
/// `a/mod.rs` and `a.rs` are `a`, `a/b.rs` is `a::b`.
fn modules(root: &Path, skip: &[&str]) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).expect("under root");
            if skip.iter().any(|s| rel == Path::new(s)) {
                continue;
            }
            let mut module: Module = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("lib" | "main" | "mod")
            ) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            out.insert(module, strip_comments(&text));
        }
    }
    out
}

/// The text without `//` comments and string literals (a path in a doc comment or a message
/// is no import).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '"' && prev != '\\' {
                    in_str = false;
                }
                prev = if prev == '\\' && c == '\\' { ' ' } else { c };
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_str = true;
                prev = ' ';
                continue;
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a module names, absolute (from the crate root): the trees of its `use` items and
/// every `crate::…` / `super::…` path in its code.
fn named_paths(module: &Module, text: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':';
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let base = if !starts_word {
            None
        } else if rest.starts_with("crate::") {
            Some((Module::new(), 7))
        } else if rest.starts_with("super::") {
            Some((module[..module.len().saturating_sub(1)].to_vec(), 7))
        } else {
            None
        };
        let Some((mut prefix, skip)) = base else {
            i += 1;
            continue;
        };
        i += skip;
        // `super::super::…`
        while bytes[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
            prefix.pop();
            i += 7;
        }
        i = tree(&bytes, i, prefix, &mut out);
    }
    out
}

/// Parses a use tree (`a::b`, `a::{b, c::d}`, `a::*`, `a as b`) at `i`; pushes full paths.
fn tree(b: &[char], mut i: usize, mut prefix: Module, out: &mut Vec<Module>) -> usize {
    loop {
        while i < b.len() && b[i].is_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == '{' {
            i += 1;
            loop {
                i = tree(b, i, prefix.clone(), out);
                while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == '}' {
                    return i + 1;
                }
            }
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if start == i {
            out.push(prefix);
            return i;
        }
        let segment: String = b[start..i].iter().collect();
        if segment != "self" {
            prefix.push(segment);
        }
        if b[i..].starts_with(&[':', ':']) {
            i += 2;
            continue;
        }
        out.push(prefix);
        return i;
    }
}

/// Edges between modules: `from` names something in `to`, neither contains the other.
fn edges(mods: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text) in mods {
        for path in named_paths(module, text) {
            let Some(target) = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| mods.contains_key(p))
            else {
                continue;
            };
            if target.is_empty()
                || target.starts_with(module.as_slice())
                || module.starts_with(target.as_slice())
            {
                continue;
            }
            graph.entry(module.clone()).or_default().insert(target);
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn source(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
}

fn assert_no_circles(dir: &str, skip: &[&str]) {
    let mods = modules(&source(dir), skip);
    assert!(mods.len() > 5, "{dir}: sources not found");
    let found = circles(&edges(&mods));
    assert!(
        found.is_empty(),
        "{dir}: modules that import each other (directly or around a circle): {found:?}"
    );
}

#[test]
fn ebpf_modules_import_no_circles() {
    assert_no_circles("enforcer-ebpf/src", &[]);
}

#[test]
fn enforcer_modules_import_no_circles() {
    // main.rs is the binary crate: its `crate::` is not the library's.
    assert_no_circles("enforcer/src", &["main.rs"]);
}

#[test]
fn the_checker_finds_a_circle() {
    let mods: BTreeMap<Module, String> = [
        (
            vec!["a".to_string()],
            "use crate::b::{self, X};\n".to_string(),
        ),
        (
            vec!["b".to_string()],
            "fn f() { crate::c::g(); }\n".to_string(),
        ),
        (
            vec!["c".to_string()],
            "use crate::{a::Y, d};\n// crate::d::z\n".to_string(),
        ),
        (
            vec!["d".to_string()],
            "const S: &str = \"crate::a\";\n".to_string(),
        ),
        (
            vec!["d".to_string(), "e".to_string()],
            "use super::super::d::X;\nuse super::f;\n".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let mods = mods
        .into_iter()
        .map(|(m, text)| (m, strip_comments(&text)))
        .collect();
    let graph = edges(&mods);
    assert_eq!(circles(&graph), vec![vec!["a", "b", "c"]]);
    assert!(
        !graph.contains_key(&vec!["d".to_string()]),
        "strings and comments name nothing"
    );
    assert!(
        !graph.contains_key(&vec!["d".to_string(), "e".to_string()]),
        "a child naming its parent is no edge"
    );
}
