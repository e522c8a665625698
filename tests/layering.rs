//! The layering of `src/`: which top-level module may name which (issue #14, item 4).
//!
//! Reads every `src/**/*.rs` as text (comments and string literals blanked out), collects each
//! reference to another top-level module (`use crate::x`, `crate::x::…` anywhere in the code,
//! the groups of `use crate::{a, b::c}`, and `super::…` that climbs to the crate root) and fails
//! with the file and line of each reference that breaks a rule below, or that closes a cycle
//! between top-level modules which `ALLOWED_CYCLE_EDGES` does not explain.
//!
//! `src/lib.rs` (it declares the modules) and `src/main.rs` (the binary: it may use anything) are
//! not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// `(module, modules it must not name, why)`.
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "http",
        &["store"],
        "the HTTP layer talks to the store through the bus",
    ),
    (
        "store",
        &["bus", "http"],
        "the store is the bottom layer: it knows neither messages nor HTTP",
    ),
    (
        "bus",
        &["actors", "http"],
        "the bus carries messages; it knows no role and no HTTP",
    ),
    (
        "cluster",
        &["http"],
        "the cluster returns plain data; HTTP shapes it",
    ),
];

/// `(module, the only modules it may name, why)`.
const ONLY: &[(&str, &[&str], &str)] = &[(
    "domain",
    &["error"],
    "domain types are the vocabulary of every layer and depend on nothing but errors",
)];

/// References that break a rule today and are being removed by another change. Each entry is
/// `(file, module it names)`; every reference from that file to that module is ignored, by the
/// rules and by the cycle check. An entry whose removal would change nothing (it breaks no rule
/// and closes no cycle any more) fails the test, so the list only shrinks.
const KNOWN_VIOLATIONS: &[(&str, &str)] = &[];

/// Edges that may close a cycle between top-level modules, each with the reason. Everything else
/// must form a DAG.
const ALLOWED_CYCLE_EDGES: &[(&str, &str, &str)] = &[];

