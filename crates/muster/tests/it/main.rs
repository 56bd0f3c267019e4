//! Tests of the real `muster` binary: durability across `kill -9`, lease
//! expiry in a real process, signals, configuration and the CLI.

mod acl;
mod agent;
mod checks;
mod cli;
mod cluster;
mod durability;
mod full_disk;
mod harness;
mod mtls;
mod tls;
