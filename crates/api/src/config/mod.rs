//! Configuration from environment variables. The only place that reads them: `Config`
//! and what each variable means here, the forms of values in `parse`, and the wiping of
//! the secret ones from the process in `environ`.

mod environ;
mod parse;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use zeroize::Zeroize;

pub use environ::is_secret_var;
use environ::wipe_initial_environment;
pub use parse::parse_duration;
use parse::{parse_bool, parse_count, parse_duration_or_zero_var, parse_duration_var};

use latchkey_app::DefaultClient;
use latchkey_domain::{IpNet, Provider};

/// Why the configuration is unusable. Each message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
}

fn invalid(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        reason: reason.into(),
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// A secret: it may carry the database password (redacted in `Debug`).
    pub database_url: SecretString,
    /// The externally visible base URL, without a trailing slash.
    pub public_url: url::Url,
    /// `id:base64` entries; `None` means use or create the key file in `data_dir`.
    pub master_keys: Option<SecretString>,
    pub data_dir: PathBuf,
    pub admin_token: Option<SecretString>,
    pub allow_insecure_loopback: bool,
    /// Non-public ranges provider calls may reach (`LATCHKEY_ALLOW_PRIVATE_NETWORKS`).
    pub allow_private_networks: Vec<IpNet>,
    pub refresh_interval: Duration,
    pub refresh_margin: Duration,
    pub refresh_lease: Duration,
    /// The origin the callback page may post its result to (`window.opener`).
    pub ui_origin: Option<String>,
    pub default_clients: HashMap<Provider, DefaultClient>,
    pub http_timeout: Duration,
    /// How long an idle connection to a provider is kept (`LATCHKEY_HTTP_KEEP_ALIVE`).
    pub http_keep_alive: Duration,
    pub log_json: bool,
    /// Run the background refresh and expiry jobs in this process.
    pub run_jobs: bool,
    /// Background refreshes at once, in total and per provider host.
    pub refresh_concurrency: usize,
    pub refresh_concurrency_per_host: usize,
    /// Events and flow usages older than this are purged by the background job.
    pub event_retention: Duration,
    /// The most connections one project may hold.
    pub max_connections_per_project: u64,
    /// Start even when the master key file is readable by group or others (with a warning).
    pub allow_insecure_key_file: bool,
}

