//! [`Api`]: one plain HTTP call per route of the registry's API v1, with
//! failover, retries and typed errors, but no caching and no background work.
//! The CLI is built on it; services usually want [`Client::register`] and
//! [`Client::discover`] instead.
//!
//! [`Client::register`]: crate::Client::register
//! [`Client::discover`]: crate::Client::discover

use std::sync::Arc;
use std::time::Duration;

use muster_types::acl::{
    CreatedToken, PoliciesResponse, Policy, PolicyRequest, TokenInfo, TokenRequest, TokensResponse,
};
use muster_types::{
    CreateLeaseRequest, Instance, InstancesResponse, LeaseInfo, QueryEvent, RegisterRequest,
    RenewManyRequest, RenewManyResponse, RenewResponse, ServicesResponse, WatchEvent, WatchQuery,
    WatchRequest, WriteResponse, format_duration,
};
use reqwest::Method;

use crate::error::Result;
use crate::query::Query;
use crate::sse::{QueryRead, Read, SseReader};
use crate::transport::{Req, Transport, json};

/// Plain calls to the registry's API v1, in the client's namespace.
#[derive(Clone)]
pub struct Api {
    pub(crate) transport: Arc<Transport>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("addrs", &self.transport.settings.addrs)
            .field("namespace", &self.transport.settings.namespace)
            .finish()
    }
}

/// The route of one instance, for spans and metrics.
const INSTANCE: &str = "/v1/services/{service}/instances/{id}";

fn instance_path(service: &str, id: &str) -> String {
    format!("/v1/services/{service}/instances/{id}")
}

impl Api {
    pub(crate) fn ns(&self) -> (&'static str, String) {
        ("namespace", self.transport.settings.namespace.clone())
    }

