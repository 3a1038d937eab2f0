//! Who is calling: the admin, or a project-scoped access key with scopes.

use base64::Engine as _;
use secrecy::SecretString;

use latchkey_domain::{hash_key_secret, AccessKey, AccessKeyId, ConnectionName, ProjectId, Scope};

use crate::{AppError, Latchkey};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `LATCHKEY_ADMIN_TOKEN`: every project, every scope.
    Admin,
    Key {
        id: AccessKeyId,
        project: ProjectId,
        scopes: Vec<Scope>,
    },
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Key { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Principal::Key { .. } => Err(AppError::Forbidden(format!(
                "this access key lacks the {scope} scope"
            ))),
        }
    }

    pub fn require_admin(&self) -> Result<(), AppError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Key { .. } => Err(AppError::Forbidden(
                "only the admin token may do this".into(),
            )),
        }
    }

    /// Whether the caller may see records of `project`. Records of other projects are
    /// answered as not found, so their existence does not leak.
    pub fn sees(&self, project: &ProjectId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Key { project: mine, .. } => mine == project,
        }
    }

    /// The project a key is bound to; `None` for the admin.
    pub fn project(&self) -> Option<&ProjectId> {
        match self {
            Principal::Admin => None,
            Principal::Key { project, .. } => Some(project),
        }
    }
}

/// A newly created access key. `token` is shown once and never stored.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: AccessKey,
    pub token: SecretString,
}

const KEY_PREFIX: &str = "lk_";

impl Latchkey {
    /// Resolves a bearer token of the form `lk_<key id>_<secret>` to its key.
    pub async fn authenticate_key(&self, token: &str) -> Result<Option<Principal>, AppError> {
        let Some(rest) = token.strip_prefix(KEY_PREFIX) else {
            return Ok(None);
        };
        let Some((id, secret)) = rest.split_once('_') else {
            return Ok(None);
        };
        let Ok(uuid) = latchkey_domain::ids::parse_simple_uuid(id) else {
            return Ok(None);
        };
        let Some(key) = self
            .svc
            .keys
            .get_access_key(AccessKeyId::from_uuid(uuid))
            .await?
        else {
            return Ok(None);
        };
        if !constant_time_eq(
            hash_key_secret(secret).as_bytes(),
            key.secret_hash.as_bytes(),
        ) {
            return Ok(None);
        }
        Ok(Some(Principal::Key {
            id: key.id,
            project: key.project_id,
            scopes: key.scopes,
        }))
    }

    pub async fn create_access_key(
        &self,
        principal: &Principal,
        project_id: &str,
        name: &str,
        scopes: &[String],
    ) -> Result<IssuedKey, AppError> {
        principal.require_admin()?;
        let project_id = ProjectId::parse(project_id)?;
        let name = ConnectionName::parse(name)?;
        if scopes.is_empty() {
            return Err(latchkey_domain::DomainError::InvalidField {
                field: "scopes".into(),
                reason:
                    "name at least one of connections:read, connections:write, credentials:read, metrics:read"
                        .into(),
            }
            .into());
        }
        let mut parsed = scopes
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        parsed.dedup();
        let id = AccessKeyId::from_random_bytes(self.random());
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.random::<32>());
        let key = AccessKey {
            id,
            project_id,
            name,
            scopes: parsed,
            secret_hash: hash_key_secret(&secret),
            created_at: self.now(),
        };
        self.svc.keys.insert_access_key(&key).await?;
        let token = SecretString::from(format!("{KEY_PREFIX}{}_{secret}", id.as_uuid().simple()));
        Ok(IssuedKey { key, token })
    }

    pub async fn list_access_keys(
        &self,
        principal: &Principal,
    ) -> Result<Vec<AccessKey>, AppError> {
        principal.require_admin()?;
        Ok(self.svc.keys.list_access_keys(None).await?)
    }

    pub async fn delete_access_key(
        &self,
        principal: &Principal,
        id: AccessKeyId,
    ) -> Result<(), AppError> {
        principal.require_admin()?;
        if self.svc.keys.delete_access_key(id).await? {
            Ok(())
        } else {
            Err(AppError::NotFound("access key"))
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a hash matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