#[test]
fn layers_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&root);
    let aliases = root_aliases(&root.join("lib.rs"));
    let mut refs = Vec::new();
    for file in rust_files(&root) {
        let relative = file.strip_prefix(&root).unwrap();
        if relative == Path::new("lib.rs") || relative == Path::new("main.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        let display = format!("src/{}", relative.display());
        for found in references(&source, relative) {
            let target = aliases.get(&found.name).cloned().unwrap_or(found.name);
            let from = top_module(relative);
            if target == from || !modules.contains(&target) {
                continue;
            }
            refs.push(Reference {
                file: display.clone(),
                line: found.line,
                from,
                to: target,
            });
        }
    }
    assert!(
        refs.len() > 50,
        "found only {} references between modules: is the scanner broken?",
        refs.len()
    );

    let base = violations(&refs, KNOWN_VIOLATIONS, ALLOWED_CYCLE_EDGES);
    let mut failures = base.clone();
    // The lists only shrink: an entry whose absence changes nothing must go.
    for (i, (file, module)) in KNOWN_VIOLATIONS.iter().enumerate() {
        let others: Vec<(&str, &str)> = without(KNOWN_VIOLATIONS, i);
        if violations(&refs, &others, ALLOWED_CYCLE_EDGES) == base {
            failures.push(format!(
                "KNOWN_VIOLATIONS lists {file} -> {module}, which breaks no rule and closes no \
                 cycle any more: remove the entry"
            ));
        }
    }
    for (i, (from, to, _)) in ALLOWED_CYCLE_EDGES.iter().enumerate() {
        let others: Vec<(&str, &str, &str)> = without(ALLOWED_CYCLE_EDGES, i);
        if violations(&refs, KNOWN_VIOLATIONS, &others) == base {
            failures.push(format!(
                "ALLOWED_CYCLE_EDGES lists {from} -> {to}, which closes no cycle any more: \
                 remove the entry"
            ));
        }
    }

    if !failures.is_empty() {
        panic!(
            "{} layering violation(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

fn without<T: Copy>(list: &[T], skip: usize) -> Vec<T> {
    list.iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, entry)| *entry)
        .collect()
}

/// What breaks a rule or closes a cycle, leaving out the references of `known` and the edges of
/// `allowed` (for the cycle check).
fn violations(
    refs: &[Reference],
    known: &[(&str, &str)],
    allowed: &[(&str, &str, &str)],
) -> Vec<String> {
    let refs: Vec<&Reference> = refs
        .iter()
        .filter(|r| {
            !known
                .iter()
                .any(|(file, module)| r.file == *file && r.to == *module)
        })
        .collect();
    let mut failures = Vec::new();
    for r in &refs {
        for (module, forbidden, why) in FORBIDDEN {
            if r.from == *module && forbidden.contains(&r.to.as_str()) {
                failures.push(format!("{r}: {module} must not import {}: {why}", r.to));
            }
        }
        for (module, only, why) in ONLY {
            if r.from == *module && !only.contains(&r.to.as_str()) {
                failures.push(format!(
                    "{r}: {module} may import only {only:?}, not {}: {why}",
                    r.to
                ));
            }
        }
    }
    let edges: BTreeMap<(String, String), Vec<&Reference>> = refs
        .iter()
        .filter(|r| {
            !allowed
                .iter()
                .any(|(from, to, _)| r.from == *from && r.to == *to)
        })
        .fold(BTreeMap::new(), |mut edges, r| {
            edges
                .entry((r.from.clone(), r.to.clone()))
                .or_insert_with(Vec::new)
                .push(*r);
            edges
        });
    for component in cycles(&edges) {
        let path = shortest_cycle(&component, &edges);
        let mut lines = vec![format!(
            "a cycle between top-level modules {component:?}, e.g. {} (break it, or list an edge \
             in ALLOWED_CYCLE_EDGES with the reason):",
            path.join(" -> ")
        )];
        for pair in path.windows(2) {
            let at = &edges[&(pair[0].clone(), pair[1].clone())];
            lines.push(format!("  {} -> {}:", pair[0], pair[1]));
            lines.extend(at.iter().map(|r| format!("    {}:{}", r.file, r.line)));
        }
        failures.push(lines.join("\n"));
    }
    failures
}

struct Reference {
    file: String,
    line: usize,
    from: String,
    to: String,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} -> {}",
            self.file, self.line, self.from, self.to
        )
    }
}

/// The name after `crate::` (or after enough `super::` to reach the crate root), and its line.
#[derive(Debug, PartialEq)]
struct Found {
    name: String,
    line: usize,
}

/// `src/x.rs` and `src/x/`: the top-level modules.
fn top_level_modules(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            if path.is_dir() {
                Some(path.file_name()?.to_str()?.to_string())
            } else if path.extension()? == "rs" {
                Some(path.file_stem()?.to_str()?.to_string())
            } else {
                None
            }
        })
        .filter(|name| name != "lib" && name != "main")
        .collect()
}

