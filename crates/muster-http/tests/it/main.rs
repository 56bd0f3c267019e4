//! Integration tests of the server: a real server on port 0, real sockets,
//! a real store with real fsync in a temporary directory.

mod acl;
mod api;
mod blocking;
mod checks;
mod edges;
mod harness;
mod leases;
mod limits;
mod openapi;
mod validation;
mod watch;
mod watch_many;
