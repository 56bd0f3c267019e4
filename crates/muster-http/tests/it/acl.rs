//! ACL tokens and policies: an authorisation matrix over the routes, for
//! every kind of caller, against a real server run with `acl = true`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Sse, TestServer};

/// Requests as one caller: a token in `Authorization: Bearer` (or none).
struct As {
    http: reqwest::Client,
    base: String,
}

impl As {
    fn new(s: &TestServer, token: Option<&str>) -> As {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        As {
            http: reqwest::Client::builder()
                .no_proxy()
                .default_headers(headers)
                .build()
                .unwrap(),
            base: s.base.clone(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

fn instance() -> Value {
    json!({"address": "10.0.0.1", "port": 80})
}

fn ids(v: &Value) -> Vec<String> {
    v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn names(v: &Value) -> Vec<String> {
    v["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn token(mgmt: &As, policies: &[&str], expires_in: Option<&str>) -> (String, String) {
    let mut body = json!({"policies": policies, "description": "matrix"});
    if let Some(e) = expires_in {
        body["expires_in"] = json!(e);
    }
    let (status, t) = mgmt.post("/v1/acl/tokens", body).await;
    assert_eq!(status, 201, "{t}");
    (
        t["secret"].as_str().unwrap().to_string(),
        t["accessor"].as_str().unwrap().to_string(),
    )
}

/// What one caller gets from every probe.
#[derive(Debug, PartialEq)]
struct Answers {
    register_payments: u16,
    register_orders: u16,
    register_paybox: u16,
    heartbeat_payments: u16,
    deregister_orders: u16,
    discover_payments: (u16, Vec<String>),
    discover_orders: (u16, Vec<String>),
    services: (u16, Vec<String>),
    instance_orders: u16,
    create_lease: u16,
    cluster: u16,
    snapshot: u16,
    acl_tokens: u16,
    acl_policy_put: u16,
    watch_orders: Option<Vec<String>>,
}

async fn probe(s: &TestServer, who: &As, tag: &str) -> Answers {
    let reg = |svc: &str| format!("/v1/services/{svc}/instances/{tag}");
    let watch_orders = {
        let r = who
            .http
            .get(format!("{}/v1/watch?service=orders", who.base))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let mut w = Sse::from_response(r);
            let e = w.next().await;
            assert_eq!(e.event, "snapshot");
            Some(ids(&e.data))
        } else {
            None
        }
    };
    let _ = s;
    Answers {
        register_payments: who.put(&reg("payments"), instance()).await.0,
        register_orders: who.put(&reg("orders"), instance()).await.0,
        register_paybox: who.put(&reg("paybox"), instance()).await.0,
        heartbeat_payments: who
            .put("/v1/services/payments/instances/p0/heartbeat", json!({}))
            .await
            .0,
        // o-gone does not exist: a caller allowed to write gets 404, one
        // that is not gets 403 without learning that.
        deregister_orders: who.delete("/v1/services/orders/instances/o-gone").await.0,
        discover_payments: {
            let (st, v) = who.get("/v1/services/payments/instances?health=any").await;
            (st, ids(&v).into_iter().filter(|i| i == "p0").collect())
        },
        discover_orders: {
            let (st, v) = who.get("/v1/services/orders/instances").await;
            (st, ids(&v).into_iter().filter(|i| i == "o0").collect())
        },
        services: {
            let (st, v) = who.get("/v1/services").await;
            (st, names(&v))
        },
        instance_orders: who.get("/v1/services/orders/instances/o0").await.0,
        create_lease: who.post("/v1/leases", json!({"ttl": "30s"})).await.0,
        cluster: who.get("/v1/cluster").await.0,
        snapshot: who
            .http
            .get(format!("{}/v1/snapshot", who.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        acl_tokens: who.get("/v1/acl/tokens").await.0,
        acl_policy_put: who
            .put("/v1/acl/policies/scratch", json!({"operator": true}))
            .await
            .0,
        watch_orders,
    }
}

#[allow(clippy::too_many_arguments)]
fn expect(
    write: [u16; 3],
    heartbeat: u16,
    deregister: u16,
    see_payments: bool,
    see_orders: bool,
    services: &[&str],
    lease: u16,
    operator: u16,
    acl: u16,
) -> Answers {
    let seen = |yes: bool, id: &str| (200, if yes { vec![id.to_string()] } else { vec![] });
    Answers {
        register_payments: write[0],
        register_orders: write[1],
        register_paybox: write[2],
        heartbeat_payments: heartbeat,
        deregister_orders: deregister,
        discover_payments: seen(see_payments, "p0"),
        discover_orders: seen(see_orders, "o0"),
        services: (200, services.iter().map(|s| s.to_string()).collect()),
        instance_orders: if see_orders { 200 } else { 404 },
        create_lease: lease,
        // Cluster status is open (as Consul's status endpoints).
        cluster: 200,
        snapshot: operator,
        acl_tokens: acl,
        acl_policy_put: acl,
        watch_orders: Some(if see_orders {
            vec!["o0".into()]
        } else {
            vec![]
        }),
    }
}

/// Every answer of a token the registry does not accept (expired, revoked).
fn refused() -> Answers {
    Answers {
        register_payments: 401,
        register_orders: 401,
        register_paybox: 401,
        heartbeat_payments: 401,
        deregister_orders: 401,
        discover_payments: (401, vec![]),
        discover_orders: (401, vec![]),
        services: (401, vec![]),
        instance_orders: 401,
        create_lease: 401,
        cluster: 401,
        snapshot: 401,
        acl_tokens: 401,
        acl_policy_put: 401,
        watch_orders: None,
    }
}

/// What a caller may do, as the routes' expectations need it.
#[derive(Debug, Clone, Copy, Default)]
struct Caps {
    /// The token is accepted at all.
    valid: bool,
    write_payments: bool,
    write_orders: bool,
    /// Write on some service: leases.
    any_write: bool,
    operator: bool,
    acl: bool,
}

/// A server with ACLs on, data every probe looks for (`payments/p0` with a
/// TTL check `t`, `orders/o0`, `paybox/b0`, all on 60 s TTLs) and one
/// caller of each kind, with what it may do.
struct Matrix {
    s: TestServer,
    mgmt_secret: String,
    mgmt_accessor: String,
    callers: Vec<(&'static str, As, Caps)>,
    /// What `expect` builds the answers of the first probe set from.
    expected: Vec<Answers>,
}

async fn matrix() -> Matrix {
    let s = TestServer::start_with(|c| c.acl = true).await;
    let anon = As::new(&s, None);
    // Default deny: nothing before bootstrap, not even a read.
    assert_eq!(
        anon.put("/v1/services/payments/instances/x", instance())
            .await
            .0,
        403
    );
    let (st, boot) = anon.post("/v1/acl/bootstrap", json!(null)).await;
    assert_eq!(st, 200, "{boot}");
    assert_eq!(anon.post("/v1/acl/bootstrap", json!(null)).await.0, 409);
    let mgmt_secret = boot["secret"].as_str().unwrap().to_string();
    let mgmt_accessor = boot["accessor"].as_str().unwrap().to_string();
    let mgmt = As::new(&s, Some(&mgmt_secret));

    for (name, rules) in [
        (
            "payments-read",
            json!([{"namespace": "default", "service": "payments", "access": "read"}]),
        ),
        (
            "payments-write",
            json!([{"namespace": "default", "service": "payments", "access": "write"}]),
        ),
        (
            "pay-write",
            json!([{"namespace": "default", "service": "pay*", "access": "write"}]),
        ),
    ] {
        let (st, p) = mgmt
            .put(
                &format!("/v1/acl/policies/{name}"),
                json!({"services": rules}),
            )
            .await;
        assert_eq!(st, 200, "{p}");
    }
    assert_eq!(
        mgmt.put("/v1/acl/policies/ops", json!({"operator": true}))
            .await
            .0,
        200
    );
    // A token naming a policy that does not exist is refused, naming it.
    let (st, e) = mgmt
        .post("/v1/acl/tokens", json!({"policies": ["nope"]}))
        .await;
    assert_eq!(
        (st, e["error"]["field"].as_str()),
        (400, Some("policies[0]"))
    );

    // The data every probe looks for.
    for (svc, id) in [("payments", "p0"), ("orders", "o0"), ("paybox", "b0")] {
        let mut body = instance();
        body["ttl"] = json!("60s");
        if svc == "payments" {
            body["checks"] = json!([{"id": "t", "ttl": "60s"}]);
        }
        let (st, v) = mgmt
            .put(&format!("/v1/services/{svc}/instances/{id}"), body)
            .await;
        assert_eq!(st, 200, "{v}");
    }

    let (read, _) = token(&mgmt, &["payments-read"], None).await;
    let (write, _) = token(&mgmt, &["payments-write"], None).await;
    let (prefix, _) = token(&mgmt, &["pay-write"], None).await;
    let (ops, _) = token(&mgmt, &["ops"], None).await;
    let (revoked, revoked_accessor) = token(&mgmt, &["pay-write"], None).await;
    let (expired, expired_accessor) = token(&mgmt, &["pay-write"], Some("1ms")).await;
    let (st, t) = mgmt
        .get(&format!("/v1/acl/tokens/{expired_accessor}"))
        .await;
    assert_eq!(st, 200);
    // The token expires on the wall clock, which the server reads: let it
    // pass the expiry (one sleep of exactly what is left, not a poll).
    let expires = UNIX_EPOCH + Duration::from_millis(t["expires_ms"].as_u64().unwrap() + 1);
    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!(
        mgmt.delete(&format!("/v1/acl/tokens/{revoked_accessor}"))
            .await
            .0,
        204
    );

    let caps = |write_payments, write_orders, operator, acl| Caps {
        valid: true,
        write_payments,
        write_orders,
        any_write: write_payments || write_orders,
        operator,
        acl,
    };
    let callers = vec![
        (
            "anonymous",
            As::new(&s, None),
            caps(false, false, false, false),
        ),
        (
            "read payments",
            As::new(&s, Some(&read)),
            caps(false, false, false, false),
        ),
        (
            "write payments",
            As::new(&s, Some(&write)),
            caps(true, false, false, false),
        ),
        (
            "write pay*",
            As::new(&s, Some(&prefix)),
            caps(true, false, false, false),
        ),
        (
            "operator",
            As::new(&s, Some(&ops)),
            caps(false, false, true, false),
        ),
        ("management", mgmt, caps(true, true, true, true)),
        ("expired", As::new(&s, Some(&expired)), Caps::default()),
        ("revoked", As::new(&s, Some(&revoked)), Caps::default()),
        ("unknown", As::new(&s, Some("not-a-token")), Caps::default()),
    ];
    let expected = vec![
        expect([403, 403, 403], 403, 403, false, false, &[], 403, 403, 403),
        expect(
            [403, 403, 403],
            403,
            403,
            true,
            false,
            &["payments"],
            403,
            403,
            403,
        ),
        expect(
            [200, 403, 403],
            200,
            403,
            true,
            false,
            &["payments"],
            201,
            403,
            403,
        ),
        expect(
            [200, 403, 200],
            200,
            403,
            true,
            false,
            &["paybox", "payments"],
            201,
            403,
            403,
        ),
        expect([403, 403, 403], 403, 403, false, false, &[], 403, 200, 403),
        expect(
            [200, 200, 200],
            200,
            404,
            true,
            true,
            &["orders", "paybox", "payments"],
            201,
            200,
            200,
        ),
        refused(),
        refused(),
        refused(),
    ];
    Matrix {
        s,
        mgmt_secret,
        mgmt_accessor,
        callers,
        expected,
    }
}

#[tokio::test]
async fn every_caller_gets_exactly_what_its_policies_grant_on_every_route() {
    let m = matrix().await;
    let s = &m.s;
    for (i, ((who, caller, _), want)) in m.callers.iter().zip(&m.expected).enumerate() {
        let got = probe(s, caller, &format!("m{i}")).await;
        assert_eq!(&got, want, "caller {who}");
    }

    // The 403 names the missing right and nothing else.
    let w = &m.callers[2].1;
    let (st, e) = w.put("/v1/services/orders/instances/z", instance()).await;
    assert_eq!(st, 403);
    assert_eq!(e["error"]["code"], "permission_denied");
    assert_eq!(
        e["error"]["message"],
        "permission denied: this needs write on service \"orders\" in namespace \"default\""
    );
    // A malformed Authorization is refused, not taken as anonymous.
    let r = s
        .http
        .get(s.url("/v1/services"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"muster\"");
    m.s.stop().await;
}

/// The routes the first probe set leaves out, each with the right it
/// needs: checks, maintenance, leases, the multiplexed watch, blocking
/// queries, membership, restore, and the ACL routes themselves.
#[tokio::test]
async fn the_other_routes_need_exactly_the_right_they_name() {
    let m = matrix().await;
    let mgmt = &m.callers[5].1;
    let (st, lease) = mgmt.post("/v1/leases", json!({"ttl": "60s"})).await;
    assert_eq!(st, 201);
    let lease = lease["id"].as_str().unwrap().to_string();
    let (_, o) = mgmt.get("/v1/services/orders/instances").await;
    assert_eq!(ids(&o), vec!["o0"]);

    for (i, (who, caller, caps)) in m.callers.iter().enumerate() {
        let gate = |allowed: bool, ok: u16| {
            if !caps.valid {
                401
            } else if allowed {
                ok
            } else {
                403
            }
        };
        let c = format!("c{i}");
        let pay = "/v1/services/payments/instances/p0";
        let mut got = Vec::new();
        let mut want = Vec::new();
        let mut check = |name: &str, status: u16, expected: u16| {
            got.push((name.to_string(), status));
            want.push((name.to_string(), expected));
        };
        check(
            "put check",
            caller
                .put(&format!("{pay}/checks/{c}"), json!({"ttl": "60s"}))
                .await
                .0,
            gate(caps.write_payments, 200),
        );
        check(
            "delete check",
            caller.delete(&format!("{pay}/checks/{c}")).await.0,
            gate(caps.write_payments, 200),
        );
        check(
            "report check",
            caller
                .put(&format!("{pay}/checks/t/pass"), json!({}))
                .await
                .0,
            gate(caps.write_payments, 204),
        );
        check(
            "maintenance",
            caller
                .put(&format!("{pay}/maintenance"), json!({"enabled": false}))
                .await
                .0,
            gate(caps.write_payments, 200),
        );
        check(
            "put check on orders",
            caller
                .put(
                    &format!("/v1/services/orders/instances/o0/checks/{c}"),
                    json!({"ttl": "60s"}),
                )
                .await
                .0,
            gate(caps.write_orders, 200),
        );
        check(
            "get lease",
            caller.get(&format!("/v1/leases/{lease}")).await.0,
            gate(caps.any_write, 200),
        );
        check(
            "renew lease",
            caller
                .put(&format!("/v1/leases/{lease}/renew"), json!({}))
                .await
                .0,
            gate(caps.any_write, 200),
        );
        check(
            "renew leases",
            caller
                .post("/v1/leases/renew", json!({"ids": [lease]}))
                .await
                .0,
            gate(caps.any_write, 200),
        );
        check(
            "revoke an unknown lease",
            caller.delete("/v1/leases/00000000000000ff").await.0,
            gate(caps.any_write, 404),
        );
        // A blocking query on a service the caller may not read waits like
        // one on an unknown service, and answers it empty.
        let (st, v) = caller
            .get("/v1/services/orders/instances?index=0&wait=10ms&health=any")
            .await;
        check("blocking query on orders", st, gate(true, 200));
        if st == 200 {
            let want_ids: Vec<String> = if caps.write_orders {
                vec!["o0".into()]
            } else {
                vec![]
            };
            assert_eq!(ids(&v), want_ids, "{who}: blocking query on orders");
        }
        // The multiplexed watch filters per query.
        let r = caller
            .http
            .post(format!("{}/v1/watch", caller.base))
            .json(&json!({"queries": [{"id": "o", "service": "orders", "health": "any"}, {"id": "p", "service": "payments", "health": "any"}]}))
            .send()
            .await
            .unwrap();
        check("multiplexed watch", r.status().as_u16(), gate(true, 200));
        if r.status() == 200 {
            let mut w = Sse::from_response(r);
            let mut seen = std::collections::BTreeMap::new();
            while seen.len() < 2 {
                let e = w.next().await;
                seen.insert(
                    e.data["query"].as_str().unwrap_or_default().to_string(),
                    ids(&e.data),
                );
            }
            let orders: Vec<String> = if caps.write_orders {
                vec!["o0".into()]
            } else {
                vec![]
            };
            assert_eq!(
                seen["o"], orders,
                "{who}: orders over the multiplexed watch"
            );
        }
        check(
            "remove a member",
            caller.delete("/v1/cluster/members/99").await.0,
            // On a node without a cluster the change is refused as such.
            gate(caps.operator, 409),
        );
        let r = caller
            .http
            .post(format!("{}/v1/snapshot/restore", caller.base))
            .body("not a backup")
            .send()
            .await
            .unwrap();
        check("restore", r.status().as_u16(), gate(caps.operator, 400));
        check(
            "token self",
            caller.get("/v1/acl/token/self").await.0,
            gate(true, 200),
        );
        check(
            "get a token",
            caller
                .get(&format!("/v1/acl/tokens/{}", m.mgmt_accessor))
                .await
                .0,
            gate(caps.acl, 200),
        );
        check(
            "list policies",
            caller.get("/v1/acl/policies").await.0,
            gate(caps.acl, 200),
        );
        check(
            "get a policy",
            caller.get("/v1/acl/policies/ops").await.0,
            gate(caps.acl, 200),
        );
        check(
            "delete an unknown policy",
            caller.delete("/v1/acl/policies/none-such").await.0,
            gate(caps.acl, 404),
        );
        check(
            "revoke an unknown token",
            caller.delete("/v1/acl/tokens/none-such").await.0,
            gate(caps.acl, 404),
        );
        check(
            "update the anonymous token",
            caller
                .put("/v1/acl/tokens/anonymous", json!({"description": "x"}))
                .await
                .0,
            gate(caps.acl, 200),
        );
        check(
            "create a token",
            caller
                .post("/v1/acl/tokens", json!({"policies": []}))
                .await
                .0,
            gate(caps.acl, 201),
        );
        assert_eq!(got, want, "caller {who}");
    }
    assert!(!m.mgmt_secret.is_empty());
    m.s.stop().await;
}

#[tokio::test]
async fn anonymous_reads_are_granted_through_the_anonymous_token_and_acls_persist() {
    let s = TestServer::start_with(|c| c.acl = true).await;
    let anon = As::new(&s, None);
    let (_, boot) = anon.post("/v1/acl/bootstrap", json!(null)).await;
    let secret = boot["secret"].as_str().unwrap().to_string();
    let mgmt = As::new(&s, Some(&secret));
    mgmt.put(
        "/v1/acl/policies/public-read",
        json!({"services": [{"namespace": "*", "service": "*", "access": "read"}]}),
    )
    .await;
    mgmt.put("/v1/services/web/instances/w1", instance()).await;
    assert_eq!(
        ids(&anon.get("/v1/services/web/instances").await.1),
        Vec::<String>::new()
    );
    let (st, t) = mgmt
        .put(
            "/v1/acl/tokens/anonymous",
            json!({"policies": ["public-read"]}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(
        ids(&anon.get("/v1/services/web/instances").await.1),
        vec!["w1"]
    );
    assert_eq!(
        anon.put("/v1/services/web/instances/w2", instance())
            .await
            .0,
        403
    );
    assert_eq!(mgmt.delete("/v1/acl/tokens/anonymous").await.0, 400);
    // The list shows accessors, never a secret.
    let (_, list) = mgmt.get("/v1/acl/tokens").await;
    assert!(!list.to_string().contains(&secret), "{list}");

    // Tokens and policies are in the log and the snapshot: they survive a
    // restart.
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| c.acl = true).await;
    let anon = As::new(&s, None);
    let mgmt = As::new(&s, Some(&secret));
    assert_eq!(
        ids(&anon.get("/v1/services/web/instances").await.1),
        vec!["w1"]
    );
    assert_eq!(mgmt.get("/v1/acl/tokens").await.0, 200);
    let (st, me) = mgmt.get("/v1/acl/token/self").await;
    assert_eq!((st, me["management"].as_bool()), (200, Some(true)));
    s.stop().await;
}

#[tokio::test]
async fn without_acl_everything_is_open_and_acl_routes_say_how_to_enable_them() {
    let s = TestServer::start().await;
    let anon = As::new(&s, None);
    assert_eq!(
        anon.put("/v1/services/web/instances/w1", instance())
            .await
            .0,
        200
    );
    let (st, e) = anon.post("/v1/acl/bootstrap", json!(null)).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("acl_disabled"))
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("--acl"));
    s.stop().await;
}
