//! What the tests tune in both programs, from the environment: `RUSTLS_GROUPS` (a comma list of
//! key-exchange group names as rustls prints them: `X25519MLKEM768`, `X25519`, `secp256r1`,
//! `secp384r1`) and `RUSTLS_TLS12=1` (TLS 1.2 only).

use rustls::crypto::CryptoProvider;

/// The provider with only the groups `RUSTLS_GROUPS` names, in its order.
pub fn groups(mut provider: CryptoProvider) -> Result<CryptoProvider, String> {
    let Ok(wanted) = std::env::var("RUSTLS_GROUPS") else {
        return Ok(provider);
    };
    let mut chosen = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let group = provider
            .kx_groups
            .iter()
            .find(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("RUSTLS_GROUPS: the provider has no group {name}"))?;
        chosen.push(*group);
    }
    provider.kx_groups = chosen;
    Ok(provider)
}

/// TLS 1.2 only with `RUSTLS_TLS12=1`, else rustls' defaults (1.3 and 1.2).
pub fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS12_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    match std::env::var("RUSTLS_TLS12").as_deref() {
        Ok("1") => &TLS12_ONLY,
        _ => rustls::DEFAULT_VERSIONS,
    }
}
