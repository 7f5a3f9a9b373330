//! The `fsemu` binary honours the command line of CONTRACT.md and announces its ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fsemu_starts_with_the_contract_flags_and_serves_esl_with_the_given_password() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fsemu"))
        .args([
            "--sip",
            "127.0.0.1:0",
            "--esl",
            "127.0.0.1:0",
            "--password",
            "s3cret",
            "--max-sessions",
            "12",
        ])
        .args([
            "--hold",
            "2s",
            "--heartbeat",
            "250ms",
            "--answer-delay",
            "10ms",
            "--background-cpu",
            "20",
        ])
        .args(["--channels-per-call", "2"])
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
        .unwrap();
    let mut s = TcpStream::connect(esl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"auth s3cret\n\napi status\n\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("Current Stack") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("Reply-Text: +OK accepted\n"), "{text}");
    assert!(
        text.contains("12 session(s) max\nmin idle cpu 0.00/80.00\n"),
        "{text}"
    );
    drop(guard);
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
