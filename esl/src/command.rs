//! Client-side command encoding (docs/ESL.md §1.3–2): each command is one line ended by a blank
//! line. Arguments are validated before encoding because the server cuts a command at the
//! first CR or LF, so a password or API argument holding one would smuggle in a second
//! command. Secrets never appear in `Debug` output.

use std::fmt;

/// Wire format for event delivery (`event <fmt> ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventFormat {
    Plain,
    Json,
    Xml,
}

impl EventFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            EventFormat::Plain => "plain",
            EventFormat::Json => "json",
            EventFormat::Xml => "xml",
        }
    }

    /// The Content-Type events of this format arrive with.
    pub fn content_type(self) -> &'static str {
        match self {
            EventFormat::Plain => "text/event-plain",
            EventFormat::Json => "text/event-json",
            EventFormat::Xml => "text/event-xml",
        }
    }

    /// Case-insensitive, as the server matches it.
    pub fn parse(token: &str) -> Option<EventFormat> {
        [EventFormat::Plain, EventFormat::Json, EventFormat::Xml]
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(token))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{field} contains byte 0x{byte:02X}; CR, LF and NUL would split or truncate the command")]
    ForbiddenByte { field: &'static str, byte: u8 },
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} must be a single token without spaces")]
    Whitespace { field: &'static str },
    #[error("the user name must not contain ':' (the server splits user and password there)")]
    UserContainsColon,
}

fn check_line(field: &'static str, value: &str) -> Result<(), CommandError> {
    if value.is_empty() {
        return Err(CommandError::Empty { field });
    }
    match value.bytes().find(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Some(byte) => Err(CommandError::ForbiddenByte { field, byte }),
        None => Ok(()),
    }
}

fn check_token(field: &'static str, value: &str) -> Result<(), CommandError> {
    check_line(field, value)?;
    if value.bytes().any(|b| b == b' ' || b == b'\t') {
        return Err(CommandError::Whitespace { field });
    }
    Ok(())
}

/// What the client authenticates with: `auth <password>`, or `userauth <user>:<password>`
/// where `user` is `name@domain`. Validated on construction so the handshake cannot fail
/// to encode later.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: Option<String>,
    password: String,
}

impl Credentials {
    /// Plain `auth`. The password is compared byte for byte, spaces included.
    pub fn password(password: impl Into<String>) -> Result<Credentials, CommandError> {
        let password = password.into();
        check_line("password", &password)?;
        Ok(Credentials { user: None, password })
    }

    /// `userauth`: `user` is `name@domain`.
    pub fn user(user: impl Into<String>, password: impl Into<String>) -> Result<Credentials, CommandError> {
        let (user, password) = (user.into(), password.into());
        check_token("user", &user)?;
        if user.contains(':') {
            return Err(CommandError::UserContainsColon);
        }
        check_line("password", &password)?;
        Ok(Credentials { user: Some(user), password })
    }

