//! A small scanner that finds the variables a Liquid source reads, and refuses integer literals
//! the `liquid` parser would panic on.

use super::TemplateError;

/// Words that are not variables when they stand alone.
pub(super) const KEYWORDS: [&str; 14] = [
    "and", "or", "contains", "nil", "null", "true", "false", "empty", "blank", "in", "reversed",
    "with", "as", "for",
];

/// Names Liquid defines inside loops.
const LOOP_NAMES: [&str; 2] = ["forloop", "tablerowloop"];

/// The variable paths read by `{{ … }}` and by the expressions of `if`, `elsif`, `unless`,
/// `case`, `when`, `assign`, `for`, `echo` and `cycle` tags, in order of appearance, without
/// duplicates, without names the template binds itself.
pub(super) fn variables(src: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut locals: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(offset) = find_open(&src[i..]) {
        let start = i + offset;
        let is_tag = src.as_bytes()[start + 1] == b'%';
        let inner_start = start + 2;
        let Some(len) = find_close(&src[inner_start..], if is_tag { "%}" } else { "}}" }) else {
            break;
        };
        i = inner_start + len + 2;
        let inner = trim_dashes(&src[inner_start..inner_start + len]);
        if !is_tag {
            expression(inner, &mut found);
            continue;
        }
        let (tag, args) = split_word(inner);
        match tag {
            "if" | "elsif" | "unless" | "case" | "when" | "echo" | "cycle" => {
                expression(args, &mut found);
            }
            "assign" => {
                if let Some((name, value)) = args.split_once('=') {
                    locals.push(name.trim().to_owned());
                    expression(value, &mut found);
                }
            }
            "capture" | "increment" | "decrement" => locals.push(split_word(args).0.to_owned()),
            "for" | "tablerow" => {
                let (name, rest) = split_word(args);
                locals.push(name.to_owned());
                let (word, collection) = split_word(rest);
                if word == "in" {
                    expression(collection, &mut found);
                }
            }
            "raw" | "comment" => {
                let end = format!("end{tag}");
                i = skip_to_end_tag(src, i, &end);
            }
            _ => {}
        }
    }
    let mut unique: Vec<Vec<String>> = Vec::with_capacity(found.len());
    for path in found {
        let root = path[0].as_str();
        if locals.iter().any(|l| l == root) || LOOP_NAMES.contains(&root) {
            continue;
        }
        if !unique.contains(&path) {
            unique.push(path);
        }
    }
    unique
}

/// Scans one expression (`a.b | filter: c, key: d`, `a == b and c contains "x"`).
fn expression(expr: &str, found: &mut Vec<Vec<String>>) {
    let b = expr.as_bytes();
    let mut i = 0;
    let mut filter_name_next = false;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            i = skip_quoted(b, i).unwrap_or(b.len());
        } else if c == b'|' {
            filter_name_next = true;
            i += 1;
        } else if is_ident_start(c) {
            let (path, next, nested) = read_path(expr, i);
            i = next;
            let single = path.len() == 1;
            let keyword_argument = single && expr[i..].trim_start().starts_with(':');
            let keyword = single && KEYWORDS.contains(&path[0].as_str());
            if !(filter_name_next || keyword_argument || keyword) {
                found.push(path);
            }
            filter_name_next = false;
            for inner in nested {
                expression(inner, found);
            }
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
}

/// Reads `ident ( .ident | [literal] | [expression] )*` from `start`. A bracket holding an
/// expression ends the static path; the expression is returned to be scanned on its own.
fn read_path(expr: &str, start: usize) -> (Vec<String>, usize, Vec<&str>) {
    let b = expr.as_bytes();
    let mut i = ident_end(b, start);
    let mut path = vec![expr[start..i].to_owned()];
    let mut nested = Vec::new();
    let mut dynamic = false;
    loop {
        if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|&c| is_ident_start(c)) {
            let end = ident_end(b, i + 1);
            if !dynamic {
                path.push(expr[i + 1..end].to_owned());
            }
            i = end;
        } else if b.get(i) == Some(&b'[') {
            let Some(close) = matching_bracket(b, i) else {
                break;
            };
            let inner = expr[i + 1..close].trim();
            i = close + 1;
            let digits = inner.strip_prefix('-').unwrap_or(inner);
            let quoted = inner.len() >= 2
                && (inner.starts_with('"') && inner.ends_with('"')
                    || inner.starts_with('\'') && inner.ends_with('\''));
            if dynamic {
                nested.push(inner);
            } else if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
                path.push(inner.to_owned());
            } else if quoted {
                path.push(inner[1..inner.len() - 1].to_owned());
            } else {
                nested.push(inner);
                dynamic = true;
            }
        } else {
            break;
        }
    }
    (path, i, nested)
}

