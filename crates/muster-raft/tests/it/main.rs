//! muster-raft's integration tests: the node API on real data
//! directories (`node`), and clusters of real nodes in this process under
//! seeded link faults (`partition`).

mod node;
mod partition;
