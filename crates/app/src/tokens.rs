//! The one way tokens a provider issued get into a connection, shared by the consent
//! callback and the refresh: sealed here at their place (project, connection, field),
//! then handed to the aggregate ([`Connection::authorize`] or
//! [`Connection::refreshed`]), which decides what the grant becomes.

use chrono::{DateTime, Utc};

use latchkey_domain::oauth::TokenResponse;
use latchkey_domain::sealed::fields;
use latchkey_domain::{Connection, IssuedTokens, SealContext};

use crate::{AppError, Latchkey};

impl Latchkey {
    /// Where a token of connection `c` is sealed (`field`: access or refresh token).
    pub(crate) fn token_ctx(c: &Connection, field: &'static str) -> SealContext {
        SealContext::new(c.project_id.as_str(), c.id, field)
    }

    /// Seals the tokens of a token response for connection `c`. `sent_at` is when the
    /// token request was sent: the expiry counts from there.
    pub(crate) fn seal_issued(
        &self,
        c: &Connection,
        tokens: &TokenResponse,
        sent_at: DateTime<Utc>,
    ) -> Result<IssuedTokens, AppError> {
        let access_token = self.seal_str(
            &tokens.access_token,
            &Self::token_ctx(c, fields::ACCESS_TOKEN),
        )?;
        let refresh_token = tokens
            .refresh_token
            .as_ref()
            .map(|r| self.seal_str(r, &Self::token_ctx(c, fields::REFRESH_TOKEN)))
            .transpose()?;
        Ok(IssuedTokens {
            access_token,
            refresh_token,
            token_type: tokens.token_type.clone(),
            scopes: tokens.scopes.clone(),
            obtained_at: sent_at,
            expires_at: tokens.expires_at(sent_at),
        })
    }
}
