//! What the architecture check reads in the docs: each crate's `Who uses it:` line, and the
//! README's status table, which must stay one short line per piece.

use std::collections::BTreeSet;

/// The longest cell the README's status table may have: the table says what works and links to
/// the figures; the figures themselves live in the crates' READMEs and `docs/`.
pub const STATUS_CELL_LIMIT: usize = 300;

/// The workspace crates a crate's `//!` docs name on their `Who uses it:` paragraph (up to
/// `What it may depend on` or the paragraph's end), as `` `ultraep-...` `` in backticks; `None`
/// if the docs have no such paragraph.
pub fn stated_users(lib: &str) -> Option<BTreeSet<String>> {
    let docs: Vec<&str> = lib
        .lines()
        .take_while(|line| line.starts_with("//!") || line.trim().is_empty())
        .filter_map(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let start = docs
        .iter()
        .position(|line| line.starts_with("Who uses it:"))?;
    let mut paragraph = String::new();
    for line in &docs[start..] {
        if line.is_empty() {
            break;
        }
        paragraph.push(' ');
        paragraph.push_str(line);
    }
    let paragraph = paragraph
        .split("What it may depend on")
        .next()
        .unwrap_or_default();
    Some(
        paragraph
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|name| name.starts_with("ultraep-") && !name.contains(' '))
            .map(str::to_owned)
            .collect(),
    )
}

/// The rows of the README's `## Status` table with a cell longer than [`STATUS_CELL_LIMIT`]: the
/// row's first cell and the longest cell's length.
pub fn long_status_cells(readme: &str) -> Vec<(String, usize)> {
    let Some(start) = readme.find("\n## Status") else {
        return Vec::new();
    };
    readme[start + 1..]
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let length = cells.iter().map(|cell| cell.chars().count()).max()?;
            (length > STATUS_CELL_LIMIT).then(|| (cells[0].to_owned(), length))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_uses_a_crate_is_read_off_its_docs() {
        let lib = "//! A crate.\n//!\n//! Who uses it: people, `ultraep-runtime` and\n//! `ultraep-py`. What it may depend on: `ultraep-plan`.\n//!\n//! Unrelated: `ultraep-bench`.\n\npub mod x;\n";
        let stated = stated_users(lib).unwrap();
        assert_eq!(
            stated,
            BTreeSet::from(["ultraep-runtime".to_owned(), "ultraep-py".to_owned()])
        );
        assert_eq!(stated_users("//! No such line.\n"), None);
        assert_eq!(
            stated_users("//! Who uses it: people.\n"),
            Some(BTreeSet::new())
        );
    }

    #[test]
    fn a_long_status_cell_is_caught() {
        let short = "x".repeat(STATUS_CELL_LIMIT);
        let long = "y".repeat(STATUS_CELL_LIMIT + 1);
        let readme = format!(
            "# t\n\n## Status\n\n| piece | works |\n|---|---|\n| a | {short} |\n| b | {long} |\n\n## License\n\n| c | {long} |\n"
        );
        assert_eq!(
            long_status_cells(&readme),
            vec![("b".to_owned(), STATUS_CELL_LIMIT + 1)]
        );
    }
}
