//! Where an ESL connection goes and what it authenticates with: [`EslUrl`] (host, port, optional
//! `userauth` user, password), the [`Secret`] that keeps a password out of every log line, and
//! FreeSWITCH's default port. The `fs://[user]:password@host[:port]` text form is parsed once, by
//! the control plane's config (`fsroute_controlplane::config`), which re-uses [`Secret`] and
//! [`DEFAULT_ESL_PORT`]; this crate only connects to what it is given.

use std::fmt;

use crate::command::{CommandError, Credentials};

/// FreeSWITCH's default event socket port.
pub const DEFAULT_ESL_PORT: u16 = 8021;

/// A string that must never be printed (an ESL password, an admin token, a branch secret):
/// `Debug` and `Display` show `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the places that need it (ESL `auth`, the admin token check).
    /// Named so that every use is easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// One FreeSWITCH box's event socket, as OpenSIPS's freeswitch module addresses it. The user,
/// when present, is `name@domain` and selects `userauth`. `Debug` and `Display` show only
/// `fs://host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct EslUrl {
    /// An IP literal (IPv6 without brackets) or a host name.
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Secret,
}

impl EslUrl {
    /// `auth <password>` at `host:port`.
    pub fn new(host: impl Into<String>, port: u16, password: Secret) -> EslUrl {
        EslUrl {
            host: host.into(),
            port,
            user: None,
            password,
        }
    }

    /// `fs://host:port`, safe for logs, `/status` and `check` output.
    pub fn display_masked(&self) -> String {
        if self.host.contains(':') {
            format!("fs://[{}]:{}", self.host, self.port)
        } else {
            format!("fs://{}:{}", self.host, self.port)
        }
    }

    /// The credentials to present, or why they cannot be sent (a CR, LF or NUL would split the
    /// command; a `userauth` user must be one token).
    pub fn credentials(&self) -> Result<Credentials, CommandError> {
        match &self.user {
            Some(u) => Credentials::user(u.clone(), self.password.expose()),
            None => Credentials::password(self.password.expose()),
        }
    }
}

impl fmt::Display for EslUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_masked())
    }
}

impl fmt::Debug for EslUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EslUrl({}, user: {:?})",
            self.display_masked(),
            self.user
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_never_shows_its_password_and_brackets_an_ipv6_host() {
        let u = EslUrl {
            user: Some("1000@example.com".into()),
            ..EslUrl::new("::1", 8023, Secret::new("ClueCon"))
        };
        for shown in [
            u.to_string(),
            format!("{u:?}"),
            u.display_masked(),
            format!("{:?}", u.password),
            u.password.to_string(),
        ] {
            assert!(!shown.contains("ClueCon"), "{shown}");
        }
        assert_eq!(u.to_string(), "fs://[::1]:8023");
        assert_eq!(
            EslUrl::new("127.0.0.1", DEFAULT_ESL_PORT, Secret::new("pw")).to_string(),
            "fs://127.0.0.1:8021"
        );
        assert!(matches!(
            u.credentials().unwrap().command(),
            crate::Command::UserAuth { .. }
        ));
    }

    #[test]
    fn credentials_that_would_split_the_auth_command_are_refused_without_echoing_them() {
        let e = EslUrl::new("h", 8021, Secret::new("hunter2\n"))
            .credentials()
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let spaced = EslUrl {
            user: Some("a b@example.com".into()),
            ..EslUrl::new("h", 8021, Secret::new("pw"))
        };
        assert!(spaced.credentials().is_err());
    }
}
