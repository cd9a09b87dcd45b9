//! Secrets: `SWITCHYARD_SECRET_<NAME>` environment variables and one file per secret in
//! `secrets.dir` (as Kubernetes mounts them). The environment wins over a file.

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// The prefix of secret environment variables.
pub const ENV_PREFIX: &str = "SWITCHYARD_SECRET_";

/// Loads every secret. A missing directory is not an error (the environment may hold them all).
pub fn load(dir: &Path) -> io::Result<HashMap<String, String>> {
    let mut secrets = HashMap::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Kubernetes mounts also hold `..data` links and dot-folders.
                if name.starts_with('.') || !entry.path().is_file() {
                    continue;
                }
                let value = std::fs::read_to_string(entry.path())?;
                secrets.insert(name, value.trim_end_matches(['\n', '\r']).to_owned());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for (key, value) in std::env::vars() {
        if let Some(name) = key.strip_prefix(ENV_PREFIX) {
            secrets.insert(name.to_owned(), value);
        }
    }
    Ok(secrets)
}

/// Replaces every `{{ secrets.NAME }}` in a setting that is not a template (`history.url`, the
/// console's tokens) with the secret's value, trimmed. The error says what is wrong without any
/// value.
pub fn resolve(text: &str, secrets: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.trim();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("}}") else {
            return Err("an unclosed {{".into());
        };
        let inner = rest[start + 2..start + len].trim();
        let Some(name) = inner.strip_prefix("secrets.").map(str::trim) else {
            return Err(format!(
                "only {{{{ secrets.NAME }}}} may appear in it, not {{{{ {inner} }}}}"
            ));
        };
        let Some(value) = secrets.get(name) else {
            return Err(format!(
                "secret {name} is not defined (a file in secrets.dir, or {ENV_PREFIX}{name})"
            ));
        };
        out.push_str(value.trim());
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("API_KEY"), "s3cret\n").expect("write");
        std::fs::write(dir.path().join(".hidden"), "no").expect("write");
        let secrets = load(dir.path()).expect("load");
        assert_eq!(secrets.get("API_KEY").map(String::as_str), Some("s3cret"));
        assert!(!secrets.contains_key(".hidden"));
    }

    #[test]
    fn a_missing_dir_is_fine() {
        assert!(load(Path::new("/nonexistent/secrets")).is_ok());
    }
}
