//! Integration tests of the client against a real registry started
//! in-process on 127.0.0.1 (port 0, a fresh data directory each), and the
//! shared client spec (`spec`: `spec/client/*.toml` against a real
//! `muster agent` process).

mod balance;
mod checks;
mod discovery;
mod harness;
mod mux;
mod registration;
mod spec;
mod tracing;
