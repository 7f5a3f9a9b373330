//! A second, independent ESL implementation (`freeswitch-esl-tokio`) talks to the emulator:
//! two parsers written by different people agree on the emulator's bytes.

mod common;

use std::time::Duration;

use common::emulator;
use freeswitch_esl_tokio::{EslClient, EslError, EslEventType, EventFormat};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn freeswitch_esl_tokio_authenticates_runs_api_status_and_receives_heartbeats_in_both_formats() {
    let emu = emulator(|c| c.heartbeat = Duration::from_millis(150));
    emu.set_reported(37, 1000, 87_633_333);
    let port = emu.esl_addr().port();
    runtime().block_on(async {
        for format in [EventFormat::Plain, EventFormat::Json] {
            let (client, mut events) = EslClient::connect("127.0.0.1", port, "ClueCon")
                .await
                .expect("auth accepted");
            let status = client.api("status").await.unwrap();
            let body = status.api_result().unwrap().to_owned();
            assert!(body.contains("37 session(s) - peak"), "{body}");
            assert!(body.contains("min idle cpu 0.00/87.63"), "{body}");
            let count = client.api("show calls count").await.unwrap();
            assert_eq!(count.body(), Some("\n37 total.\n"));

            client
                .subscribe_events(format, [EslEventType::Heartbeat])
                .await
                .unwrap();
            let event = tokio::time::timeout(Duration::from_secs(2), events.recv())
                .await
                .expect("a heartbeat within 2 s")
                .expect("stream open")
                .expect("event decodes");
            assert_eq!(
                event.event_type(),
                Some(EslEventType::Heartbeat),
                "{format:?}"
            );
            assert_eq!(event.header_str("Session-Count"), Some("37"));
            assert_eq!(event.header_str("Max-Sessions"), Some("1000"));
            assert_eq!(event.header_str("Idle-CPU"), Some("87.633333"));
            assert_eq!(
                event.header_str("Event-Info"),
                Some("System Ready"),
                "percent-decoded in plain"
            );
            assert_eq!(
                event.header_str("Core-UUID"),
                Some(emu.core_uuid().as_str())
            );
            client.exit().await.ok();
        }
    });
}

#[test]
fn freeswitch_esl_tokio_sees_a_wrong_password_as_an_authentication_failure() {
    let emu = emulator(|_| {});
    let port = emu.esl_addr().port();
    runtime().block_on(async {
        let r = EslClient::connect("127.0.0.1", port, "nope").await;
        assert!(
            matches!(r, Err(EslError::AuthenticationFailed { .. })),
            "{:?}",
            r.err()
        );
    });
}
