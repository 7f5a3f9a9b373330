//! The `fsemu` binary honours the command line of docs/CONTRACT.md and announces its ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts fsemu with `args` and returns it with its ESL address.
fn spawn(args: &[&str]) -> (Kill, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fsemu"))
        .args(["--sip", "127.0.0.1:0", "--esl", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fsemu runs");
    let stdout = child.stdout.take().unwrap();
    let guard = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("fsemu ready sip=127.0.0.1:"), "{line}");
    let esl = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("esl="))
        .unwrap()
        .to_owned();
    (guard, esl)
}

/// Logs in with `password` and returns everything up to the end of one `api status`.
fn status(esl: &str, password: &str) -> String {
    let mut s = TcpStream::connect(esl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(format!("auth {password}\n\napi status\n\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("Current Stack") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn fsemu_starts_with_the_contract_flags_and_serves_esl_with_the_given_password() {
    let (_guard, esl) = spawn(&[
        "--password",
        "s3cret",
        "--max-sessions",
        "12",
        "--hold",
        "2s",
        "--heartbeat",
        "250ms",
        "--answer-delay",
        "10ms",
        "--background-cpu",
        "20",
        "--channels-per-call",
        "2",
    ]);
    let text = status(&esl, "s3cret");
    assert!(text.contains("Reply-Text: +OK accepted\n"), "{text}");
    // Idle-CPU starts at 100 (the smoothing ring's initial fill) and only then falls.
    assert!(text.contains("12 session(s) max\nmin idle cpu 0.00/"), "{text}");
    assert!(text.contains("per Sec out of max 30, "), "{text}");
}

#[test]
fn fsemu_admission_flags_show_in_api_status() {
    let (_guard, esl) = spawn(&[
        "--sps",
        "7",
        "--min-idle-cpu",
        "12.5",
        "--background-cpu",
        "20",
        "--cpu-per-session",
        "0.5",
        "--idle-cpu-smoothing",
        "1",
        "--network-delay",
        "1ms",
    ]);
    // With a smoothing depth of 1 the first 1 s sample is the whole figure: 100 − 20.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = status(&esl, "ClueCon");
        if text.contains("/80.00\n") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains(" session(s) per Sec out of max 7, peak "), "{text}");
    assert!(text.contains("\nmin idle cpu 12.50/80.00\n"), "{text}");
}

#[test]
fn fsemu_keeps_the_old_sps_limit_spelling() {
    let (_guard, esl) = spawn(&["--sps-limit", "11"]);
    let text = status(&esl, "ClueCon");
    assert!(text.contains("per Sec out of max 11, "), "{text}");
}

#[test]
fn fsemu_rejects_a_malformed_duration() {
    let out = Command::new(env!("CARGO_BIN_EXE_fsemu"))
        .args([
            "--sip",
            "127.0.0.1:0",
            "--esl",
            "127.0.0.1:0",
            "--hold",
            "soon",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hold"));
}
