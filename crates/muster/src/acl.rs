//! `muster acl`: bootstrap, tokens and policies, through the registry's API.

use anyhow::{Context, bail};
use muster_client::Client;
use muster_types::acl::{PolicyRequest, ServiceAccess, ServiceRule, TokenInfo, TokenRequest};

use crate::cli::{AclCommand, AclPolicyCommand, AclTokenCommand, Global};
use crate::output;

/// A rule from `--read/--write/--deny PATTERN`: `namespace/pattern`, or
/// `pattern` in `namespace`.
fn rule(pattern: &str, namespace: &str, access: ServiceAccess) -> ServiceRule {
    let (ns, svc) = pattern.split_once('/').unwrap_or((namespace, pattern));
    ServiceRule {
        namespace: ns.to_string(),
        service: svc.to_string(),
        access,
    }
}

fn when(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn print_token(t: &TokenInfo) {
    println!("accessor:    {}", t.accessor);
    if !t.description.is_empty() {
        println!("description: {}", t.description);
    }
    if t.management {
        println!("management:  yes (every right)");
    }
    println!(
        "policies:    {}",
        if t.policies.is_empty() {
            "-".to_string()
        } else {
            t.policies.join(", ")
        }
    );
    if t.created_ms > 0 {
        println!("created:     {}", when(t.created_ms));
    }
    if let Some(e) = t.expires_ms {
        println!("expires:     {}", when(e));
    }
}

/// Runs one `muster acl` command.
pub async fn run(client: &Client, g: &Global, cmd: AclCommand) -> anyhow::Result<()> {
    let api = client.api();
    match cmd {
        AclCommand::Bootstrap => {
            let t = api.acl_bootstrap().await?;
            if g.json {
                output::json(&t);
            } else {
                print_token(&t.token);
                println!("secret:      {}", t.secret);
                println!();
                println!(
                    "This is the only time the secret is shown: keep it safe. Use it with\n  \
                     export MUSTER_TOKEN=<secret>"
                );
            }
        }
        AclCommand::Token { command } => match command {
            AclTokenCommand::Create {
                policies,
                description,
                expires_in,
            } => {
                let req = TokenRequest {
                    description,
                    policies,
                    expires_in,
                };
                let t = api.acl_create_token(&req).await?;
                if g.json {
                    output::json(&t);
                } else {
                    print_token(&t.token);
                    println!("secret:      {}", t.secret);
                    println!();
                    println!("This is the only time the secret is shown: keep it safe.");
                }
            }
            AclTokenCommand::List => {
                let r = api.acl_tokens().await?;
                if g.json {
                    output::json(&r);
                } else {
                    println!(
                        "{:<36}  {:<28}  {:<20}  DESCRIPTION",
                        "ACCESSOR", "POLICIES", "EXPIRES"
                    );
                    for t in &r.tokens {
                        let policies = if t.management {
                            "(management)".to_string()
                        } else {
                            t.policies.join(",")
                        };
                        println!(
                            "{:<36}  {:<28}  {:<20}  {}",
                            t.accessor,
                            policies,
                            t.expires_ms.map_or("never".into(), when),
                            t.description
                        );
                    }
                }
            }
            AclTokenCommand::Show { accessor } => {
                let who = (accessor != "self").then_some(accessor.as_str());
                let t = api.acl_token(who).await?;
                if g.json {
                    output::json(&t);
                } else {
                    print_token(&t);
                }
            }
            AclTokenCommand::Update {
                accessor,
                policies,
                description,
            } => {
                let req = TokenRequest {
                    description,
                    policies,
                    expires_in: None,
                };
                let t = api.acl_update_token(&accessor, &req).await?;
                if g.json {
                    output::json(&t);
                } else {
                    print_token(&t);
                }
            }
            AclTokenCommand::Revoke { accessor } => {
                api.acl_revoke_token(&accessor).await?;
                if !g.json {
                    println!("revoked token {accessor}");
                }
            }
        },
        AclCommand::Policy { command } => match command {
            AclPolicyCommand::Create {
                name,
                read,
                write,
                deny,
                operator,
                acl,
                description,
            } => {
                let ns = g.namespace.as_str();
                let services: Vec<ServiceRule> = read
                    .iter()
                    .map(|p| rule(p, ns, ServiceAccess::Read))
                    .chain(write.iter().map(|p| rule(p, ns, ServiceAccess::Write)))
                    .chain(deny.iter().map(|p| rule(p, ns, ServiceAccess::Deny)))
                    .collect();
                if services.is_empty() && !operator && !acl {
                    bail!(
                        "policy {name:?} would grant nothing: give --read, --write, --deny, \
                         --operator or --acl"
                    );
                }
                let req = PolicyRequest {
                    description,
                    services,
                    operator,
                    acl,
                };
                let p = api.acl_put_policy(&name, &req).await?;
                if g.json {
                    output::json(&p);
                } else {
                    output::policy(&p);
                }
            }
            AclPolicyCommand::List => {
                let r = api.acl_policies().await?;
                if g.json {
                    output::json(&r);
                } else {
                    for p in &r.policies {
                        output::policy(p);
                        println!();
                    }
                }
            }
            AclPolicyCommand::Show { name } => {
                let p = api
                    .acl_policy(&name)
                    .await
                    .with_context(|| format!("policy {name}"))?;
                if g.json {
                    output::json(&p);
                } else {
                    output::policy(&p);
                }
            }
            AclPolicyCommand::Delete { name } => {
                api.acl_delete_policy(&name).await?;
                if !g.json {
                    println!("deleted policy {name}");
                }
            }
        },
    }
    Ok(())
}
