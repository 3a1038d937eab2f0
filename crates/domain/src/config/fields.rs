//! Reading fields out of a JSON object while validating it: every refusal names the
//! field's path (`config.oauth2_config.issuer`), which the API returns as `error.field`.

use serde_json::{Map, Value};

use crate::DomainError;

/// The longest string value a configuration field may hold, in characters.
pub const MAX_FIELD_CHARS: usize = 8192;

/// Refuses any key of `obj` not in `allowed`.
pub(crate) fn only_keys(
    obj: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
) -> Result<(), DomainError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(DomainError::field(
                format!("{path}.{k}"),
                format!("unknown field; accepted: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A non-empty string at `key`, required.
pub(crate) fn required_string(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<String, DomainError> {
    optional_string(obj, path, key)?
        .ok_or_else(|| DomainError::field(format!("{path}.{key}"), "is required"))
}

/// A non-empty string at `key`, or `None` when absent or `null`.
pub(crate) fn optional_string(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, DomainError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(DomainError::field(
            format!("{path}.{key}"),
            "must not be empty",
        )),
        Some(Value::String(s)) if s.chars().count() > MAX_FIELD_CHARS => Err(DomainError::field(
            format!("{path}.{key}"),
            format!("is too long (at most {MAX_FIELD_CHARS} characters)"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(DomainError::field(
            format!("{path}.{key}"),
            "must be a string",
        )),
    }
}