/// `pub use x::Name;` in lib.rs: `crate::Name` is module `x`.
fn root_aliases(lib: &Path) -> BTreeMap<String, String> {
    let source = std::fs::read_to_string(lib).unwrap();
    let mut aliases = BTreeMap::new();
    for line in source.lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim_end_matches(';');
        if let Some((module, name)) = path.split_once("::") {
            if !name.contains(['{', ':']) {
                aliases.insert(name.trim().to_string(), module.trim().to_string());
            }
        }
    }
    aliases
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// `http` for `http/items.rs`, `telemetry` for `telemetry.rs`.
fn top_module(relative: &Path) -> String {
    let first = relative.components().next().unwrap().as_os_str();
    Path::new(first)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// How many `super::` lead from the file's module to the crate root: 1 for `x.rs`, `x/mod.rs`;
/// 2 for `x/y.rs`, `x/y/mod.rs`; and so on.
fn file_depth(relative: &Path) -> usize {
    let parts = relative.components().count();
    if relative.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// Every reference from `source` (the file at `relative` under `src/`) to a crate-level name.
fn references(source: &str, relative: &Path) -> Vec<Found> {
    let tokens = tokens(&blank_comments_and_strings(source));
    let depth = file_depth(relative);
    let mut found = Vec::new();
    // Inline modules (`mod tests { … }`) add a level for `super::`: the brace depth each opened at.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i].0;
        match token {
            Token::Open => braces += 1,
            Token::Close => {
                braces = braces.saturating_sub(1);
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some((Token::Ident(_), _)), Some((Token::Open, _))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    inline_mods.push(braces);
                }
            }
            Token::Ident(word)
                if word == "crate"
                    && !after_path_sep(&tokens, i)
                    && tokens.get(i + 1).map(|t| &t.0) == Some(&Token::PathSep) =>
            {
                found.extend(names_after(&tokens, i + 2));
            }
            Token::Ident(word) if word == "super" && !after_path_sep(&tokens, i) => {
                let mut supers = 0;
                let mut j = i;
                while matches!(&tokens.get(j), Some((Token::Ident(w), _)) if w == "super")
                    && tokens.get(j + 1).map(|t| &t.0) == Some(&Token::PathSep)
                {
                    supers += 1;
                    j += 2;
                }
                if supers == depth + inline_mods.len() {
                    found.extend(names_after(&tokens, j));
                }
                i = j.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

fn after_path_sep(tokens: &[(Token, usize)], i: usize) -> bool {
    i > 0 && tokens[i - 1].0 == Token::PathSep
}

/// The first name of the path at `start`, or the first name of each item of a `{…}` group.
fn names_after(tokens: &[(Token, usize)], start: usize) -> Vec<Found> {
    match tokens.get(start) {
        Some((Token::Ident(name), line)) => vec![Found {
            name: name.clone(),
            line: *line,
        }],
        Some((Token::Open, _)) => {
            let mut names = Vec::new();
            let mut nesting = 0;
            let mut item_start = true;
            for (token, at) in &tokens[start + 1..] {
                match token {
                    Token::Open => nesting += 1,
                    Token::Close if nesting == 0 => break,
                    Token::Close => nesting -= 1,
                    Token::Comma if nesting == 0 => {
                        item_start = true;
                        continue;
                    }
                    Token::Ident(name) if item_start && nesting == 0 => names.push(Found {
                        name: name.clone(),
                        line: *at,
                    }),
                    _ => {}
                }
                item_start = false;
            }
            names
        }
        _ => Vec::new(),
    }
}

fn tokens(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // `r#crate` is not the keyword; nothing in this crate writes it, so keep it simple.
            out.push((Token::Ident(word), line));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((Token::PathSep, line));
            i += 2;
        } else {
            let token = match c {
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                _ => Token::Other,
            };
            out.push((token, line));
            i += 1;
        }
    }
    out
}

/// The source with comments, string and char literals replaced by spaces (newlines kept, so
/// line numbers stay right).
fn blank_comments_and_strings(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut nesting = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    nesting += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    nesting -= 1;
                    out.push_str("  ");
                    i += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br"…": ends at a quote followed by as many hashes.
            let open = i + chars[i..].iter().position(|&c| c == '"').unwrap();
            while i <= open {
                blank(&mut out, chars[i]);
                i += 1;
            }
            while i < chars.len() {
                let closes =
                    chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#'));
                if closes {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += hashes + 1;
                    break;
                }
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() {
                let d = chars[i];
                blank(&mut out, d);
                i += 1;
                if d == '\\' {
                    if let Some(&e) = chars.get(i) {
                        blank(&mut out, e);
                        i += 1;
                    }
                } else if d == '"' {
                    break;
                }
            }
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F}', '"') or a lifetime ('a, 'static).
            let literal_end = if next == Some('\\') {
                // The escaped character may itself be a quote: '\''.
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&c| c == '\''))
                    .map(|p| i + 3 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match literal_end {
                Some(end) => {
                    while i <= end {
                        blank(&mut out, chars[i]);
                        i += 1;
                    }
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At `r"`, `r#…#"`, `br"`, `br#…"` (not inside a longer identifier): how many `#`.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some(hashes)
}

/// A shortest cycle through the first module of `component`, as `[a, b, …, a]`.
fn shortest_cycle<V>(
    component: &BTreeSet<String>,
    edges: &BTreeMap<(String, String), V>,
) -> Vec<String> {
    let start = component.iter().next().unwrap();
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.as_str()]);
    while let Some(at) = queue.pop_front() {
        for (from, to) in edges.keys() {
            if from != at || !component.contains(to) {
                continue;
            }
            if to == start {
                let mut path = vec![start.clone(), at.to_string()];
                let mut step = at;
                while step != start {
                    step = came_from[step];
                    path.push(step.to_string());
                }
                path.reverse();
                return path;
            }
            if !came_from.contains_key(to.as_str()) {
                came_from.insert(to, at);
                queue.push_back(to);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each of its modules")
}

/// The strongly connected components of more than one module (Tarjan), each sorted.
fn cycles<V>(edges: &BTreeMap<(String, String), V>) -> Vec<BTreeSet<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    struct Tarjan<'a> {
        graph: &'a BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.insert(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &v in graph.keys() {
        if !tarjan.index.contains_key(v) {
            tarjan.visit(v);
        }
    }
    tarjan.found
}

#[test]
fn the_scanner_reads_paths_groups_and_super() {
    let source = r##"
use crate::bus::{Bus, Role};
use crate::{domain::Item, error::{Error, Result}, store};
// use crate::http::x;  (a comment)
/* crate::cluster::y */
const S: &str = "crate::sim::z";
const R: &str = r#"crate::seed"#;
const C: char = '"';
const Q: char = '\'';
fn f<'a>(x: &'a str) -> crate::jobs::Job { todo!() }
mod tests {
    use super::super::telemetry;
    use super::*;
}
use super::actors::Thing;
"##;
    let found: Vec<(String, usize)> = references(source, Path::new("x.rs"))
        .into_iter()
        .map(|f| (f.name, f.line))
        .collect();
    let expected: Vec<(String, usize)> = [
        ("bus", 2),
        ("domain", 3),
        ("error", 3),
        ("store", 3),
        ("jobs", 10),
        ("telemetry", 12),
        ("actors", 15),
    ]
    .into_iter()
    .map(|(n, l)| (n.to_string(), l))
    .collect();
    assert_eq!(found, expected);
    // In `x/y.rs`, `super::` is still inside `x`.
    assert!(references("use super::actors::A;", Path::new("x/y.rs")).is_empty());
    assert_eq!(
        references("use super::super::actors::A;", Path::new("x/y.rs")),
        vec![Found {
            name: "actors".into(),
            line: 1
        }]
    );
}

#[test]
fn known_and_allowed_entries_matter_only_while_they_hide_something() {
    let reference = |file: &str, from: &str, to: &str| Reference {
        file: file.into(),
        line: 1,
        from: from.into(),
        to: to.into(),
    };
    let refs = vec![
        reference("src/store/a.rs", "store", "domain"),
        reference("src/domain/b.rs", "domain", "store"),
    ];
    let all = violations(&refs, &[], &[]);
    assert_eq!(all.len(), 2, "{all:?}"); // domain -> store, and the cycle
    assert!(violations(&refs, &[("src/domain/b.rs", "store")], &[]).is_empty());
    let allowed = [("domain", "store", "why")];
    assert_eq!(
        violations(&refs, &[], &allowed).len(),
        1,
        "the rule still holds"
    );
    // An entry for a reference that does not exist hides nothing.
    assert_eq!(violations(&refs, &[("src/http/c.rs", "store")], &[]), all);
}
