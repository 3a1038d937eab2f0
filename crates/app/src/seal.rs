//! Sealing and opening secrets at their place (project, record, field).

use secrecy::{ExposeSecret, SecretBox, SecretString};

use latchkey_domain::{SealContext, Sealed, SecretFields};

use crate::{AppError, Latchkey};

impl Latchkey {
    pub(crate) fn seal_str(
        &self,
        value: &SecretString,
        ctx: &SealContext,
    ) -> Result<Sealed, AppError> {
        let bytes: SecretBox<[u8]> =
            SecretBox::from(value.expose_secret().as_bytes().to_vec().into_boxed_slice());
        Ok(self.svc.cipher.seal(&bytes, ctx)?)
    }

    pub(crate) fn open_str(
        &self,
        sealed: &Sealed,
        ctx: &SealContext,
    ) -> Result<SecretString, AppError> {
        let bytes = self.svc.cipher.open(sealed, ctx)?;
        let s = std::str::from_utf8(bytes.expose_secret())
            .map_err(|_| AppError::Internal(format!("sealed {} is not UTF-8", ctx.field)))?;
        Ok(SecretString::from(s.to_owned()))
    }

    pub(crate) fn seal_fields(
        &self,
        fields: &SecretFields,
        ctx: &SealContext,
    ) -> Result<Option<Sealed>, AppError> {
        if fields.is_empty() {
            return Ok(None);
        }
        let bytes: SecretBox<[u8]> = SecretBox::from(fields.to_plaintext_json().into_boxed_slice());
        Ok(Some(self.svc.cipher.seal(&bytes, ctx)?))
    }

    pub(crate) fn open_fields(
        &self,
        sealed: Option<&Sealed>,
        ctx: &SealContext,
    ) -> Result<SecretFields, AppError> {
        match sealed {
            None => Ok(SecretFields::default()),
            Some(s) => {
                let bytes = self.svc.cipher.open(s, ctx)?;
                SecretFields::from_plaintext_json(bytes.expose_secret())
                    .map_err(|e| AppError::Internal(format!("sealed secrets: {e}")))
            }
        }
    }
}
