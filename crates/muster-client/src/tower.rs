//! `tower` integration (feature `tower`): the watched instances of a query as
//! a [`tower::discover::Discover`] stream of `Change::Insert`/`Change::Remove`,
//! ready for `tower::balance::p2c::Balance`.
//!
//! The same stream feeds tonic's load-balanced channel: create it with
//! `let (channel, tx) = tonic::transport::Channel::balance_channel(16);`,
//! build a `tonic::transport::Endpoint` per instance in the `make` closure,
//! and forward each change, translated into tonic's own `Change` type
//! (`tonic::transport::channel::Change`, with the same `Insert(key,
//! endpoint)` and `Remove(key)` cases). `examples/tonic_balance.rs` runs
//! exactly that against two gRPC servers.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::StreamExt;
use muster_types::Instance;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use crate::discovery::Discovery;
use crate::error::{Error, Result};

/// The instances of a query as a stream of [`Change`]s keyed by instance id;
/// it implements [`tower::discover::Discover`]. See
/// [`Discovery::discover_services`].
///
/// Every instance of the first snapshot is inserted; afterwards a new or
/// changed instance (its `modify_index` moved) is inserted again and a
/// removed one removed. While the registry is unreachable the last set
/// stays as it is. The stream ends when the client is dropped.
pub struct ServiceDiscover<S> {
    inner: futures::stream::BoxStream<'static, Result<Change<String, S>>>,
}

impl<S> std::fmt::Debug for ServiceDiscover<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDiscover").finish_non_exhaustive()
    }
}

impl<S> Stream for ServiceDiscover<S> {
    type Item = Result<Change<String, S>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Discovery {
    /// The query's instances as a `tower` [`Discover`](tower::discover::Discover)
    /// stream; `make` turns an instance into the service that calls it (an
    /// HTTP client bound to its address, a tonic `Endpoint`, ...).
    ///
    /// Waits for the first snapshot, so a registry that cannot be reached is
    /// an error here rather than an empty balancer.
    pub async fn discover_services<S, F>(&self, mut make: F) -> Result<ServiceDiscover<S>>
    where
        F: FnMut(&Instance) -> S + Send + 'static,
        S: Send + 'static,
    {
        let watcher = self.watch().await?;
        let mut known: HashMap<String, u64> = HashMap::new();
        let stream = WatchStream::new(watcher.receiver()).flat_map(move |view| {
            let mut changes = Vec::new();
            if let Some(data) = view.data {
                known.retain(|id, _| {
                    let keep = data
                        .instances
                        .binary_search_by(|i| i.id.as_str().cmp(id))
                        .is_ok();
                    if !keep {
                        changes.push(Ok(Change::Remove(id.clone())));
                    }
                    keep
                });
                for inst in data.instances.iter() {
                    if known.get(inst.id.as_str()) != Some(&inst.modify_index) {
                        known.insert(inst.id.to_string(), inst.modify_index);
                        changes.push(Ok(Change::Insert(inst.id.to_string(), make(inst))));
                    }
                }
            }
            futures::stream::iter(changes)
        });
        Ok(ServiceDiscover {
            inner: stream.boxed(),
        })
    }
}
