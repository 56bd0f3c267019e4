//! `muster`: the registry agent and the command-line client.
//!
//! The binary stays thin: `agent` reads the configuration and calls
//! [`muster_agent::run`]; the other commands are HTTP calls in [`client`].
#![forbid(unsafe_code)]

mod acl;
mod agent;
mod cli;
mod client;
mod output;
mod snapshot;
mod tls;

use clap::Parser;

/// mimalloc instead of the system allocator: registrations allocate and free
/// many small objects on two threads, and glibc's malloc took ~15 % of the
/// server's CPU under a registration load (fast-bin consolidation included).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // One TLS crypto provider for the whole process (HTTPS health checks and
    // clients); installing it here keeps rustls from guessing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            cli::Command::Agent(args) => agent::run(*args).await,
            cli::Command::Tls { command } => tls::run(command),
            cli::Command::Snapshot { command } => snapshot::run(&cli.global, command).await,
            other => client::run(cli.global, other).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            match e.downcast_ref::<muster_agent::AgentError>() {
                // EX_TEMPFAIL: restart me (a supervisor's cue).
                Some(muster_agent::AgentError::Restart(_)) => std::process::ExitCode::from(75),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose text
/// its parent already quotes is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