    /// `PUT /v1/services/{service}/instances/{id}`: registers or replaces an
    /// instance exactly as `body` says (persistent, own `ttl`, or `lease`).
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        body: &RegisterRequest,
    ) -> Result<Instance> {
        let path = instance_path(service, id);
        let q = [self.ns()];
        let resp = self
            .transport
            .send(
                Req::new(Method::PUT, INSTANCE)
                    .at(&path)
                    .query(&q)
                    .json(body),
            )
            .await?;
        json(resp).await
    }

    /// `DELETE /v1/services/{service}/instances/{id}`.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<WriteResponse> {
        let path = instance_path(service, id);
        let q = [self.ns()];
        let resp = self
            .transport
            .send(Req::new(Method::DELETE, INSTANCE).at(&path).query(&q))
            .await?;
        json(resp).await
    }

    /// `GET /v1/services/{service}/instances/{id}`.
    pub async fn instance(&self, service: &str, id: &str) -> Result<Instance> {
        let path = instance_path(service, id);
        let q = [self.ns()];
        let resp = self
            .transport
            .send(Req::new(Method::GET, INSTANCE).at(&path).query(&q))
            .await?;
        json(resp).await
    }

    /// `GET /v1/services/{service}/instances`: one discovery query, straight
    /// from the registry (no cache).
    pub async fn instances(&self, query: &Query) -> Result<InstancesResponse> {
        let path = format!("/v1/services/{}/instances", query.service());
        let mut q = vec![self.ns()];
        q.extend(query.pairs());
        let resp = self
            .transport
            .send(
                Req::new(Method::GET, "/v1/services/{service}/instances")
                    .at(&path)
                    .query(&q),
            )
            .await?;
        json(resp).await
    }

    /// `GET /v1/services`: services of the namespace with their counts.
    pub async fn services(&self) -> Result<ServicesResponse> {
        let q = [self.ns()];
        let resp = self
            .transport
            .send(Req::new(Method::GET, "/v1/services").query(&q))
            .await?;
        json(resp).await
    }

    /// `GET /v1/cluster`: the node's view of the cluster and its members.
    pub async fn cluster(&self) -> Result<muster_types::ClusterInfo> {
        let resp = self
            .transport
            .send(Req::new(Method::GET, "/v1/cluster"))
            .await?;
        json(resp).await
    }

    /// `POST /v1/cluster/members`: adds node `id` (running with `--join`
    /// at `cluster_addr`) as a voter, once it caught up as a learner.
    pub async fn join_member(
        &self,
        id: u64,
        cluster_addr: &str,
    ) -> Result<muster_types::ClusterInfo> {
        let body = muster_types::JoinRequest {
            id,
            cluster_addr: cluster_addr.to_string(),
        };
        let resp = self
            .transport
            .send(Req::new(Method::POST, "/v1/cluster/members").json(&body))
            .await?;
        json(resp).await
    }

    /// `DELETE /v1/cluster/members/{id}`: removes node `id`; its id is
    /// never accepted again.
    pub async fn remove_member(&self, id: u64) -> Result<muster_types::ClusterInfo> {
        let path = format!("/v1/cluster/members/{id}");
        let resp = self
            .transport
            .send(Req::new(Method::DELETE, "/v1/cluster/members/{id}").at(&path))
            .await?;
        json(resp).await
    }

    /// `POST /v1/cluster/transfer-leader`: moves leadership to `to`, or to
    /// the most up-to-date other voter.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<muster_types::ClusterInfo> {
        let body = muster_types::TransferLeaderRequest { to };
        let resp = self
            .transport
            .send(Req::new(Method::POST, "/v1/cluster/transfer-leader").json(&body))
            .await?;
        json(resp).await
    }

    /// `POST /v1/acl/bootstrap`: the first management token, once ever
    /// (its secret is shown only in this answer).
    pub async fn acl_bootstrap(&self) -> Result<CreatedToken> {
        let resp = self
            .transport
            .send(Req::new(Method::POST, "/v1/acl/bootstrap"))
            .await?;
        json(resp).await
    }

    /// `POST /v1/acl/tokens`: a new token carrying `req.policies` (its
    /// secret is shown only in this answer).
    pub async fn acl_create_token(&self, req: &TokenRequest) -> Result<CreatedToken> {
        let resp = self
            .transport
            .send(Req::new(Method::POST, "/v1/acl/tokens").json(req))
            .await?;
        json(resp).await
    }

    /// `GET /v1/acl/tokens`: every token (never a secret).
    pub async fn acl_tokens(&self) -> Result<TokensResponse> {
        let resp = self
            .transport
            .send(Req::new(Method::GET, "/v1/acl/tokens"))
            .await?;
        json(resp).await
    }

    /// `GET /v1/acl/tokens/{accessor}`, or `GET /v1/acl/token/self` for
    /// `None`: the token presented.
    pub async fn acl_token(&self, accessor: Option<&str>) -> Result<TokenInfo> {
        let resp = match accessor {
            None => {
                self.transport
                    .send(Req::new(Method::GET, "/v1/acl/token/self"))
                    .await?
            }
            Some(a) => {
                let path = format!("/v1/acl/tokens/{a}");
                self.transport
                    .send(Req::new(Method::GET, "/v1/acl/tokens/{accessor}").at(&path))
                    .await?
            }
        };
        json(resp).await
    }

    /// `PUT /v1/acl/tokens/{accessor}`: a token's new description and
    /// policies (`anonymous`: what callers without a token may do).
    pub async fn acl_update_token(&self, accessor: &str, req: &TokenRequest) -> Result<TokenInfo> {
        let path = format!("/v1/acl/tokens/{accessor}");
        let resp = self
            .transport
            .send(
                Req::new(Method::PUT, "/v1/acl/tokens/{accessor}")
                    .at(&path)
                    .json(req),
            )
            .await?;
        json(resp).await
    }

    /// `DELETE /v1/acl/tokens/{accessor}`: revokes a token.
    pub async fn acl_revoke_token(&self, accessor: &str) -> Result<()> {
        let path = format!("/v1/acl/tokens/{accessor}");
        self.transport
            .send(Req::new(Method::DELETE, "/v1/acl/tokens/{accessor}").at(&path))
            .await?;
        Ok(())
    }

    /// `GET /v1/acl/policies`: every policy.
    pub async fn acl_policies(&self) -> Result<PoliciesResponse> {
        let resp = self
            .transport
            .send(Req::new(Method::GET, "/v1/acl/policies"))
            .await?;
        json(resp).await
    }

    /// `GET /v1/acl/policies/{name}`: one policy.
    pub async fn acl_policy(&self, name: &str) -> Result<Policy> {
        let path = format!("/v1/acl/policies/{name}");
        let resp = self
            .transport
            .send(Req::new(Method::GET, "/v1/acl/policies/{name}").at(&path))
            .await?;
        json(resp).await
    }

    /// `PUT /v1/acl/policies/{name}`: creates or replaces a policy.
    pub async fn acl_put_policy(&self, name: &str, req: &PolicyRequest) -> Result<Policy> {
        let path = format!("/v1/acl/policies/{name}");
        let resp = self
            .transport
            .send(
                Req::new(Method::PUT, "/v1/acl/policies/{name}")
                    .at(&path)
                    .json(req),
            )
            .await?;
        json(resp).await
    }

    /// `DELETE /v1/acl/policies/{name}`: deletes a policy.
    pub async fn acl_delete_policy(&self, name: &str) -> Result<()> {
        let path = format!("/v1/acl/policies/{name}");
        self.transport
            .send(Req::new(Method::DELETE, "/v1/acl/policies/{name}").at(&path))
            .await?;
        Ok(())
    }

    /// `POST /v1/leases`: a new lease with this TTL (1 s to 1 h).
    pub async fn create_lease(&self, ttl: Duration) -> Result<LeaseInfo> {
        let body = CreateLeaseRequest {
            ttl: format_duration(ttl),
        };
        let resp = self
            .transport
            .send(Req::new(Method::POST, "/v1/leases").json(&body))
            .await?;
        json(resp).await
    }

    /// `PUT /v1/leases/{id}/renew`. An unknown lease is an [`Error::Api`](crate::Error::Api)
    /// for which [`Error::is_lease_not_found`](crate::Error::is_lease_not_found) holds.
    pub async fn renew_lease(&self, id: &str) -> Result<RenewResponse> {
        let path = format!("/v1/leases/{id}/renew");
        let resp = self
            .transport
            .send(Req::new(Method::PUT, "/v1/leases/{id}/renew").at(&path))
            .await?;
        json(resp).await
    }

    /// `POST /v1/leases/renew`: renews many leases in one request.
    pub async fn renew_leases(&self, ids: Vec<String>) -> Result<RenewManyResponse> {
        let body = RenewManyRequest { ids };
        let resp = self
            .transport
            .send(Req::new(Method::POST, "/v1/leases/renew").json(&body))
            .await?;
        json(resp).await
    }

    /// `DELETE /v1/leases/{id}`: revokes a lease and removes every instance
    /// attached to it, in one write.
    pub async fn revoke_lease(&self, id: &str) -> Result<WriteResponse> {
        let path = format!("/v1/leases/{id}");
        let resp = self
            .transport
            .send(Req::new(Method::DELETE, "/v1/leases/{id}").at(&path))
            .await?;
        json(resp).await
    }

    /// `GET /v1/watch`: opens one Server-Sent Events stream of the query's
    /// changes — a snapshot, then deltas — resuming after `last_event_id`
    /// when given. It does not reconnect by itself; the cache behind
    /// [`Client::discover`](crate::Client::discover) does.
    pub async fn watch(&self, query: &Query, last_event_id: Option<u64>) -> Result<WatchEvents> {
        let mut q = vec![("service", query.service().to_string()), self.ns()];
        q.extend(query.pairs());
        let mut req = Req::new(Method::GET, "/v1/watch").query(&q);
        req.last_event_id = last_event_id;
        req.streaming = true;
        let resp = self.transport.send(req).await?;
        Ok(WatchEvents {
            reader: SseReader::new(resp),
            last_event_id,
        })
    }
}

