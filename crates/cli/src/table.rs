//! Plain-text tables and the small formatting helpers of human output.

use chrono::{DateTime, Utc};

/// Left-aligned columns separated by three spaces; the last column is not
/// padded, so lines carry no trailing blanks.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            if i + 1 == widths.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Compact age, as `kubectl` shows it: `42s`, `5m`, `3h`, `2d`.
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `1`, `0.5`, `2.25`: no trailing `.0`.
pub fn cpus(c: f64) -> String {
    format!("{c}")
}

/// Memory in MB as `512MB`, `2GB` when a whole number of GB.
pub fn memory(mb: u64) -> String {
    if mb >= 1024 && mb.checked_rem(1024) == Some(0) {
        format!("{}GB", mb / 1024)
    } else {
        format!("{mb}MB")
    }
}

/// Bytes in the largest unit that keeps a whole part: `512B`, `1.5KB`, `12.3MB`, `2GB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() < 0.05 {
        format!("{}{}", value.round() as u64, UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn columns_align_without_trailing_blanks() {
        let t = render(
            &["ID", "NAME", "STATUS"],
            &[
                vec!["abc".into(), "".into(), "running".into()],
                vec!["a".into(), "web-server".into(), "pending".into()],
            ],
        );
        assert_eq!(
            t,
            "ID    NAME         STATUS\n\
             abc                running\n\
             a     web-server   pending\n"
        );
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(render(&["ID", "NAME"], &[]), "ID   NAME\n");
    }

    #[test]
    fn ages_are_compact() {
        let now = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        let at = |s: i64| now - chrono::Duration::seconds(s);
        assert_eq!(age(now, at(5)), "5s");
        assert_eq!(age(now, at(125)), "2m");
        assert_eq!(age(now, at(3 * 3600 + 5)), "3h");
        assert_eq!(age(now, at(86_400)), "1d");
        assert_eq!(age(now, now + chrono::Duration::seconds(10)), "0s");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(cpus(1.0), "1");
        assert_eq!(cpus(0.5), "0.5");
        assert_eq!(memory(1024), "1GB");
        assert_eq!(memory(1536), "1536MB");
        assert_eq!(memory(512), "512MB");
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1536), "1.5KB");
        assert_eq!(bytes(2 * 1024 * 1024), "2MB");
        assert_eq!(bytes(12_900_000), "12.3MB");
        assert_eq!(bytes(300 * 1024 * 1024), "300MB");
    }
}
