//! Style rules that matter, checked rather than remembered (after
//! rust-analyzer's tidy): every Rust file opens with a `//!` header saying
//! what it is for, and no line is wider than rustfmt's `max_width`, which
//! rustfmt itself cannot enforce inside macro bodies.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `tests/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `.rs` file of the workspace, outside build output.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

fn max_width() -> usize {
    let config = std::fs::read_to_string(workspace_root().join("rustfmt.toml")).unwrap();
    config
        .lines()
        .find_map(|line| line.strip_prefix("max_width"))
        .and_then(|rest| rest.trim_start_matches([' ', '=']).trim().parse().ok())
        .unwrap_or(100)
}

#[test]
fn every_rust_file_has_a_module_header_and_fits_the_width() {
    let root = workspace_root();
    let mut files = Vec::new();
    for top in ["crates", "bins", "tests"] {
        rust_files(&root.join(top), &mut files);
    }
    assert!(files.len() > 50, "found only {} files under {}", files.len(), root.display());
    let width = max_width();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{shown}: no `//!` header"));
        }
        for (number, line) in text.lines().enumerate() {
            if line.chars().count() > width {
                problems.push(format!("{shown}:{}: wider than {width}", number + 1));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
