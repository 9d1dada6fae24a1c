//! A stack drill's apps: each cloned from its production container onto
//! the drill's network, started, and waited on until Docker reports it
//! healthy — all at once, each within `app_timeout`.

use std::time::{Duration, Instant};

use super::error::{AppError, HttpError, StackError};
use super::{AppVerdict, LOG_LINES, StackRun};
use crate::engine::Engine;

/// How often an app's health is asked.
const POLL: Duration = Duration::from_millis(500);

impl StackRun<'_> {
    /// Clones and starts every app, then waits for them; fails naming each
    /// app that did not become healthy.
    pub(super) async fn start_apps(&mut self) -> Result<String, StackError> {
        let mut started = Vec::new();
        for app in self.drill.apps.clone() {
            let prod = match self.engine.production(&app).await {
                Ok(p) => p,
                Err(e) => {
                    let why = AppError::Production(e);
                    self.apps.push(failed(&app, why.to_string(), String::new()));
                    continue;
                }
            };
            match self.clone_of(&prod, false).await {
                Ok(spec) => started.push((app, spec.name, Instant::now())),
                Err(e) => {
                    let why = AppError::Start(Box::new(e));
                    self.apps.push(failed(&app, why.to_string(), String::new()));
                }
            }
        }
        let timeout = self.drill.app_timeout;
        let engine = &self.engine;
        let this = &*self;
        let waits = started.iter().map(|(app, clone, t)| async move {
            let http = this.drill.app_http.iter().find(|(a, _)| a == app);
            let waited = match http {
                Some((_, url)) => this.wait_http(clone, url, *t, timeout).await,
                None => wait_healthy(engine, clone, *t, timeout).await,
            };
            match waited {
                Ok(seconds) => AppVerdict {
                    app: app.clone(),
                    seconds_to_healthy: Some(seconds),
                    ok: true,
                    detail: format!("healthy after {seconds:.1} s (clone {clone})"),
                    log: String::new(),
                },
                Err(why) => failed(
                    app,
                    format!("not healthy (clone {clone}): {why}"),
                    engine.log_tail(clone, LOG_LINES).await,
                ),
            }
        });
        let verdicts = futures::future::join_all(waits).await;
        let redact = self.config.redactor();
        for mut v in verdicts {
            v.detail = redact.scrub(&v.detail);
            v.log = redact.scrub(&v.log);
            self.apps.push(v);
        }
        let bad: Vec<(String, String)> = self
            .apps
            .iter()
            .filter(|a| !a.ok)
            .map(|a| (a.app.clone(), a.detail.clone()))
            .collect();
        if bad.is_empty() {
            Ok(format!("{} app(s) healthy", self.apps.len()))
        } else {
            Err(StackError::Apps(bad))
        }
    }
}

impl StackRun<'_> {
    /// The address on the drill's network of the clone whose alias is the
    /// URL's host (or the host itself, an address).
    async fn address_of(&self, url: &url::Url) -> Result<std::net::IpAddr, HttpError> {
        let host = url.host_str().unwrap_or_default();
        if let Ok(ip) = host.trim_matches(['[', ']']).parse() {
            return Ok(ip);
        }
        let clone = self
            .aliases
            .iter()
            .find(|(a, _)| a == host)
            .map(|(_, c)| c)
            .ok_or_else(|| HttpError::NoAlias(host.to_owned()))?;
        let info = self.engine.inspect(clone).await?;
        info.addresses
            .iter()
            .find(|(net, _)| *net == self.network)
            .map(|(_, ip)| *ip)
            .ok_or_else(|| HttpError::NoAddress {
                clone: clone.clone(),
                network: self.network.clone(),
            })
    }

    /// Seconds from `started` until `url` answers 2xx from the clone's
    /// address on the drill's network; why not, when the clone exits or
    /// `timeout` passes.
    async fn wait_http(
        &self,
        clone: &str,
        url: &url::Url,
        started: Instant,
        timeout: Duration,
    ) -> Result<f64, AppError> {
        loop {
            let h = self.engine.health(clone).await?;
            if !h.running {
                return Err(AppError::Exited {
                    code: h.exit_code,
                    last_check: None,
                });
            }
            let last = match self.address_of(url).await {
                Ok(ip) => match super::http::get(ip, url).await {
                    Ok(_) => return Ok(started.elapsed().as_secs_f64()),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if started.elapsed() > timeout {
                return Err(AppError::Http {
                    url: url.clone(),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn failed(app: &str, detail: String, log: String) -> AppVerdict {
    AppVerdict {
        app: app.to_owned(),
        seconds_to_healthy: None,
        ok: false,
        detail,
        log,
    }
}

/// Seconds from `started` until the engine reports `clone` healthy; why
/// not, when it exits, is reported unhealthy, has no healthcheck, or
/// `timeout` passes.
async fn wait_healthy(
    engine: &Engine,
    clone: &str,
    started: Instant,
    timeout: Duration,
) -> Result<f64, AppError> {
    loop {
        let h = engine.health(clone).await?;
        let last_check = h.last_check.clone();
        if !h.running {
            return Err(AppError::Exited {
                code: h.exit_code,
                last_check,
            });
        }
        match h.status.as_deref() {
            Some("healthy") => return Ok(started.elapsed().as_secs_f64()),
            Some("unhealthy") => return Err(AppError::Unhealthy { last_check }),
            None => return Err(AppError::NoHealthcheck),
            _ => {}
        }
        if started.elapsed() > timeout {
            return Err(AppError::Timeout {
                status: h.status.unwrap_or_else(|| "starting".into()),
                timeout,
                last_check,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
