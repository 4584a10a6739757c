//! Reading a guest list: CSV (a header line, then one row per record) or NDJSON (one JSON
//! object per line), each row with the line it starts on. An empty CSV cell, an empty
//! string or a JSON `null` is no value: the column is absent from that row, so a template
//! that reads it fails on that row (strict undefined) instead of rendering a blank.
//!
//! Owns parsing only; what a row means is `Template::render`'s business.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::RowError;

/// One row of the input: its non-empty columns and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub columns: BTreeMap<String, Value>,
}

impl Row {
    /// The column as text (numbers and booleans spelled out), if the row has it.
    pub fn get(&self, column: &str) -> Option<String> {
        match self.columns.get(column)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Reads a file by its extension: `.ndjson`/`.jsonl` as NDJSON, anything else as CSV.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, RowError> {
    let data = std::fs::read(path).map_err(|e| RowError {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("ndjson" | "jsonl") => read_ndjson(&data),
        _ => read_csv(&data),
    }
}

/// CSV with a header line. A record whose field count differs from the header's is an
/// error of its line.
pub fn read_csv(data: &[u8]) -> Result<Vec<Row>, RowError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(data);
    let headers = reader
        .headers()
        .map_err(|e| csv_error(&e, 1))?
        .iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    if let Some(dup) = headers
        .iter()
        .enumerate()
        .find(|(i, h)| headers[..*i].contains(h))
        .map(|(_, h)| h)
    {
        return Err(RowError {
            line: 1,
            reason: format!("the header names column `{dup}` twice"),
        });
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&e, 0))?;
        let line = record.position().map_or(0, |p| p.line());
        let columns = headers
            .iter()
            .zip(record.iter())
            .filter(|(h, v)| !h.is_empty() && !v.is_empty())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        rows.push(Row { line, columns });
    }
    Ok(rows)
}

fn csv_error(e: &csv::Error, fallback: u64) -> RowError {
    let line = e.position().map_or(fallback, |p| p.line());
    let reason = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        _ => e.to_string(),
    };
    RowError { line, reason }
}

/// One JSON object per line; blank lines are skipped.
pub fn read_ndjson(data: &[u8]) -> Result<Vec<Row>, RowError> {
    let text = std::str::from_utf8(data).map_err(|e| RowError {
        line: 1 + data[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64,
        reason: "not UTF-8".into(),
    })?;
    let mut rows = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = i as u64 + 1;
        if l.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(l).map_err(|e| RowError {
            line,
            reason: format!("not JSON: {e}"),
        })?;
        let Value::Object(map) = value else {
            return Err(RowError {
                line,
                reason: "a row must be a JSON object".into(),
            });
        };
        let columns = map
            .into_iter()
            .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
            .collect();
        rows.push(Row { line, columns });
    }
    Ok(rows)
}