impl Config {
    /// Reads the configuration from the process environment, then wipes the secret
    /// variables ([`is_secret_var`]) from it: removed from the environment, overwritten
    /// where the kernel keeps the process's initial environment (what
    /// `/proc/<pid>/environ` shows), and the copies read here zeroed. From then on the
    /// secrets live only in `secrecy` types, which zero them when dropped.
    ///
    /// Call it once, at start-up, before any other thread runs: changing the environment
    /// while another thread reads it is undefined behaviour in C libraries.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        let config = Self::from_vars(&vars);
        let secret: Vec<String> = vars.keys().filter(|k| is_secret_var(k)).cloned().collect();
        for name in &secret {
            std::env::remove_var(name);
        }
        wipe_initial_environment(&secret);
        for v in vars.values_mut() {
            v.zeroize();
        }
        config
    }

    /// Reads the configuration from a map of variables (tests pass their own).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            vars.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let listen = get("LATCHKEY_LISTEN")
            .unwrap_or_else(|| "127.0.0.1:8080".into())
            .parse()
            .map_err(|e| invalid("LATCHKEY_LISTEN", format!("expected host:port, {e}")))?;
        let data_dir = PathBuf::from(get("LATCHKEY_DATA_DIR").unwrap_or_else(|| "./data".into()));
        let database_url = get("LATCHKEY_DATABASE_URL").unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("latchkey.db").display()
            )
        });
        let public_url =
            get("LATCHKEY_PUBLIC_URL").unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let mut public_url = url::Url::parse(&public_url)
            .map_err(|e| invalid("LATCHKEY_PUBLIC_URL", format!("not a URL: {e}")))?;
        if !matches!(public_url.scheme(), "http" | "https") {
            return Err(invalid(
                "LATCHKEY_PUBLIC_URL",
                "must be an http or https URL",
            ));
        }
        let trimmed = public_url.path().trim_end_matches('/').to_owned();
        public_url.set_path(&trimmed);
        let ui_origin = get("LATCHKEY_UI_ORIGIN")
            .map(|o| {
                let u = url::Url::parse(&o)
                    .map_err(|e| invalid("LATCHKEY_UI_ORIGIN", format!("not a URL: {e}")))?;
                if o.trim() == "*" || u.origin().ascii_serialization() == "null" {
                    return Err(invalid(
                        "LATCHKEY_UI_ORIGIN",
                        "must be one origin such as https://app.example.com, never *",
                    ));
                }
                Ok(u.origin().ascii_serialization())
            })
            .transpose()?;
        let mut default_clients = HashMap::new();
        for p in Provider::CATALOG {
            let up = p.as_str().to_uppercase();
            let id = get(&format!("LATCHKEY_OAUTH_{up}_CLIENT_ID"));
            let secret = get(&format!("LATCHKEY_OAUTH_{up}_CLIENT_SECRET"));
            match (id, secret) {
                (Some(client_id), secret) => {
                    default_clients.insert(p, DefaultClient { client_id, client_secret: secret.map(SecretString::from) });
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "LATCHKEY_OAUTH_<PROVIDER>_CLIENT_SECRET",
                        format!("LATCHKEY_OAUTH_{up}_CLIENT_SECRET is set without LATCHKEY_OAUTH_{up}_CLIENT_ID"),
                    ))
                }
                (None, None) => {}
            }
        }
        Ok(Self {
            listen,
            database_url: SecretString::from(database_url),
            public_url,
            master_keys: get("LATCHKEY_MASTER_KEYS").map(SecretString::from),
            data_dir,
            admin_token: match get("LATCHKEY_ADMIN_TOKEN") {
                Some(t) if t.len() < 16 => {
                    return Err(invalid(
                        "LATCHKEY_ADMIN_TOKEN",
                        "must be at least 16 characters",
                    ))
                }
                t => t.map(SecretString::from),
            },
            allow_insecure_loopback: parse_bool(&get, "LATCHKEY_ALLOW_INSECURE_LOOPBACK", false)?,
            allow_private_networks: get("LATCHKEY_ALLOW_PRIVATE_NETWORKS")
                .map(|v| latchkey_domain::net::parse_networks(&v))
                .transpose()
                .map_err(|reason| {
                    invalid(
                        "LATCHKEY_ALLOW_PRIVATE_NETWORKS",
                        format!("{reason} (expected comma-separated CIDR ranges such as 10.0.0.0/8,fd00::/8)"),
                    )
                })?
                .unwrap_or_default(),
            refresh_interval: parse_duration_var(
                &get,
                "LATCHKEY_REFRESH_INTERVAL",
                Duration::from_secs(60),
            )?,
            refresh_margin: parse_duration_var(
                &get,
                "LATCHKEY_REFRESH_MARGIN",
                Duration::from_secs(300),
            )?,
            refresh_lease: parse_duration_var(
                &get,
                "LATCHKEY_REFRESH_LEASE",
                Duration::from_secs(30),
            )?,
            http_timeout: parse_duration_var(
                &get,
                "LATCHKEY_HTTP_TIMEOUT",
                Duration::from_secs(15),
            )?,
            http_keep_alive: parse_duration_or_zero_var(
                &get,
                "LATCHKEY_HTTP_KEEP_ALIVE",
                latchkey_oauth::DEFAULT_KEEP_ALIVE,
            )?,
            ui_origin,
            default_clients,
            log_json: get("LATCHKEY_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json")),
            run_jobs: parse_bool(&get, "LATCHKEY_RUN_JOBS", true)?,
            refresh_concurrency: parse_count(&get, "LATCHKEY_REFRESH_CONCURRENCY", 16)?,
            refresh_concurrency_per_host: parse_count(
                &get,
                "LATCHKEY_REFRESH_CONCURRENCY_PER_HOST",
                4,
            )?,
            event_retention: parse_duration_var(
                &get,
                "LATCHKEY_EVENT_RETENTION",
                Duration::from_secs(90 * 86_400),
            )?,
            max_connections_per_project: match get("LATCHKEY_MAX_CONNECTIONS_PER_PROJECT") {
                None => 10_000,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(invalid(
                            "LATCHKEY_MAX_CONNECTIONS_PER_PROJECT",
                            format!("expected a positive whole number, got {v:?}"),
                        ))
                    }
                },
            },
            allow_insecure_key_file: parse_bool(&get, "LATCHKEY_ALLOW_INSECURE_KEY_FILE", false)?,
        })
    }

    /// The origin the OAuth callback page posts its result to: `LATCHKEY_UI_ORIGIN`, or else
    /// the origin of `LATCHKEY_PUBLIC_URL`, where the binary serves its own management page.
    /// Never `*`: the message names the connection, and any opener could read it.
    pub fn ui_target_origin(&self) -> String {
        self.ui_origin
            .clone()
            .unwrap_or_else(|| self.public_url.origin().ascii_serialization())
    }

    pub fn callback_url(&self) -> String {
        format!(
            "{}/v1/connections/oauth2/callback",
            self.public_url.as_str().trim_end_matches('/')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_debug_form_holds_no_secret() {
        let c = Config::from_vars(&vars(&[
            (
                "LATCHKEY_DATABASE_URL",
                "postgres://latchkey:db-pass-4711@127.0.0.1:5432/latchkey",
            ),
            ("LATCHKEY_ADMIN_TOKEN", "admin-tok-4711-long-enough"),
            (
                "LATCHKEY_MASTER_KEYS",
                "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ]))
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["db-pass-4711", "admin-tok-4711", "AAAAAAAA"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("127.0.0.1:8080"), "{shown}");
    }

    #[test]
    fn defaults() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.database_url.expose_secret().starts_with("sqlite://"));
        assert_eq!(
            c.callback_url(),
            "http://127.0.0.1:8080/v1/connections/oauth2/callback"
        );
        assert_eq!(c.refresh_interval, Duration::from_secs(60));
        assert_eq!(c.refresh_margin, Duration::from_secs(300));
        assert!(!c.allow_insecure_loopback);
        assert_eq!(
            (c.refresh_concurrency, c.refresh_concurrency_per_host),
            (16, 4)
        );
        assert_eq!(c.event_retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.max_connections_per_project, 10_000);
        assert!(!c.allow_insecure_key_file);
        assert_eq!(c.http_keep_alive, Duration::from_secs(2));
    }

    #[test]
    fn keep_alive_may_be_off_but_not_malformed() {
        for (value, want) in [
            ("0s", Some(0)),
            ("0", Some(0)),
            ("500ms", Some(500)),
            ("2x", None),
            ("-1", None),
        ] {
            let c = Config::from_vars(&vars(&[("LATCHKEY_HTTP_KEEP_ALIVE", value)]));
            assert_eq!(
                c.ok().map(|c| c.http_keep_alive.as_millis()),
                want,
                "{value}"
            );
        }
        // Elsewhere zero stays refused.
        assert!(Config::from_vars(&vars(&[("LATCHKEY_HTTP_TIMEOUT", "0s")])).is_err());
    }

    #[test]
    fn limits_and_retention() {
        let c = Config::from_vars(&vars(&[
            ("LATCHKEY_EVENT_RETENTION", "30d"),
            ("LATCHKEY_MAX_CONNECTIONS_PER_PROJECT", "25"),
            ("LATCHKEY_ALLOW_INSECURE_KEY_FILE", "true"),
        ]))
        .unwrap();
        assert_eq!(c.event_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.max_connections_per_project, 25);
        assert!(c.allow_insecure_key_file);
    }

    #[test]
    fn the_callback_posts_to_the_public_origin_unless_told_otherwise() {
        let c = Config::from_vars(&vars(&[(
            "LATCHKEY_PUBLIC_URL",
            "https://keys.example.com:8443/latchkey/",
        )]))
        .unwrap();
        assert_eq!(c.ui_target_origin(), "https://keys.example.com:8443");
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.ui_target_origin(), "http://127.0.0.1:8080");
        let c = Config::from_vars(&vars(&[
            ("LATCHKEY_PUBLIC_URL", "https://keys.example.com"),
            ("LATCHKEY_UI_ORIGIN", "https://app.example.com/settings"),
        ]))
        .unwrap();
        assert_eq!(c.ui_target_origin(), "https://app.example.com");
    }

    #[test]
    fn errors_name_the_variable() {
        for (k, v) in [
            ("LATCHKEY_LISTEN", "nope"),
            ("LATCHKEY_REFRESH_INTERVAL", "soon"),
            ("LATCHKEY_PUBLIC_URL", "ftp://x"),
            ("LATCHKEY_UI_ORIGIN", "*"),
            ("LATCHKEY_ADMIN_TOKEN", "short"),
            ("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "maybe"),
            ("LATCHKEY_REFRESH_CONCURRENCY", "0"),
            ("LATCHKEY_REFRESH_CONCURRENCY_PER_HOST", "many"),
            ("LATCHKEY_OAUTH_GOOGLE_CLIENT_SECRET", "s"),
            ("LATCHKEY_EVENT_RETENTION", "forever"),
            ("LATCHKEY_MAX_CONNECTIONS_PER_PROJECT", "0"),
            ("LATCHKEY_MAX_CONNECTIONS_PER_PROJECT", "-5"),
            ("LATCHKEY_ALLOW_INSECURE_KEY_FILE", "perhaps"),
            ("LATCHKEY_ALLOW_PRIVATE_NETWORKS", "10.0.0.0/33"),
            ("LATCHKEY_ALLOW_PRIVATE_NETWORKS", "10.0.0.0/8,intranet"),
            ("LATCHKEY_ALLOW_PRIVATE_NETWORKS", "10.1.2.3/8"),
        ] {
            let err = Config::from_vars(&vars(&[(k, v)])).unwrap_err().to_string();
            assert!(err.starts_with("LATCHKEY_"), "{k}: {err}");
        }
    }

    #[test]
    fn private_networks() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert!(c.allow_private_networks.is_empty());
        let c = Config::from_vars(&vars(&[(
            "LATCHKEY_ALLOW_PRIVATE_NETWORKS",
            " 10.0.0.0/8, fd00::/8 ,192.168.5.7",
        )]))
        .unwrap();
        let shown: Vec<String> = c
            .allow_private_networks
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "fd00::/8", "192.168.5.7/32"]);
        let err = Config::from_vars(&vars(&[(
            "LATCHKEY_ALLOW_PRIVATE_NETWORKS",
            "10.0.0.0/8,172.16.0.0/99",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("LATCHKEY_ALLOW_PRIVATE_NETWORKS: \"172.16.0.0/99\""),
            "{err}"
        );
        assert!(err.contains("prefix length"), "{err}");
    }

    #[test]
    fn default_provider_clients() {
        let c = Config::from_vars(&vars(&[
            ("LATCHKEY_OAUTH_GOOGLE_CLIENT_ID", "gid"),
            ("LATCHKEY_OAUTH_GOOGLE_CLIENT_SECRET", "gs"),
        ]))
        .unwrap();
        assert_eq!(c.default_clients[&Provider::Google].client_id, "gid");
        assert!(!c.default_clients.contains_key(&Provider::Box));
    }
}
