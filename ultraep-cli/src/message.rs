//! Error messages fit for one terminal line: whatever a library's error says (a TOML parser's
//! multi-line report with the offending line quoted, a JSON error quoting a megabyte of input), the
//! command prints one line of bounded length.

/// `message` on one line: line breaks become "; ", runs of spaces one space, and anything beyond
/// `limit` characters is cut and marked with "...".
///
/// ```
/// use ultraep_cli::one_line;
/// assert_eq!(one_line("bad key\n  |\n1 | x = \n", 80), "bad key; |; 1 | x =");
/// assert_eq!(one_line(&"y".repeat(10), 4), "yyyy...");
/// ```
pub fn one_line(message: &str, limit: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for (index, line) in message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .enumerate()
    {
        let words = line.split_whitespace();
        if index > 0 {
            out.push_str("; ");
            count += 2;
        }
        for (position, word) in words.enumerate() {
            if position > 0 {
                out.push(' ');
                count += 1;
            }
            for character in word.chars() {
                if count >= limit {
                    out.push_str("...");
                    return out;
                }
                out.push(character);
                count += 1;
            }
        }
    }
    out
}
