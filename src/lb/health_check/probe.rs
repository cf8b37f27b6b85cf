//! One health check against one address: a TCP connect, or an HTTP GET
//! through ureq (plain HTTP, no proxy, no redirects followed, no pooled
//! connections, so every check is a fresh connection the backend accepts).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Check;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The connection was refused, reset or unreachable.
    #[error("connecting to {target}: {error}")]
    Connect {
        /// The address checked.
        target: SocketAddr,
        /// The socket error.
        error: io::Error,
    },
    /// The check could not be made from the load balancer's network
    /// namespace (entering it failed).
    #[error("entering the load balancer's network namespace failed: {error}")]
    Namespace {
        /// The kernel's error.
        error: io::Error,
    },
    /// No answer within the timeout.
    #[error("no answer from {target} within {timeout:?}")]
    Timeout {
        /// The address checked.
        target: SocketAddr,
        /// The check's timeout.
        timeout: Duration,
    },
    /// The HTTP answer's status was not 2xx or 3xx.
    #[error("GET {url} answered {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The HTTP exchange failed (connection, or not an HTTP answer).
    #[error("GET {url}: {error}")]
    Http {
        /// The URL asked.
        url: String,
        /// ureq's error.
        error: ureq::Error,
    },
}

/// Runs checks of one kind; built once per checker (the HTTP agent holds
/// its settings).
#[derive(Debug)]
pub(crate) struct Prober {
    check: Check,
    timeout: Duration,
    agent: ureq::Agent,
}

impl Prober {
    pub(crate) fn new(check: Check, timeout: Duration) -> Prober {
        let agent = ureq::Agent::config_builder()
            // The whole exchange, connect included.
            .timeout_global(Some(timeout))
            // A proxy from the environment (HTTP_PROXY...) would check the
            // proxy, not the backend.
            .proxy(None)
            // A redirect is an answer: 3xx passes, and is not followed.
            .max_redirects(0)
            .http_status_as_error(false)
            // A pooled connection would skip the backend's accept.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent("xdpguard-health")
            .build()
            .new_agent();
        Prober { check, timeout, agent }
    }

    /// One check of `target`; the time it took when it passed.
    pub(crate) fn probe(&self, target: SocketAddr) -> Result<Duration, ProbeError> {
        let started = Instant::now();
        match &self.check {
            Check::Tcp => match TcpStream::connect_timeout(&target, self.timeout) {
                Ok(_) => Ok(started.elapsed()),
                Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                    Err(ProbeError::Timeout { target, timeout: self.timeout })
                }
                Err(source) => Err(ProbeError::Connect { target, error: source }),
            },
            Check::Http { path } => {
                let url = format!("http://{target}{path}");
                match self.agent.get(&url).call() {
                    Ok(answer) => {
                        let status = answer.status().as_u16();
                        if (200..400).contains(&status) {
                            Ok(started.elapsed())
                        } else {
                            Err(ProbeError::Status { url, status })
                        }
                    }
                    Err(ureq::Error::Timeout(_)) => Err(ProbeError::Timeout { target, timeout: self.timeout }),
                    Err(ureq::Error::Io(source)) if source.kind() != io::ErrorKind::TimedOut => {
                        Err(ProbeError::Connect { target, error: source })
                    }
                    Err(ureq::Error::Io(_)) => Err(ProbeError::Timeout { target, timeout: self.timeout }),
                    Err(source) => Err(ProbeError::Http { url, error: source }),
                }
            }
        }
    }
}