    pub fn user_name(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The command that presents these credentials.
    pub fn command(&self) -> Command {
        match &self.user {
            None => Command::Auth { password: self.password.clone() },
            Some(user) => Command::UserAuth { user: user.clone(), password: self.password.clone() },
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A command the client can send.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    Auth { password: String },
    UserAuth { user: String, password: String },
    /// `event <fmt> <NAME> ...`: subscriptions add up; the format applies to all events.
    Event { format: EventFormat, names: Vec<String> },
    NixEvent { names: Vec<String> },
    NoEvents,
    /// `api <command line>`: answered with an `api/response` frame instead of a reply.
    Api { command: String },
    /// `bgapi <command line>`, optionally with a client-chosen Job-UUID.
    BgApi { command: String, job_uuid: Option<String> },
    /// `filter <Header> <value>`.
    Filter { header: String, value: String },
    Exit,
}

/// Which kind of frame answers a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// `command/reply` with a `Reply-Text`.
    CommandReply,
    /// `api/response` with a body.
    ApiResponse,
}

impl Command {
    pub fn event(format: EventFormat, names: &[&str]) -> Command {
        Command::Event { format, names: names.iter().map(|s| (*s).to_owned()).collect() }
    }

    pub fn api(command: impl Into<String>) -> Command {
        Command::Api { command: command.into() }
    }

    pub fn reply_kind(&self) -> ReplyKind {
        match self {
            Command::Api { .. } => ReplyKind::ApiResponse,
            _ => ReplyKind::CommandReply,
        }
    }

    /// A short, secret-free description for logs and [`crate::ClientEvent`]s.
    pub fn label(&self) -> String {
        match self {
            Command::Auth { .. } => "auth".to_owned(),
            Command::UserAuth { user, .. } => format!("userauth {user}"),
            Command::Event { format, names } => format!("event {} {}", format.as_str(), names.join(" ")),
            Command::NixEvent { names } => format!("nixevent {}", names.join(" ")),
            Command::NoEvents => "noevents".to_owned(),
            Command::Api { command } => format!("api {command}"),
            Command::BgApi { command, .. } => format!("bgapi {command}"),
            Command::Filter { header, value } => format!("filter {header} {value}"),
            Command::Exit => "exit".to_owned(),
        }
    }

    /// The bytes to write, or why the arguments cannot be sent safely.
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        let names = |names: &[String]| -> Result<(), CommandError> {
            if names.is_empty() {
                return Err(CommandError::Empty { field: "event names" });
            }
            names.iter().try_for_each(|n| check_token("event name", n))
        };
        let text = match self {
            Command::Auth { password } => {
                check_line("password", password)?;
                format!("auth {password}\n\n")
            }
            Command::UserAuth { user, password } => {
                check_token("user", user)?;
                if user.contains(':') {
                    return Err(CommandError::UserContainsColon);
                }
                check_line("password", password)?;
                format!("userauth {user}:{password}\n\n")
            }
            Command::Event { format, names: n } => {
                names(n)?;
                format!("event {} {}\n\n", format.as_str(), n.join(" "))
            }
            Command::NixEvent { names: n } => {
                names(n)?;
                format!("nixevent {}\n\n", n.join(" "))
            }
            Command::NoEvents => "noevents\n\n".to_owned(),
            Command::Api { command } => {
                check_line("api command", command)?;
                format!("api {command}\n\n")
            }
            Command::BgApi { command, job_uuid } => {
                check_line("bgapi command", command)?;
                match job_uuid {
                    Some(uuid) => {
                        check_token("Job-UUID", uuid)?;
                        format!("bgapi {command}\nJob-UUID: {uuid}\n\n")
                    }
                    None => format!("bgapi {command}\n\n"),
                }
            }
            Command::Filter { header, value } => {
                check_token("filter header", header)?;
                check_line("filter value", value)?;
                format!("filter {header} {value}\n\n")
            }
            Command::Exit => "exit\n\n".to_owned(),
        };
        Ok(text.into_bytes())
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `label` never contains a password, so it doubles as the Debug form.
        write!(f, "Command({:?})", self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Command) -> String {
        String::from_utf8(c.encode().unwrap()).unwrap()
    }

    #[test]
    fn commands_encode_as_a_line_and_a_blank_line() {
        assert_eq!(enc(Command::Auth { password: "ClueCon".into() }), "auth ClueCon\n\n");
        assert_eq!(
            enc(Command::UserAuth { user: "1000@example.com".into(), password: "secret".into() }),
            "userauth 1000@example.com:secret\n\n"
        );
        assert_eq!(enc(Command::event(EventFormat::Json, &["HEARTBEAT"])), "event json HEARTBEAT\n\n");
        assert_eq!(
            enc(Command::event(EventFormat::Plain, &["HEARTBEAT", "BACKGROUND_JOB"])),
            "event plain HEARTBEAT BACKGROUND_JOB\n\n"
        );
        assert_eq!(enc(Command::NixEvent { names: vec!["HEARTBEAT".into()] }), "nixevent HEARTBEAT\n\n");
        assert_eq!(enc(Command::NoEvents), "noevents\n\n");
        assert_eq!(enc(Command::api("status")), "api status\n\n");
        assert_eq!(enc(Command::api("show calls count")), "api show calls count\n\n");
        assert_eq!(
            enc(Command::BgApi { command: "status".into(), job_uuid: Some("u-1".into()) }),
            "bgapi status\nJob-UUID: u-1\n\n"
        );
        assert_eq!(
            enc(Command::Filter { header: "Event-Name".into(), value: "HEARTBEAT".into() }),
            "filter Event-Name HEARTBEAT\n\n"
        );
        assert_eq!(enc(Command::Exit), "exit\n\n");
    }

    #[test]
    fn password_with_spaces_is_sent_verbatim() {
        assert_eq!(enc(Command::Auth { password: " a b ".into() }), "auth  a b \n\n");
    }

    #[test]
    fn password_with_newline_is_rejected_to_prevent_command_injection() {
        let e = Credentials::password("x\n\nevent plain ALL").unwrap_err();
        assert_eq!(e, CommandError::ForbiddenByte { field: "password", byte: b'\n' });
        assert!(Credentials::password("x\ry").is_err());
        assert!(Credentials::password("x\0y").is_err());
        assert!(Credentials::user("1000@d", "p\n").is_err());
        assert_eq!(
            Command::Auth { password: "a\r\n".into() }.encode(),
            Err(CommandError::ForbiddenByte { field: "password", byte: b'\r' })
        );
    }

    #[test]
    fn api_and_event_arguments_with_line_breaks_are_rejected() {
        assert!(Command::api("status\n\nexit").encode().is_err());
        assert!(Command::api("").encode().is_err());
        assert!(Command::event(EventFormat::Json, &[]).encode().is_err());
        assert_eq!(
            Command::event(EventFormat::Json, &["HEART BEAT"]).encode(),
            Err(CommandError::Whitespace { field: "event name" })
        );
        assert!(Command::event(EventFormat::Json, &["A\nB"]).encode().is_err());
    }

    #[test]
    fn user_name_with_colon_is_rejected() {
        assert_eq!(Credentials::user("a:b@d", "p"), Err(CommandError::UserContainsColon));
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let c = Credentials::user("1000@example.com", "hunter2").unwrap();
        let dbg = format!("{c:?} {:?} {:?}", c.command(), Credentials::password("hunter2").unwrap().command());
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("1000@example.com"));
    }
}
