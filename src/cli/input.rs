//! Reads identifiers for `submit`, `query` and `retract`: from the command line, or from a
//! CSV file with a header row, or a JSONL file (one object per line). Per-line values
//! override the command-line defaults.

use std::io::BufRead;
use std::path::Path;

/// One identifier to hash, with the line it came from (1-based; the argument position for
/// command-line values).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    #[serde(skip)]
    pub line: usize,
    pub identifier: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub confidence: Option<u32>,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub observed_at: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A line that could not be read, with why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub line: usize,
    pub reason: String,
}

pub fn from_args(values: &[String]) -> Vec<InputRecord> {
    values
        .iter()
        .enumerate()
        .map(|(index, value)| InputRecord {
            line: index + 1,
            identifier: value.clone(),
            ..InputRecord::default()
        })
        .collect()
}

/// One record or one rejected line, in file order.
pub type Item = Result<InputRecord, Rejected>;

/// Reads a `.csv` or `.jsonl` file whole. Lines that cannot be read are returned as rejected.
pub fn from_file(path: &Path) -> anyhow::Result<(Vec<InputRecord>, Vec<Rejected>)> {
    let (mut records, mut rejected) = (Vec::new(), Vec::new());
    for item in stream_file(path)? {
        match item {
            Ok(record) => records.push(record),
            Err(line) => rejected.push(line),
        }
    }
    Ok((records, rejected))
}

/// Streams a `.csv` or `.jsonl` file record by record, so files of millions of lines are
/// never held in memory.
pub fn stream_file(path: &Path) -> anyhow::Result<Box<dyn Iterator<Item = Item>>> {
    let extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match extension.as_str() {
        "csv" => stream_csv(path),
        "jsonl" | "ndjson" | "json" => stream_jsonl(path),
        _ => anyhow::bail!("{}: expected a .csv or .jsonl file", path.display()),
    }
}

/// Data lines of a file (for progress): all lines, less the CSV header.
pub fn count_records(path: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        lines += buffer[..n].iter().filter(|byte| **byte == b'\n').count() as u64;
        last = buffer[n - 1];
    }
    if last != b'\n' {
        lines += 1;
    }
    let is_csv = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("csv"));
    Ok(if is_csv { lines.saturating_sub(1) } else { lines })
}

fn stream_csv(path: &Path) -> anyhow::Result<Box<dyn Iterator<Item = Item>>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_path(path)?;
    let headers = reader.headers()?.clone();
    if !headers.iter().any(|header| header == "identifier") {
        anyhow::bail!("{}: the header row has no 'identifier' column", path.display());
    }
    Ok(Box::new(reader.into_records().map(move |row| match row {
        Ok(row) => {
            let line = row.position().map_or(0, |position| position.line() as usize);
            row.deserialize::<InputRecord>(Some(&headers))
                .map(|mut record| {
                    record.line = line;
                    record
                })
                .map_err(|err| Rejected {
                    line,
                    reason: err.to_string(),
                })
        }
        Err(err) => Err(Rejected {
            line: err.position().map_or(0, |position| position.line() as usize),
            reason: err.to_string(),
        }),
    })))
}

fn stream_jsonl(path: &Path) -> anyhow::Result<Box<dyn Iterator<Item = Item>>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    Ok(Box::new(file.lines().enumerate().filter_map(|(index, line)| {
        let line_no = index + 1;
        let text = match line {
            Ok(text) => text,
            Err(err) => {
                return Some(Err(Rejected {
                    line: line_no,
                    reason: format!("cannot read the line: {err}"),
                }));
            }
        };
        if text.trim().is_empty() {
            return None;
        }
        Some(
            serde_json::from_str::<InputRecord>(&text)
                .map(|mut record| {
                    record.line = line_no;
                    record
                })
                .map_err(|err| Rejected {
                    line: line_no,
                    reason: err.to_string(),
                }),
        )
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_keep_their_line_numbers_and_bad_rows_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.csv");
        std::fs::write(
            &path,
            "identifier,category,confidence\na@example.com,grooming,80\nb@example.com,,x\nc@example.com,,\n",
        )
        .unwrap();
        let (records, rejected) = from_file(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].line, 2);
        assert_eq!(records[0].confidence, Some(80));
        assert_eq!(records[1].line, 4);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].line, 3);
    }

    #[test]
    fn jsonl_lines_are_read_and_bad_lines_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.jsonl");
        std::fs::write(
            &path,
            "{\"identifier\":\"+447911123456\",\"kind\":\"phone\"}\n\nnot json\n",
        )
        .unwrap();
        let (records, rejected) = from_file(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].kind.as_deref(), Some("phone"));
        assert_eq!(rejected[0].line, 3);
    }
}
