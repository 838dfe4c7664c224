//! PromQL for the deploy tests (`deploy_manifests.rs`, `deploy_runtime.rs`): which metric names
//! the dashboard's and the alert rules' queries select, so that each can be checked against what
//! the agent exports.

use std::collections::BTreeSet;

/// Metric names in a PromQL expression: identifiers that are not functions, keywords, label
/// names (inside `{}` or after by/without/on/ignoring/group_*), durations, strings or Grafana
/// variables. `label_values(METRIC, LABEL)` (a Grafana variable query) names METRIC.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let e = expr.trim();
    if let Some(args) = e.strip_prefix("label_values(") {
        let metric = args.split([',', ')']).next().unwrap_or_default();
        if metric.contains(['(', '{']) || metric.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return metric_names(metric);
        }
        return out;
    }
    // Strip strings, label matchers, ranges and Grafana variables.
    let mut clean = String::new();
    let mut chars = e.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut esc = false;
                for d in chars.by_ref() {
                    if esc {
                        esc = false;
                    } else if d == '\\' {
                        esc = true;
                    } else if d == c {
                        break;
                    }
                }
                clean.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let mut in_str = None;
                for d in chars.by_ref() {
                    match in_str {
                        Some(q) if d == q => in_str = None,
                        Some(_) => {}
                        None if d == '"' || d == '\'' => in_str = Some(d),
                        None if d == close => break,
                        None => {}
                    }
                }
                clean.push(' ');
            }
            '$' => {
                while chars
                    .peek()
                    .is_some_and(|d| d.is_alphanumeric() || *d == '_')
                {
                    chars.next();
                }
                clean.push(' ');
            }
            _ => clean.push(c),
        }
    }
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        // (The label-list words, `by` ... `group_right`, are LABEL_LISTS below.)
        "atan2",
        // Aggregation operators, which may be followed by `by (...)` rather than `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b: Vec<char> = clean.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || c == '.' {
            // A number (0.5, 1e3, 0x1f): skip the whole run.
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '.' || b[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == ':') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let mut j = i;
            while j < b.len() && b[j].is_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == '(';
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    while j < b.len() && b[j] != ')' {
                        j += 1;
                    }
                    i = j + 1;
                }
                continue;
            }
            if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                out.insert(word);
            }
            continue;
        }
        i += 1;
    }
    out
}
