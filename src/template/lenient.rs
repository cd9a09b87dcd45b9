//! The lenient JSON reader for bodies: standard JSON, plus trailing commas and `{{ … }}` standing
//! where a value goes.

use serde_json::Value;

/// Deeper documents are read as text templates (and never overflow the stack).
const MAX_DEPTH: usize = 128;

/// A parsed body, before its strings are compiled.
#[derive(Debug)]
pub(super) enum Raw {
    Object(Vec<(String, Raw)>),
    Array(Vec<Raw>),
    /// A decoded string (it may hold markup).
    Str(String),
    /// A placeholder, `{{ … }}` included.
    Bare(String),
    /// A number, a boolean or `null`.
    Literal(Value),
}

/// The document, when `src` is an object or an array in lenient JSON.
pub(super) fn parse(src: &str) -> Option<Raw> {
    let mut p = Reader { s: src, i: 0 };
    p.ws();
    let doc = match (p.peek()?, p.peek_at(1)) {
        (b'{', Some(b'{' | b'%')) => return None,
        (b'{' | b'[', _) => p.value(0)?,
        _ => return None,
    };
    p.ws();
    (p.i == src.len()).then_some(doc)
}

struct Reader<'s> {
    s: &'s str,
    i: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.s.as_bytes().get(self.i + ahead).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let matched = self.peek() == Some(c);
        if matched {
            self.i += 1;
        }
        matched
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Raw> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' if self.peek_at(1) == Some(b'{') => self.bare(),
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(Raw::Str),
            b't' => self.word("true", Value::Bool(true)),
            b'f' => self.word("false", Value::Bool(false)),
            b'n' => self.word("null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<Raw> {
        self.i += 1;
        let mut members = Vec::new();
        loop {
            self.ws();
            if self.eat(b'}') {
                return Some(Raw::Object(members));
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            members.push((key, self.value(depth + 1)?));
            self.ws();
            if self.eat(b'}') {
                return Some(Raw::Object(members));
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<Raw> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.eat(b']') {
                return Some(Raw::Array(items));
            }
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(b']') {
                return Some(Raw::Array(items));
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn bare(&mut self) -> Option<Raw> {
        let start = self.i;
        let len = super::scan::find_close(&self.s[start + 2..], "}}")?;
        self.i = start + 2 + len + 2;
        Some(Raw::Bare(self.s[start..self.i].to_owned()))
    }

    fn word(&mut self, word: &str, value: Value) -> Option<Raw> {
        if !self.s[self.i..].starts_with(word) {
            return None;
        }
        self.i += word.len();
        Some(Raw::Literal(value))
    }

    fn number(&mut self) -> Option<Raw> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.i += 1;
        }
        let value: Value = serde_json::from_str(&self.s[start..self.i]).ok()?;
        value.is_number().then_some(Raw::Literal(value))
    }

    /// A JSON string, decoded. Inside `{{ … }}` and `{% … %}` a plain `"` is Liquid's quote,
    /// not the end of the JSON string.
    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = String::new();
        // The closing delimiter of the markup we are in (`}` or `%`), and its open quote.
        let mut markup: Option<char> = None;
        let mut quote: Option<char> = None;
        loop {
            let c = match self.peek()? {
                b'\\' => self.escape()?,
                b'"' if markup.is_none() => {
                    self.i += 1;
                    return Some(out);
                }
                _ => {
                    let c = self.s[self.i..].chars().next()?;
                    self.i += c.len_utf8();
                    c
                }
            };
            let previous = out.chars().next_back();
            out.push(c);
            match (markup, quote) {
                (None, _) => {
                    if previous == Some('{') && (c == '{' || c == '%') {
                        markup = Some(if c == '{' { '}' } else { '%' });
                    }
                }
                (Some(_), Some(q)) => {
                    if c == q {
                        quote = None;
                    }
                }
                (Some(close), None) => {
                    if c == '"' || c == '\'' {
                        quote = Some(c);
                    } else if c == '}' && previous == Some(close) {
                        markup = None;
                    }
                }
            }
        }
    }

    fn escape(&mut self) -> Option<char> {
        let c = self.peek_at(1)?;
        self.i += 2;
        Some(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                if (0xD800..0xDC00).contains(&high) {
                    if !(self.eat(b'\\') && self.eat(b'u')) {
                        return None;
                    }
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                } else {
                    char::from_u32(high)?
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.i..self.i + 4)?;
        let value = u32::from_str_radix(digits, 16).ok()?;
        self.i += 4;
        Some(value)
    }
}
