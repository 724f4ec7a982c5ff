//! Compact rank lists such as `0-7,16-23`: how topology files and descriptions write sets of ranks.

/// The most ranks one topology may have; rank lists naming more are refused before they are expanded,
/// so a typo such as `0-4000000000` is an error rather than an allocation of gigabytes.
pub const MAX_RANKS: u32 = 1 << 20;

/// Why a rank list does not parse.
pub(crate) type RankListProblem = &'static str;

/// Expands `text` (comma-separated numbers and inclusive ranges) into rank numbers, in the order
/// written.
pub(crate) fn parse(text: &str) -> Result<Vec<u32>, RankListProblem> {
    let mut ranks = Vec::new();
    if text.trim().is_empty() {
        return Err("it is empty");
    }
    for part in text.split(',') {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (number(first)?, number(last)?),
            None => {
                let rank = number(part)?;
                (rank, rank)
            }
        };
        if first > last {
            return Err("a range runs downwards (write the smaller rank first)");
        }
        if last >= MAX_RANKS || ranks.len() as u64 + u64::from(last - first) >= u64::from(MAX_RANKS)
        {
            return Err("it names more ranks than a topology may have (2^20)");
        }
        ranks.extend(first..=last);
    }
    Ok(ranks)
}

fn number(text: &str) -> Result<u32, RankListProblem> {
    text.trim()
        .parse()
        .map_err(|_| "expected rank numbers or ranges such as 0-7, separated by commas")
}

/// Writes ascending `ranks` as compactly as possible: `[0, 1, 2, 3, 8]` becomes `0-3,8`.
pub(crate) fn format(ranks: impl IntoIterator<Item = u32>) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for rank in ranks {
        match runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(rank) => *last = rank,
            _ => runs.push((rank, rank)),
        }
    }
    let parts: Vec<String> = runs
        .into_iter()
        .map(|(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_runs_and_single_ranks() {
        assert_eq!(format([0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format([5]), "5");
    }

    #[test]
    fn parses_what_it_formats() {
        assert_eq!(parse("0-3, 8,10-11"), Ok(vec![0, 1, 2, 3, 8, 10, 11]));
    }

    #[test]
    fn refuses_malformed_lists() {
        assert!(parse("").is_err());
        assert!(parse("3-1").is_err());
        assert!(parse("a-b").is_err());
        assert!(parse("0-4000000000").is_err());
        assert!(parse("1,,2").is_err());
    }
}
