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

/// Reads a `.csv` or `.jsonl` file. Lines that cannot be read are returned as rejected.
pub fn from_file(path: &Path) -> anyhow::Result<(Vec<InputRecord>, Vec<Rejected>)> {
    let extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match extension.as_str() {
        "csv" => from_csv(path),
        "jsonl" | "ndjson" | "json" => from_jsonl(path),
        _ => anyhow::bail!("{}: expected a .csv or .jsonl file", path.display()),
    }
}

fn from_csv(path: &Path) -> anyhow::Result<(Vec<InputRecord>, Vec<Rejected>)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_path(path)?;
    let headers = reader.headers()?.clone();
    if !headers.iter().any(|header| header == "identifier") {
        anyhow::bail!("{}: the header row has no 'identifier' column", path.display());
    }
    let (mut records, mut rejected) = (Vec::new(), Vec::new());
    for row in reader.records() {
        match row {
            Ok(row) => {
                let line = row.position().map_or(0, |position| position.line() as usize);
                match row.deserialize::<InputRecord>(Some(&headers)) {
                    Ok(mut record) => {
                        record.line = line;
                        records.push(record);
                    }
                    Err(err) => rejected.push(Rejected {
                        line,
                        reason: err.to_string(),
                    }),
                }
            }
            Err(err) => rejected.push(Rejected {
                line: err.position().map_or(0, |position| position.line() as usize),
                reason: err.to_string(),
            }),
        }
    }
    Ok((records, rejected))
}

fn from_jsonl(path: &Path) -> anyhow::Result<(Vec<InputRecord>, Vec<Rejected>)> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let (mut records, mut rejected) = (Vec::new(), Vec::new());
    for (index, line) in file.lines().enumerate() {
        let line_no = index + 1;
        let text = line?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<InputRecord>(&text) {
            Ok(mut record) => {
                record.line = line_no;
                records.push(record);
            }
            Err(err) => rejected.push(Rejected {
                line: line_no,
                reason: err.to_string(),
            }),
        }
    }
    Ok((records, rejected))
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
