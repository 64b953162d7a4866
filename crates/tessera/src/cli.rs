//! The command line (API.md §1): `serve` (the default), `user …`, `keys …`.

use std::io::{BufRead as _, IsTerminal as _};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::app::{Application, open_service};
use crate::config::{Settings, SettingsArgs};
use crate::domain::clock::{SystemClock, Timestamp};
use crate::service::{AuthError, UserPatch};

/// tessera: login and token verification.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// User administration.
    #[command(subcommand)]
    User(UserCommand),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user.
    Add {
        /// Username.
        name: String,
        /// Role to grant (repeatable).
        #[arg(long)]
        role: Vec<String>,
        /// Read the password as one line from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Import users with their password hashes (JSON lines or CSV; bcrypt or argon2).
    /// Idempotent: existing usernames are skipped. Reports what it skipped and why.
    Import {
        /// The file (`-` for standard input).
        file: std::path::PathBuf,
    },
    /// Set a user's password (revokes their sessions).
    Passwd {
        /// Username.
        name: String,
        /// Read the password as one line from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user (revokes their sessions).
    Disable {
        /// Username.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// Username.
        name: String,
    },
    /// Delete a user (revokes their sessions).
    Delete {
        /// Username.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List signing keys: kid, alg, state, created.
    List,
    /// Make a new active key; old keys verify until their tokens expire.
    Rotate,
}

impl Cli {
    /// Which subcommand runs, for choosing how to log.
    pub fn is_serve(&self) -> bool {
        matches!(self.command, None | Some(Command::Serve))
    }

    /// Loads settings from every source.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings::load(&self.settings, std::env::vars())?)
    }

    /// Runs the command.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self.command {
            None | Some(Command::Serve) => {
                Application::build(settings)
                    .await?
                    .run_until_stopped()
                    .await
            }
            Some(Command::User(cmd)) => user(cmd, &settings).await,
            Some(Command::Keys(cmd)) => keys(cmd, &settings).await,
        }
    }
}

fn read_password(from_stdin: bool) -> anyhow::Result<SecretString> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read standard input")?;
        // Only the line ending is removed: passwords are used exactly as given.
        let pw = line.strip_suffix('\n').unwrap_or(&line);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        return Ok(SecretString::from(pw.to_owned()));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt on; pass --password-stdin and pipe the password");
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Repeat password: ")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(SecretString::from(first))
}

fn explain(e: AuthError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

async fn user(cmd: UserCommand, settings: &Settings) -> anyhow::Result<()> {
    let auth = open_service(settings, Arc::new(SystemClock)).await?;
    match cmd {
        UserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let pw = read_password(password_stdin)?;
            let u = auth.create_user(&name, pw, &role).await.map_err(explain)?;
            println!("created user {} ({})", u.username, u.id);
        }
        UserCommand::List => {
            // Read before printing anything: a store that fails leaves no half table behind.
            let users = auth.list_users().await.map_err(explain)?;
            println!(
                "{:<32} {:<36} {:<20} {:<8} created",
                "username", "id", "roles", "state"
            );
            for u in users {
                println!(
                    "{:<32} {:<36} {:<20} {:<8} {}",
                    u.username,
                    u.id,
                    u.roles.to_csv(),
                    if u.disabled { "disabled" } else { "active" },
                    u.created_at
                );
            }
        }
        UserCommand::Import { file } => import(&auth, &file).await?,
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let u = auth.find_user(&name).await.map_err(explain)?;
            let pw = read_password(password_stdin)?;
            auth.reset_password(u.id, pw).await.map_err(explain)?;
            println!(
                "password of {} changed; their sessions are revoked",
                u.username
            );
        }
        UserCommand::Disable { name } => {
            let u = auth.find_user(&name).await.map_err(explain)?;
            let patch = UserPatch {
                disabled: Some(true),
                roles: None,
            };
            auth.update_user(u.id, patch).await.map_err(explain)?;
            println!("disabled {}; their sessions are revoked", u.username);
        }
        UserCommand::Enable { name } => {
            let u = auth.find_user(&name).await.map_err(explain)?;
            let patch = UserPatch {
                disabled: Some(false),
                roles: None,
            };
            auth.update_user(u.id, patch).await.map_err(explain)?;
            println!("enabled {}", u.username);
        }
        UserCommand::Delete { name } => {
            let u = auth.find_user(&name).await.map_err(explain)?;
            auth.delete_user(u.id).await.map_err(explain)?;
            println!("deleted {}; their sessions are revoked", u.username);
        }
    }
    Ok(())
}

async fn import(auth: &crate::service::Auth, file: &std::path::Path) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let (records, unreadable) = crate::import::parse(&text);
    let mut skipped = unreadable.len();
    for (line, why) in &unreadable {
        eprintln!("line {line}: skipped: {why}");
    }
    let mut imported = 0;
    for (line, r) in records {
        match auth
            .import_user(&r.username, &r.password_hash, &r.roles)
            .await
        {
            Ok(_) => imported += 1,
            Err(e @ (AuthError::Unavailable | AuthError::Unexpected(_))) => return Err(explain(e)),
            Err(e) => {
                let why = match e {
                    AuthError::UsernameTaken => "the user exists already".to_owned(),
                    other => other.to_string(),
                };
                eprintln!("line {line}: skipped {:?}: {why}", r.username);
                skipped += 1;
            }
        }
    }
    println!("imported {imported} users, skipped {skipped}");
    Ok(())
}

async fn keys(cmd: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    let auth = open_service(settings, Arc::new(SystemClock)).await?;
    if let KeysCommand::Rotate = cmd {
        let kid = auth.rotate_keys().await.map_err(explain)?;
        println!("new active key {kid}; servers pick it up within 10 s");
        return Ok(());
    }
    let ring = auth.key_ring().await.map_err(explain)?;
    for k in ring.iter().flat_map(|r| r.keys.iter().rev()) {
        let state = if k.retired_at.is_none() {
            "active"
        } else {
            "retired"
        };
        println!(
            "{} {} {} {}",
            k.kid,
            k.alg,
            state,
            Timestamp::from_millis(k.created_at)
        );
    }
    Ok(())
}
