//! Building the aws-sdk-s3 client from an [`S3Config`]: region, endpoint,
//! credentials, the SDK's standard retries and per-attempt timeouts. The
//! client is built once per backend, on first use, so that opening a
//! repository does no I/O.

use std::time::Duration;

use aws_sdk_s3::Client;

use super::Inner;
use crate::model::config::S3Config;

impl Inner {
    /// The client, built on first use and shared by every request after.
    pub(super) async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async { build_client(&self.cfg).await })
            .await
    }
}

async fn build_client(cfg: &S3Config) -> Client {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::{ConnectorBuilder, proxy::ProxyConfig, tls};
    let retry = RetryConfig::standard()
        .with_max_attempts(cfg.attempts)
        .with_initial_backoff(Duration::from_millis(500))
        .with_max_backoff(Duration::from_secs(20));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10).min(cfg.timeout))
        .operation_attempt_timeout(cfg.timeout)
        .build();
    // The SDK's default HTTPS client (connector settings and sleep from the
    // SDK, proxies from the environment), but on rustls with ring, the TLS
    // provider MQTT uses: one for the whole binary, and no aws-lc to build.
    let http_client =
        aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
            let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ));
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(ProxyConfig::from_env()));
            connector.build()
        });
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client)
        .region(aws_config::Region::new(cfg.region.clone()))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(c) = &cfg.credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            c.access_key_id.expose(),
            c.secret_access_key.expose(),
            None,
            None,
            "kompose-dr configuration",
        ));
    }
    if let Some(e) = &cfg.endpoint {
        loader = loader.endpoint_url(e);
    }
    let shared = loader.load().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(cfg.path_style)
        // Checksums only where S3 requires them: self-hosted stores differ
        // in which flexible checksums they accept; sigv4 signs the payload.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(conf)
}
