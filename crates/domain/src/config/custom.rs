//! Custom connections: named fields, each secret unless marked otherwise. Secret values
//! are sealed apart; the configuration keeps only that they exist.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::{json, Map, Value};

use super::fields::{only_keys, required_string};
use super::SecretFields;
use crate::DomainError;

/// How many fields a custom connection holds at most.
pub const MAX_CUSTOM_FIELDS: usize = 64;
/// The longest field name, in bytes (names are ASCII).
pub const MAX_FIELD_NAME_LEN: usize = 64;

/// One field of a custom connection, as the configuration keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CustomField {
    /// A value that is shown back and handed out as it is.
    Public(String),
    /// A value sealed among the connection's secrets: only its presence is shown.
    Secret,
}

/// The fields of a custom connection by name, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomFields(BTreeMap<String, CustomField>);

impl CustomFields {
    /// The field named `name`.
    pub fn get(&self, name: &str) -> Option<&CustomField> {
        self.0.get(name)
    }

    /// Every field, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CustomField)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The values of the public fields, by name.
    pub fn public_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter_map(|(k, v)| match v {
            CustomField::Public(value) => Some((k, value.as_str())),
            CustomField::Secret => None,
        })
    }

    /// The JSON the management API shows: `{"fields": {name: {"secret": true} | {"value": v, "secret": false}}}`.
    pub(crate) fn to_public_json(&self) -> Value {
        let fields: Map<String, Value> = self
            .0
            .iter()
            .map(|(name, f)| {
                let v = match f {
                    CustomField::Secret => json!({ "secret": true }),
                    CustomField::Public(value) => json!({ "value": value, "secret": false }),
                };
                (name.clone(), v)
            })
            .collect();
        json!({ "fields": fields })
    }

    /// Reads back what [`CustomFields::to_public_json`] wrote.
    pub(crate) fn from_public_json(config: &Value) -> Result<Self, DomainError> {
        let bad = || DomainError::field("config.fields", "stored custom fields are malformed");
        let fields = config
            .get("fields")
            .and_then(Value::as_object)
            .ok_or_else(bad)?;
        fields
            .iter()
            .map(|(name, spec)| {
                let field = match spec.get("secret").and_then(Value::as_bool) {
                    Some(false) => CustomField::Public(
                        spec.get("value")
                            .and_then(Value::as_str)
                            .ok_or_else(bad)?
                            .to_owned(),
                    ),
                    Some(true) => CustomField::Secret,
                    None => return Err(bad()),
                };
                Ok((name.clone(), field))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl FromIterator<(String, CustomField)> for CustomFields {
    fn from_iter<I: IntoIterator<Item = (String, CustomField)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Validates the `config` of a custom connection: `{"fields": {name: {"value": "...", "secret": bool}}}`.
pub(crate) fn parse_custom(
    obj: &Map<String, Value>,
) -> Result<(CustomFields, SecretFields), DomainError> {
    only_keys(obj, "config", &["fields"])?;
    let fields = obj
        .get("fields")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            DomainError::field(
                "config.fields",
                "is required and must be an object of fields",
            )
        })?;
    if fields.is_empty() {
        return Err(DomainError::field(
            "config.fields",
            "must contain at least one field",
        ));
    }
    if fields.len() > MAX_CUSTOM_FIELDS {
        return Err(DomainError::field(
            "config.fields",
            format!("at most {MAX_CUSTOM_FIELDS} fields"),
        ));
    }
    let mut public = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (name, spec) in fields {
        let path = format!("config.fields.{name}");
        let valid_name = !name.is_empty()
            && name.len() <= MAX_FIELD_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(DomainError::field(
                &path,
                format!("field names are 1 to {MAX_FIELD_NAME_LEN} of A-Z a-z 0-9 _ -"),
            ));
        }
        let spec = spec.as_object().ok_or_else(|| {
            DomainError::field(
                &path,
                r#"must be an object like {"value": "...", "secret": true}"#,
            )
        })?;
        only_keys(spec, &path, &["value", "secret"])?;
        let value = required_string(spec, &path, "value")?;
        // Secret unless said otherwise: a forgotten flag must not leak a value.
        let secret = match spec.get("secret") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(DomainError::field(
                    format!("{path}.secret"),
                    "must be true or false",
                ))
            }
        };
        if secret {
            public.insert(name.clone(), CustomField::Secret);
            secrets.insert(name.clone(), SecretString::from(value));
        } else {
            public.insert(name.clone(), CustomField::Public(value));
        }
    }
    Ok((CustomFields(public), SecretFields(secrets)))
}
