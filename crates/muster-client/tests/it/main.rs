//! Integration tests of the client against a real registry started
//! in-process on 127.0.0.1 (port 0, a fresh data directory each).

mod balance;
mod checks;
mod discovery;
mod harness;
mod mux;
mod registration;