impl Api {
    /// `POST /v1/watch`: opens one Server-Sent Events stream carrying many
    /// queries, each named by its `id` and resumed from its own `index`
    /// when given. Queries without a namespace are in the client's. It does
    /// not reconnect by itself, and tries each registry address once (no
    /// retry passes: reconnecting is the caller's loop); the cache behind
    /// [`Client::discover`](crate::Client::discover) does, sharing one such
    /// stream among all lookups of a client.
    pub async fn watch_many(&self, queries: Vec<WatchQuery>) -> Result<QueryEvents> {
        let q = [self.ns()];
        let mut req = Req::new(Method::POST, "/v1/watch")
            .query(&q)
            .json(&WatchRequest { queries });
        req.streaming = true;
        // Its one caller, the cache, reconnects on its own schedule.
        req.single_pass = true;
        let resp = self.transport.send(req).await?;
        Ok(QueryEvents {
            reader: SseReader::new(resp),
        })
    }
}

/// An open multiplexed watch; see [`Api::watch_many`].
pub struct QueryEvents {
    reader: SseReader,
}

impl std::fmt::Debug for QueryEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEvents").finish_non_exhaustive()
    }
}

impl QueryEvents {
    /// The next event, skipping keep-alives; `Ok(None)` when the registry
    /// closed the stream (reopen it, each query resuming from the `index`
    /// of its last event).
    pub async fn next(&mut self) -> Result<Option<QueryEvent>> {
        loop {
            match self.reader.next_query_event().await? {
                QueryRead::Event(e) => return Ok(Some(*e)),
                QueryRead::KeepAlive => continue,
                QueryRead::End => return Ok(None),
            }
        }
    }

    /// The next read, keep-alives included (they prove the stream alive).
    pub(crate) async fn next_read(&mut self) -> Result<QueryRead> {
        self.reader.next_query_event().await
    }
}

/// An open watch stream; see [`Api::watch`].
pub struct WatchEvents {
    reader: SseReader,
    last_event_id: Option<u64>,
}

impl std::fmt::Debug for WatchEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchEvents")
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

impl WatchEvents {
    /// The next event, skipping keep-alives; `Ok(None)` when the registry
    /// closed the stream (reconnect with [`WatchEvents::last_event_id`]).
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        loop {
            match self.next_read().await? {
                Read::Event(frame) => return Ok(Some(frame.event)),
                Read::KeepAlive => continue,
                Read::End => return Ok(None),
            }
        }
    }

    /// The index of the last event received (what to resume after).
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_event_id
    }

    pub(crate) async fn next_read(&mut self) -> Result<Read> {
        let read = self.reader.next().await?;
        if let Read::Event(frame) = &read {
            self.last_event_id = Some(frame.id.unwrap_or_else(|| frame.event.index()));
        }
        Ok(read)
    }
}
