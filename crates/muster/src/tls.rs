//! `muster tls`: a development CA and the certificates it signs, so that
//! TLS can be turned on in two commands. ECDSA P-256 keys; private keys are
//! written readable by their owner only; no file is ever overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::cli::{TlsCaArgs, TlsCaCommand, TlsCertArgs, TlsCertCommand, TlsCommand};

/// Runs a `muster tls` command.
pub fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Ca {
            command: TlsCaCommand::Create(args),
        } => create_ca(&args),
        TlsCommand::Cert {
            command: TlsCertCommand::Create(args),
        } => create_cert(&args),
    }
}

/// Valid from an hour ago (clocks differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn create_ca(args: &TlsCaArgs) -> anyhow::Result<()> {
    let (cert_path, key_path) = (
        args.dir.join("muster-ca.pem"),
        args.dir.join("muster-ca-key.pem"),
    );
    refuse_existing(&[&cert_path, &key_path])?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "muster development CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, args.days)?;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params.self_signed(&key).context("cannot sign the CA")?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    println!(
        "wrote {} (trust it: --cacert, --tls-client-ca) and {} (keep it private)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

fn create_cert(args: &TlsCertArgs) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(|| {
        if args.server {
            "muster-server".into()
        } else {
            "muster-client".into()
        }
    });
    if name.is_empty() || name.contains(['/', '\\']) {
        bail!("--name {name:?} must be a plain file name");
    }
    let (cert_path, key_path) = (
        args.dir.join(format!("{name}.pem")),
        args.dir.join(format!("{name}-key.pem")),
    );
    refuse_existing(&[&cert_path, &key_path])?;
    let ca_pem = std::fs::read_to_string(&args.ca).with_context(|| {
        format!(
            "cannot read the CA certificate {} (create one with `muster tls ca create`)",
            args.ca.display()
        )
    })?;
    let ca_key_pem = std::fs::read_to_string(&args.ca_key)
        .with_context(|| format!("cannot read the CA key {}", args.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{} is not a PEM private key", args.ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{} is not a PEM certificate", args.ca.display()))?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if args.server {
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            // Cluster nodes are both: each connects to the others.
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let dns = if args.dns.is_empty() && args.ip.is_empty() {
            vec!["localhost".to_string()]
        } else {
            args.dns.clone()
        };
        let ips = if args.dns.is_empty() && args.ip.is_empty() {
            vec![
                std::net::IpAddr::from([127, 0, 0, 1]),
                std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ]
        } else {
            args.ip.clone()
        };
        for d in dns {
            let name = d
                .clone()
                .try_into()
                .with_context(|| format!("--dns {d:?} is not a DNS name"))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    validity(&mut params, args.days)?;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the certificate")?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    let san: Vec<String> = params
        .subject_alt_names
        .iter()
        .map(|s| match s {
            SanType::DnsName(d) => d.as_str().to_string(),
            SanType::IpAddress(ip) => ip.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    let what = if args.server {
        format!("server certificate for {}", san.join(", "))
    } else {
        format!("client certificate {name}")
    };
    println!(
        "wrote {} ({what}, signed by {}) and {}",
        cert_path.display(),
        args.ca.display(),
        key_path.display()
    );
    Ok(())
}

fn refuse_existing(paths: &[&PathBuf]) -> anyhow::Result<()> {
    for p in paths {
        if p.exists() {
            bail!(
                "{} exists: remove it or write elsewhere with --dir",
                p.display()
            );
        }
    }
    Ok(())
}

/// Writes a file that must not exist yet, synced; a key readable by its
/// owner only.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
