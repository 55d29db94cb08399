//! Configuration: command-line flags (and their environment variables) take
//! precedence over the TOML file given with `--config`, which takes
//! precedence over the documented defaults (also in
//! `deploy/config/gateway.toml`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::callback::Net;

#[derive(Debug, clap::Parser)]
#[command(
    name = "faas-gateway",
    version = faas_proto::VERSION,
    about = "The faas HTTP gateway: POST /function/NAME (sync), /async-function/NAME (202 + callback), as a gRPC client of the control plane"
)]
pub struct Flags {
    /// TOML file with any of the settings below (keys: the long flag names with underscores).
    #[arg(long, env = "FAAS_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the HTTP server listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "FAAS_GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// Control-plane replicas, comma-separated https:// URLs; calls are
    /// spread over those that answer [default: https://127.0.0.1:7070].
    #[arg(long, env = "FAAS_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Option<Vec<String>>,
    /// The cluster CA (PEM) the control plane's certificate chains to
    /// (`ca.crt` beside the control plane's bootstrap token) [required for
    /// https:// replicas].
    #[arg(long, env = "FAAS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A file holding an API token of role public-invoker
    /// (`faasctl token create --role public-invoker`): requests without an
    /// Authorization header are made with it, so they reach the functions
    /// deployed with `--http public` and nothing else. Without it every
    /// request needs a token [default: none].
    #[arg(long, env = "FAAS_GATEWAY_PUBLIC_TOKEN_FILE")]
    pub public_token_file: Option<PathBuf>,
    /// Certificate chain (PEM) to serve HTTPS with; without it the gateway
    /// speaks plain HTTP, which carries API tokens in the clear [default: none].
    #[arg(long, env = "FAAS_GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Key (PEM) of --tls-cert [default: none].
    #[arg(long, env = "FAAS_GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (behind a
    /// TLS-terminating proxy): tokens then cross that network in the clear
    /// [default: false].
    #[arg(long)]
    pub allow_plain_http: Option<bool>,
    /// Largest request body accepted, bytes; larger ones get 413. The
    /// event built from it must also fit the control plane's
    /// max_params_bytes (a binary body grows by 4/3 in base64)
    /// [default: 131072].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Requests served at once; more get 503 [default: 1024].
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Threads serving requests. 1 keeps every request on one thread, no
    /// hand-over between threads on its way (the lowest latency, and
    /// thousands of requests per second); more for more throughput
    /// [default: 1].
    #[arg(long, env = "FAAS_GATEWAY_THREADS")]
    pub threads: Option<usize>,
    /// Time a client has to send its request headers [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Time a client has to send its request body [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Longest a synchronous call is waited for before 504 (the call
    /// itself ends at its function's timeout) [default: 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub call_timeout: Option<Duration>,
    /// Networks (CIDR) a callback URL may reach although they are
    /// loopback, link-local or private, e.g. 10.0.4.0/24; everything else
    /// of those is refused (SSRF) [default: none].
    #[arg(long, value_delimiter = ',')]
    pub callback_allow_net: Option<Vec<String>>,
    /// Time one callback delivery may take [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub callback_timeout: Option<Duration>,
    /// Deliveries of a callback tried before it is dropped (a connection
    /// error or a 5xx answer is retried, with 1 s, 2 s, ... between tries)
    /// [default: 3].
    #[arg(long)]
    pub callback_attempts: Option<u32>,
    /// Longest an async call with a callback is waited for [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub callback_max_wait: Option<Duration>,
    /// Callbacks waiting for their calls at once; an async request with a
    /// callback beyond it gets 503 [default: 10000].
    #[arg(long)]
    pub max_pending_callbacks: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    control_plane: Option<Vec<String>>,
    ca_file: Option<PathBuf>,
    public_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    allow_plain_http: Option<bool>,
    max_body_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    threads: Option<usize>,
    #[serde(default, with = "duration_opt")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "duration_opt")]
    body_timeout: Option<Duration>,
    #[serde(default, with = "duration_opt")]
    call_timeout: Option<Duration>,
    callback_allow_net: Option<Vec<String>>,
    #[serde(default, with = "duration_opt")]
    callback_timeout: Option<Duration>,
    callback_attempts: Option<u32>,
    #[serde(default, with = "duration_opt")]
    callback_max_wait: Option<Duration>,
    max_pending_callbacks: Option<usize>,
}

mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The resolved settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub control_plane: Vec<String>,
    pub ca_pem: Option<String>,
    /// The public-invoker token, as the `authorization` value.
    pub public_token: Option<crate::upstream::Token>,
    /// Certificate chain and key (PEM) to serve HTTPS with.
    pub tls: Option<(String, String)>,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub threads: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub call_timeout: Duration,
    pub callbacks: CallbackSettings,
}

/// How callbacks of async calls are delivered.
#[derive(Clone, Debug)]
pub struct CallbackSettings {
    pub allow_nets: Vec<Net>,
    pub timeout: Duration,
    pub attempts: u32,
    pub max_wait: Duration,
    pub max_pending: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// reading a file
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn read(path: &PathBuf) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })
}

impl Config {
    pub fn resolve(flags: Flags) -> Result<Config, ConfigError> {
        let file: File = match &flags.config {
            Some(path) => toml::from_str(&read(path)?).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?,
            None => File::default(),
        };
        let listen_text = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            ConfigError::Invalid(format!("listen {listen_text:?}: {e} (want IP:PORT)"))
        })?;
        let control_plane: Vec<String> = flags
            .control_plane
            .or(file.control_plane)
            .unwrap_or_else(|| vec!["https://127.0.0.1:7070".into()])
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e
                } else {
                    format!("https://{e}")
                }
            })
            .collect();
        if control_plane.is_empty() {
            return Err(ConfigError::Invalid(
                "control_plane lists no replica".into(),
            ));
        }
        let ca_file = flags.ca_file.or(file.ca_file);
        let ca_pem = ca_file.as_ref().map(read).transpose()?;
        if ca_pem.is_none() && control_plane.iter().any(|e| e.starts_with("https://")) {
            return Err(ConfigError::Invalid(
                "ca_file is needed to verify https:// control-plane replicas (the cluster CA, ca.crt)"
                    .into(),
            ));
        }
        let public_token = match flags.public_token_file.or(file.public_token_file) {
            None => None,
            Some(path) => {
                let text = read(&path)?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "public_token_file {} is empty",
                        path.display()
                    )));
                }
                Some(format!("Bearer {token}").parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "public_token_file {}: the token is not printable ASCII",
                        path.display()
                    ))
                })?)
            }
        };
        let tls = match (
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((read(&cert)?, read(&key)?)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "tls_cert and tls_key go together".into(),
                ))
            }
        };
        let allow_plain = flags
            .allow_plain_http
            .or(file.allow_plain_http)
            .unwrap_or(false);
        if tls.is_none() && !listen.ip().is_loopback() && !allow_plain {
            return Err(ConfigError::Invalid(format!(
                "listen {listen} is not loopback and no tls_cert is given: API tokens would cross the network in plain HTTP. Give tls_cert/tls_key, or allow_plain_http = true behind a TLS-terminating proxy"
            )));
        }
        let allow_nets = flags
            .callback_allow_net
            .or(file.callback_allow_net)
            .unwrap_or_default()
            .iter()
            .map(|text| {
                text.parse::<Net>()
                    .map_err(|e| ConfigError::Invalid(format!("callback_allow_net {text:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let positive = |name: &str, value: usize| {
            if value == 0 {
                Err(ConfigError::Invalid(format!("{name} must be at least 1")))
            } else {
                Ok(value)
            }
        };
        Ok(Config {
            listen,
            control_plane,
            ca_pem,
            public_token,
            tls,
            max_body_bytes: positive(
                "max_body_bytes",
                flags
                    .max_body_bytes
                    .or(file.max_body_bytes)
                    .unwrap_or(128 << 10),
            )?,
            max_in_flight: positive(
                "max_in_flight",
                flags.max_in_flight.or(file.max_in_flight).unwrap_or(1024),
            )?,
            threads: positive("threads", flags.threads.or(file.threads).unwrap_or(1))?,
            header_timeout: flags
                .header_timeout
                .or(file.header_timeout)
                .unwrap_or(Duration::from_secs(10)),
            body_timeout: flags
                .body_timeout
                .or(file.body_timeout)
                .unwrap_or(Duration::from_secs(30)),
            call_timeout: flags
                .call_timeout
                .or(file.call_timeout)
                .unwrap_or(Duration::from_secs(300)),
            callbacks: CallbackSettings {
                allow_nets,
                timeout: flags
                    .callback_timeout
                    .or(file.callback_timeout)
                    .unwrap_or(Duration::from_secs(10)),
                attempts: flags
                    .callback_attempts
                    .or(file.callback_attempts)
                    .unwrap_or(3)
                    .max(1),
                max_wait: flags
                    .callback_max_wait
                    .or(file.callback_max_wait)
                    .unwrap_or(Duration::from_secs(3600)),
                max_pending: positive(
                    "max_pending_callbacks",
                    flags
                        .max_pending_callbacks
                        .or(file.max_pending_callbacks)
                        .unwrap_or(10_000),
                )?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("faas-gateway").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn defaults_need_the_ca_for_https() {
        let err = Config::resolve(flags(&[])).unwrap_err();
        assert!(err.to_string().contains("ca_file"), "{err}");
        let config = Config::resolve(flags(&["--control-plane", "http://127.0.0.1:7070"])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.max_body_bytes, 128 << 10);
        assert_eq!(config.callbacks.attempts, 3);
        assert!(config.callbacks.allow_nets.is_empty());
    }

    #[test]
    fn plain_http_off_loopback_is_refused_unless_allowed() {
        let base = [
            "--control-plane",
            "http://cp:7070",
            "--listen",
            "0.0.0.0:8080",
        ];
        let err = Config::resolve(flags(&base)).unwrap_err();
        assert!(err.to_string().contains("plain HTTP"), "{err}");
        let mut allowed = base.to_vec();
        allowed.extend(["--allow-plain-http", "true"]);
        assert!(Config::resolve(flags(&allowed)).is_ok());
    }

    #[test]
    fn the_file_is_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("faas-gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            "control_plane = [\"http://cp:7070\"]\nmax_body_bytes = 10\ncallback_timeout = \"2s\"\ncallback_allow_net = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let path = file.display().to_string();
        let config =
            Config::resolve(flags(&["--config", &path, "--max-body-bytes", "20"])).unwrap();
        assert_eq!(config.max_body_bytes, 20);
        assert_eq!(config.callbacks.timeout, Duration::from_secs(2));
        assert_eq!(config.callbacks.allow_nets.len(), 1);
        std::fs::write(&file, "no_such_key = 1\n").unwrap();
        assert!(Config::resolve(flags(&["--config", &path])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_file_holds_the_defaults() {
        let example = include_str!("../../deploy/config/gateway.toml");
        let file: File = toml::from_str(example).expect("deploy/config/gateway.toml parses");
        let defaults = Config::resolve(flags(&["--control-plane", "http://cp:7070"])).unwrap();
        assert_eq!(file.listen.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(
            file.control_plane,
            Some(vec!["https://127.0.0.1:7070".to_string()])
        );
        assert_eq!(file.allow_plain_http, Some(false));
        assert_eq!(file.max_body_bytes, Some(defaults.max_body_bytes));
        assert_eq!(file.max_in_flight, Some(defaults.max_in_flight));
        assert_eq!(file.threads, Some(defaults.threads));
        assert_eq!(file.header_timeout, Some(defaults.header_timeout));
        assert_eq!(file.body_timeout, Some(defaults.body_timeout));
        assert_eq!(file.call_timeout, Some(defaults.call_timeout));
        assert_eq!(file.callback_allow_net, Some(Vec::new()));
        let callbacks = &defaults.callbacks;
        assert_eq!(file.callback_timeout, Some(callbacks.timeout));
        assert_eq!(file.callback_attempts, Some(callbacks.attempts));
        assert_eq!(file.callback_max_wait, Some(callbacks.max_wait));
        assert_eq!(file.max_pending_callbacks, Some(callbacks.max_pending));
    }
}