pub(super) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

/// The end of the identifier starting at `start` (`start` itself when there is none).
pub(super) fn ident_end(b: &[u8], start: usize) -> usize {
    if !b.get(start).is_some_and(|&c| is_ident_start(c)) {
        return start;
    }
    let mut i = start + 1;
    while b
        .get(i)
        .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        i += 1;
    }
    i
}

/// The index after the quoted string starting at `start`; `None` when it is not closed.
fn skip_quoted(b: &[u8], start: usize) -> Option<usize> {
    let quote = b[start];
    b[start + 1..]
        .iter()
        .position(|&c| c == quote)
        .map(|p| start + p + 2)
}

fn matching_bracket(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                i = skip_quoted(b, i)?;
                continue;
            }
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The offset of the next `{{` or `{%`.
fn find_open(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(1)).find(|&i| b[i] == b'{' && (b[i + 1] == b'{' || b[i + 1] == b'%'))
}

/// The offset of `close` in `s`, skipping quoted strings (as Liquid's grammar does).
pub(super) fn find_close(s: &str, close: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' || b[i] == b'\'' {
            match skip_quoted(b, i) {
                Some(next) => {
                    i = next;
                    continue;
                }
                // An unclosed quote: fall back to the first `close` after it.
                None => return s[i..].find(close).map(|p| p + i),
            }
        }
        // Bytes, not `s[i..]`: `i` may be inside a multi-byte character. `close` is ASCII, so
        // a match is always at a character boundary.
        if b[i..].starts_with(close.as_bytes()) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn skip_to_end_tag(src: &str, from: usize, end: &str) -> usize {
    let mut i = from;
    while let Some(offset) = src[i..].find("{%") {
        let start = i + offset + 2;
        let Some(len) = src[start..].find("%}") else {
            return src.len();
        };
        i = start + len + 2;
        if split_word(trim_dashes(&src[start..start + len])).0 == end {
            return i;
        }
    }
    src.len()
}

/// Strips whitespace control (`{{-`, `-}}`) and surrounding spaces.
fn trim_dashes(inner: &str) -> &str {
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    inner.strip_suffix('-').unwrap_or(inner).trim()
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(|c: char| c.is_whitespace()) {
        Some(end) => (&s[..end], &s[end..]),
        None => (s, ""),
    }
}

/// Refuses an integer literal inside a tag that does not fit an `i64`: the `liquid` parser
/// panics on one ("Grammar ensures matches are parseable as integers", found by the
/// `json_template` fuzz target). Quoted strings are skipped; a fraction (`1.5`) is a float.
pub(super) fn check_integer_literals(src: &str) -> Result<(), TemplateError> {
    let b = src.as_bytes();
    let mut in_tag = false;
    let mut i = 0;
    while i < b.len() {
        let pair = (b[i], b.get(i + 1).copied());
        match pair {
            (b'{', Some(b'{' | b'%')) => {
                in_tag = true;
                i += 2;
                continue;
            }
            (b'}' | b'%', Some(b'}')) => {
                in_tag = false;
                i += 2;
                continue;
            }
            _ => {}
        }
        if !in_tag {
            i += 1;
            continue;
        }
        if b[i] == b'"' || b[i] == b'\'' {
            let quote = b[i];
            i += 1;
            while i < b.len() && b[i] != quote {
                i += 1;
            }
            i += 1;
            continue;
        }
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            // The fraction of a float (`1.5`, but not the end of a range `1..5`).
            let fraction = start >= 2 && b[start - 1] == b'.' && b[start - 2].is_ascii_digit();
            // The integer part of a float.
            let integer_part =
                b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit);
            let negative = start >= 1 && b[start - 1] == b'-';
            let digits = &src[start..i];
            let text = if negative {
                format!("-{digits}")
            } else {
                digits.to_owned()
            };
            if !fraction && !integer_part && text.parse::<i64>().is_err() {
                return Err(TemplateError::Parse(format!(
                    "the number {text} is too large for an integer"
                )));
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}
