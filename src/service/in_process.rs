//! The `/auth` answer without sockets: the same [`App`] the listener serves,
//! called directly, so the outcome table can be checked in-process (fast, no
//! ports) while the binary tests keep what needs a process: reload, signals,
//! sockets.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;

use super::App;
use crate::metrics::Metrics;

/// One service, built from `serve` arguments, answering `/auth` in-process.
pub struct InProcess {
    app: App,
    runtime: tokio::runtime::Runtime,
}

/// An answer: status, headers (names in lower case, in order) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl InProcess {
    /// Builds the service from the arguments `csel-auth serve` takes (`--rules FILE …`).
    pub fn start(args: &[&str]) -> Result<InProcess, String> {
        let config = crate::cli::serve_config(args)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let app = runtime
            .block_on(App::new(&config, Arc::new(Metrics::default())))
            .map_err(|e| e.to_string())?;
        Ok(InProcess { app, runtime })
    }

    /// Answers one `/auth` subrequest carrying `headers` (repeated names are sent repeated).
    pub fn auth(&self, headers: &[(&str, &str)]) -> Result<Answer, String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header name {name:?}: {e}"))?;
            let value =
                HeaderValue::from_bytes(value.as_bytes()).map_err(|e| format!("header value {value:?}: {e}"))?;
            map.append(name, value);
        }
        self.runtime.block_on(async {
            let response = self.app.auth(&map).await;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes()
                .to_vec();
            Ok(Answer { status, headers, body })
        })
    }
}
