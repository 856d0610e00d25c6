//! The simulated users: read from parapet's user directory (users.toml, `[[user]]` with alias and password).
//! Users named load1..loadN are taken in numeric order; when there are none, every user is used.

use std::path::Path;

use serde::Deserialize;

use crate::cli::{bad, ConfigError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub alias: String,
    pub password: String,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    user: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    alias: String,
    #[serde(default)]
    password: Option<String>,
}

pub fn load(path: &Path) -> Result<Vec<User>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("Cannot read the users file {}: {e}.", path.display())))?;
    parse(&text).map_err(|e| bad(format!("The users file {} is not valid: {e}.", path.display())))
}

pub fn parse(text: &str) -> Result<Vec<User>, String> {
    let f: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let all: Vec<User> =
        f.user.into_iter().filter_map(|e| Some(User { alias: e.alias, password: e.password? })).collect();
    let mut load: Vec<(u64, User)> =
        all.iter().filter_map(|u| Some((u.alias.strip_prefix("load")?.parse::<u64>().ok()?, u.clone()))).collect();
    if load.is_empty() {
        if all.is_empty() {
            return Err("it lists no user with a password".to_string());
        }
        return Ok(all);
    }
    load.sort_by_key(|(n, _)| *n);
    Ok(load.into_iter().map(|(_, u)| u).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefers_load_users_in_numeric_order() {
        let t = "[[user]]\nalias = \"alice\"\npassword = \"a\"\n[[user]]\nalias = \"load10\"\npassword = \"x\"\n\
                 [[user]]\nalias = \"load2\"\npassword = \"y\"\n";
        let u = parse(t).unwrap();
        assert_eq!(u.iter().map(|u| u.alias.as_str()).collect::<Vec<_>>(), ["load2", "load10"]);
        let u = parse("[[user]]\nalias = \"alice\"\npassword = \"a\"\n").unwrap();
        assert_eq!(u.len(), 1);
        assert!(parse("").is_err());
    }
}
