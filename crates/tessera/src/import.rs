//! `tessera user import FILE`: users from another system, with their password hashes, so they
//! keep their passwords. JSON lines (`{"username", "password_hash", "roles"?}`) or CSV with a
//! `username,password_hash[,roles]` header (roles separated by `;` or spaces). Hashes: bcrypt
//! (`$2a$/$2b$/$2y$`) or argon2 PHC; they are upgraded to argon2id at each user's next login.

use serde::Deserialize;

/// One user to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRecord {
    /// Username as given.
    pub username: String,
    /// The foreign password hash.
    pub password_hash: String,
    /// Role names.
    pub roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    username: String,
    password_hash: String,
    #[serde(default)]
    roles: Option<Roles>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Roles {
    List(Vec<String>),
    Text(String),
}

fn split_roles(s: &str) -> Vec<String> {
    s.split([';', ' ', ','])
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits one CSV line, honouring double quotes (`""` is a quote inside a quoted field).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    fields.push(cur);
    Ok(fields)
}

/// Records with their line numbers, and the lines that could not be read with the reason.
pub type Parsed = (Vec<(usize, ImportRecord)>, Vec<(usize, String)>);

/// Parses a whole file.
pub fn parse(text: &str) -> Parsed {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let first = lines.clone().find(|(_, l)| !l.trim().is_empty());
    let is_json = first.is_some_and(|(_, l)| l.trim_start().starts_with('{'));
    if !is_json {
        // CSV: the header names the columns.
        let Some((n, header)) = lines.find(|(_, l)| !l.trim().is_empty()) else {
            return (ok, bad);
        };
        let cols: Vec<String> = match csv_fields(header) {
            Ok(c) => c
                .into_iter()
                .map(|c| c.trim().to_ascii_lowercase())
                .collect(),
            Err(e) => {
                bad.push((n, format!("header: {e}")));
                return (ok, bad);
            }
        };
        let (Some(ui), Some(hi)) = (
            cols.iter().position(|c| c == "username"),
            cols.iter().position(|c| c == "password_hash"),
        ) else {
            bad.push((
                n,
                "the CSV header must name username and password_hash".into(),
            ));
            return (ok, bad);
        };
        let ri = cols.iter().position(|c| c == "roles");
        for (n, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            match csv_fields(line) {
                Ok(f) if f.len() == cols.len() => ok.push((
                    n,
                    ImportRecord {
                        username: f[ui].clone(),
                        password_hash: f[hi].clone(),
                        roles: ri.map(|i| split_roles(&f[i])).unwrap_or_default(),
                    },
                )),
                Ok(f) => bad.push((
                    n,
                    format!("expected {} fields, found {}", cols.len(), f.len()),
                )),
                Err(e) => bad.push((n, e)),
            }
        }
        return (ok, bad);
    }
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<JsonRecord>(line) {
            Ok(r) => ok.push((
                n,
                ImportRecord {
                    username: r.username,
                    password_hash: r.password_hash,
                    roles: match r.roles {
                        None => Vec::new(),
                        Some(Roles::List(v)) => v,
                        Some(Roles::Text(s)) => split_roles(&s),
                    },
                },
            )),
            Err(_) => bad.push((
                n,
                "not a JSON object with username and password_hash".into(),
            )),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_with_roles_as_list_or_text() {
        let (ok, bad) = parse(
            "{\"username\":\"a\",\"password_hash\":\"$2b$x\",\"roles\":[\"admin\"]}\n\n\
             {\"username\":\"b\",\"password_hash\":\"h\",\"roles\":\"x;y\"}\nnot json\n",
        );
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].1.roles, ["admin"]);
        assert_eq!(ok[1].1.roles, ["x", "y"]);
        assert_eq!(
            bad,
            vec![(
                4,
                "not a JSON object with username and password_hash".to_owned()
            )]
        );
    }

    #[test]
    fn csv_with_a_header_and_quoted_fields() {
        let (ok, bad) = parse(
            "username,password_hash,roles\r\nalice,\"$2b$12$abc,def\",admin;ops\nbob,h\nbad,\"open\n",
        );
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].1.password_hash, "$2b$12$abc,def");
        assert_eq!(ok[0].1.roles, ["admin", "ops"]);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0, 3);
    }
}
