//! Fuzz target for the config loader (`controlplane::config::parse`): TOML syntax, shape,
//! validation and the error messages that name line, column and field, then, for a file that
//! validates, `fsroute check`'s summary and the routing-table build the running proxy does after
//! a load or a SIGHUP. A bad file must be rejected with errors, never a panic; and since errors and
//! the summary promise never to show an ESL password, a password planted in `fs://` URLs must not
//! come back out.
#![no_main]

use std::path::Path;

use fsroute_controlplane::config;
use fsroute_controlplane::state::{AdminState, CounterStore, Stats};
use fsroute_controlplane::table_builder::build_table;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "s3cr3t-fuzz";
/// The one form in which the seeds carry `SECRET`: as the password of an `fs://` URL.
const PLANTED: &str = "fs://fuzz:s3cr3t-fuzz@";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Only a secret that is still a password can be expected to stay hidden; TOML escapes could
    // spell it elsewhere without the planted form.
    let guard_secret = !text.contains('\\') && text.matches(SECRET).count() == text.matches(PLANTED).count();
    let shown = match config::parse(&text, Path::new("fuzz.toml")) {
        Ok(c) => {
            let t = build_table(&c, &Stats::default(), &AdminState::default(), &mut CounterStore::new(), 1);
            let _ = (t.routes.len(), t.known_destinations.len(), c.fs_endpoints().len());
            c.summary()
        }
        Err(errors) => {
            for e in &errors {
                let _ = (e.position(), e.field(), e.line());
            }
            errors.to_string()
        }
    };
    if guard_secret {
        assert!(!shown.contains(SECRET), "an ESL password was shown: {shown}");
    }
});
