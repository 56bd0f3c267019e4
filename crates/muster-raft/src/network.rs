//! Cluster RPC placeholder.
//!
//! muster runs as a single voter for now, which never sends a raft RPC.
//! [`NoPeers`] satisfies openraft's network traits by reporting every peer
//! unreachable. **Replace this module when cluster RPC (port 7701) lands.**

use std::io;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::TypeConfig;

/// A network factory for a cluster without peers: every RPC fails with
/// [`Unreachable`]. Placeholder until cluster RPC exists.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoPeers;

/// The "connection" to a peer made by [`NoPeers`].
#[derive(Debug)]
pub(crate) struct NoPeerClient {
    target: u64,
}

impl NoPeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        let err = io::Error::new(
            io::ErrorKind::NotConnected,
            format!(
                "cannot reach node {}: cluster RPC is not implemented yet (single-node mode)",
                self.target
            ),
        );
        RPCError::Unreachable(Unreachable::new(&err))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerClient;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        NoPeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}
