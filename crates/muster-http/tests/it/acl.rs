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
            let (st, v) = who.get("/v1/services/payments/instances").await;
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

#[tokio::test]
async fn every_caller_gets_exactly_what_its_policies_grant_on_every_route() {
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
    let mgmt = As::new(&s, Some(boot["secret"].as_str().unwrap()));

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
    // Wait for the wall clock to pass the expiry (what expiry is about).
    let expires = t["expires_ms"].as_u64().unwrap();
    while (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64)
        <= expires
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        mgmt.delete(&format!("/v1/acl/tokens/{revoked_accessor}"))
            .await
            .0,
        204
    );

    let everyone = [
        (
            "anonymous",
            As::new(&s, None),
            expect([403, 403, 403], 403, 403, false, false, &[], 403, 403, 403),
        ),
        (
            "read payments",
            As::new(&s, Some(&read)),
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
        ),
        (
            "write payments",
            As::new(&s, Some(&write)),
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
        ),
        (
            "write pay*",
            As::new(&s, Some(&prefix)),
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
        ),
        (
            "operator",
            As::new(&s, Some(&ops)),
            expect([403, 403, 403], 403, 403, false, false, &[], 403, 200, 403),
        ),
        (
            "management",
            mgmt,
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
        ),
        ("expired", As::new(&s, Some(&expired)), refused()),
        ("revoked", As::new(&s, Some(&revoked)), refused()),
        ("unknown", As::new(&s, Some("not-a-token")), refused()),
    ];
    for (i, (who, caller, want)) in everyone.iter().enumerate() {
        let got = probe(&s, caller, &format!("m{i}")).await;
        assert_eq!(&got, want, "caller {who}");
    }

    // The 403 names the missing right and nothing else.
    let w = As::new(&s, Some(&write));
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
    // X-Muster-Token works as well as Bearer.
    let r = s
        .http
        .get(s.url("/v1/services"))
        .header("x-muster-token", &read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(names(&r.json().await.unwrap()), vec!["payments"]);
    s.stop().await;
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
