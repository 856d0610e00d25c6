//! toml's errors as one line naming the table, the key and the line: what `Config::parse` reports.

/// Turns a toml/serde error into one line naming the table, key and line, e.g.
/// "unknown key `lisen` in [edge] (line 3; expected one of ...)" or
/// "[edge] listen: invalid type: integer `5`, expected a string (line 2)".
pub(super) fn toml_message(src: &str, err: &toml::de::Error) -> String {
    // toml's syntax errors span several lines; a config error should stay on one.
    let msg = err.message().trim().replace('\n', "; ");
    let Some(span) = err.span() else { return msg };
    let start = span.start.min(src.len());
    let before = &src[..start];
    let line = before.matches('\n').count() + 1;
    let table = table_at(before);
    let table_or_top = table.clone().unwrap_or_else(|| "top level".into());
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let (key, expected) = match rest.split_once(", expected ") {
            Some((k, e)) => (k, format!("; expected {e}")),
            None => (rest, String::new()),
        };
        let place = if table.is_some() { format!("in {table_or_top}") } else { "at top level".into() };
        return format!("unknown key {key} {place} (line {line}{expected})");
    }
    // Value errors point at the value: name the key written before it on the same line.
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_text = &src[line_start..];
    let line_text = line_text.split('\n').next().unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && start > line_start + k.len());
    match (key, table) {
        (Some(k), Some(t)) => format!("{t} {k}: {msg} (line {line})"),
        (Some(k), None) => format!("{k}: {msg} (line {line})"),
        (None, _) => format!("{msg} in {table_or_top} (line {line})"),
    }
}

/// The last table header before an error position, as written ("[edge]", "[[pool.edges]]").
fn table_at(before: &str) -> Option<String> {
    before.lines().rev().map(str::trim).find(|l| l.starts_with('[')).map(|l| {
        // Drop a trailing comment; table names with '#' inside quotes are too rare to matter here.
        let l = l.split('#').next().unwrap_or(l).trim();
        l.to_string()
    })
}
