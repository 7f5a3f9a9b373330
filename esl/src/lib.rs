//! FreeSWITCH Event Socket (ESL): codec, client and emulator.
