//! Metrics the use cases emit through the `metrics` facade. The facade is a thin API
//! crate with no I/O: with no recorder installed (the app's tests) every call is a
//! no-op; the binary installs the Prometheus recorder. Labels are bounded sets (a
//! connection type, an outcome class): never an id or a secret.

use std::time::Duration;

use latchkey_domain::oauth::TokenResponse;
use latchkey_domain::ConnectionType;
use latchkey_ports::OAuthError;

/// One refresh call to a provider: `latchkey_refresh_total{provider,outcome}` and
/// `latchkey_refresh_duration_seconds{provider}`.
pub(crate) fn refresh_call(
    kind: ConnectionType,
    result: &Result<TokenResponse, OAuthError>,
    took: Duration,
) {
    let outcome = match result {
        Ok(_) => "refreshed",
        Err(OAuthError::InvalidGrant(_)) => "invalid_grant",
        Err(OAuthError::InvalidClient { .. }) => "invalid_client",
        Err(OAuthError::Transient { .. }) => "transient",
        Err(OAuthError::Provider { .. }) => "provider_error",
        Err(OAuthError::Protocol(_)) => "protocol_error",
        Err(_) => "refused",
    };
    let provider = kind.as_str();
    metrics::counter!("latchkey_refresh_total", "provider" => provider, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("latchkey_refresh_duration_seconds", "provider" => provider)
        .record(took.as_secs_f64());
}
