//! The documentation stays in step with the code: `docs/architecture.md` lists every module `engine/src/lib.rs`
//! declares, the README stays short, and neither the README nor `docs/` points at issue numbers, which mean
//! nothing to a reader (say what is meant instead).

use std::fs;
use std::path::{Path, PathBuf};

/// The most lines the README may have: the reference belongs in `docs/`.
const README_MAX_LINES: usize = 320;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The names of the modules `lib_rs` declares (`mod NAME;` or `pub mod NAME;`, with or without `#[cfg(...)]`
/// attributes on the lines before), in order, each once.
fn declared_modules(lib_rs: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in lib_rs.lines() {
        let line = line.trim();
        let rest = line.strip_prefix("pub ").unwrap_or(line);
        let Some(rest) = rest.strip_prefix("mod ") else { continue };
        let Some(name) = rest.strip_suffix(';') else { continue };
        let name = name.trim();
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names
}

/// Whether `text` says `issue` followed by a number (`issue 15`, `Issue #6`, `issue 15's`), in any case, or has a
/// bare `#12` (a `#` and a digit after a space, a bracket or the start of the line; `PKCS#8` is no issue).
fn mentions_issue_number(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let starts_word = |at: usize| lower[..at].chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric());
    let issue = lower.match_indices("issue").any(|(at, word)| {
        let after = lower[at + word.len()..].trim_start_matches([' ', '#']);
        starts_word(at) && after.starts_with(|c: char| c.is_ascii_digit())
    });
    let hash = lower
        .match_indices('#')
        .any(|(at, _)| starts_word(at) && lower[at + 1..].starts_with(|c: char| c.is_ascii_digit()));
    issue || hash
}

/// The markdown files the rule against issue numbers applies to: the README and every page under `docs/`.
fn doc_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    let docs = root.join("docs");
    let entries = fs::read_dir(&docs).unwrap_or_else(|error| panic!("cannot list {}: {error}", docs.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn the_module_parser_sees_plain_public_and_cfg_gated_modules() {
    let lib_rs = [
        "//! mod not_this;",
        "#![forbid(unsafe_code)]",
        "mod admin;",
        "#[cfg(feature = \"x\")]",
        "pub mod command;",
        "#[cfg(not(feature = \"x\"))]",
        "#[allow(dead_code)]",
        "mod command;",
        "#[cfg(test)]",
        "mod sim;",
        "pub use config::Config;",
        "mod inline { }",
    ]
    .join("\n");
    assert_eq!(declared_modules(&lib_rs), ["admin", "command", "sim"]);
}

#[test]
fn the_issue_pattern_catches_numbers_only() {
    for text in ["see issue 15", "Issue #6's bar", "issue  12", "(ISSUE 3)", "fixed in #12", "(#3)", "#4 done"] {
        assert!(mentions_issue_number(text), "{text}");
    }
    for text in ["the cursor was issued by 127.0.0.1", "an issue", "tissue 5", "PKCS#8", "[TLS](#tls)", "`#<hash>`"] {
        assert!(!mentions_issue_number(text), "{text}");
    }
}

#[test]
fn architecture_lists_every_engine_module() {
    let root = workspace_root();
    let modules = declared_modules(&read(&root.join("engine/src/lib.rs")));
    assert!(modules.len() > 10, "found only {modules:?} in engine/src/lib.rs: has its layout changed?");
    let architecture = read(&root.join("docs/architecture.md"));
    // The first cell of each table row: `| `module` | owns ... |` names the module it describes.
    let named: Vec<&str> = architecture
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .map(str::trim)
        .collect();
    let missing: Vec<&String> = modules.iter().filter(|name| !named.contains(&format!("`{name}`").as_str())).collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md has no table row for these modules of engine/src/lib.rs: {missing:?} \
         (add a `| \\`name\\` | owns ... |` row)"
    );
}

#[test]
fn readme_is_short() {
    let lines = read(&workspace_root().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines (at most {README_MAX_LINES}): move reference to docs/"
    );
}

#[test]
fn no_issue_numbers_in_readme_or_docs() {
    let mut found = Vec::new();
    for path in doc_files() {
        for (n, line) in read(&path).lines().enumerate() {
            if mentions_issue_number(line) {
                found.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "say what is meant instead of an issue number:\n{}", found.join("\n"));
}
