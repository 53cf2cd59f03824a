//! The listener (TCP or a unix socket), the accept loop with its connection limit, signals
//! (SIGHUP reloads, SIGTERM and SIGINT stop gracefully) and the async runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::{App, Config, Listen, StartError};
use crate::metrics::Metrics;

/// hyper counts an idle keep-alive connection's wait for the next request
/// against this timeout. nginx keeps idle upstream connections for 60 s
/// (`keepalive_timeout`); if csel-auth closed them first, a subrequest sent
/// just as the connection closes would fail (500). So: longer than that.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Runs the service until SIGTERM or SIGINT. A start failure is logged and returned.
pub(crate) fn run(config: Config) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    runtime
        .block_on(serve(config))
        .inspect_err(|error| tracing::error!(target: "csel_auth::service", "{error}"))
}

async fn serve(config: Config) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let metrics = Arc::new(Metrics::default());
    let app = Arc::new(App::new(&config, metrics).await?);
    crate::reload::start(Arc::clone(app.store()), config.reload_period)?;

    let mut sighup = signal(SignalKind::hangup()).map_err(|source| StartError::Signal {
        signal: "SIGHUP",
        source,
    })?;
    // Its own task, so a reload is never held up by the accept loop (which
    // waits for a free connection slot when all are taken).
    let reload_store = Arc::clone(app.store());
    let reload_app = Arc::clone(&app);
    let config_file = config.config_file.clone();
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            tracing::info!(target: "csel_auth::service", "SIGHUP: reloading");
            crate::reload::reload_now(&reload_store);
            reload_app.refresh_identity_sources().await;
            if let Some((path, at_start)) = &config_file {
                warn_about_config_changes(path, at_start);
            }
        }
    });
    if let Some(audit) = app.audit.clone() {
        let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(|source| StartError::Signal {
            signal: "SIGUSR1",
            source,
        })?;
        tokio::spawn(async move {
            while sigusr1.recv().await.is_some() {
                audit.reopen();
            }
        });
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| StartError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| StartError::Signal {
        signal: "SIGINT",
        source,
    })?;
    let listener = Listener::bind(&config.listen, config.socket_mode).await?;
    let rules = app.store().rules();
    tracing::info!(
        target: "csel_auth::service",
        listen = %listener.describe(),
        rules = %config.rules.display(),
        grants = rules.grants().len(),
        token_realm = config.token.as_ref().map_or("-", |t| t.realm.as_str()),
        "csel-auth ready"
    );
    notify_ready();
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accept_failures: u64 = 0;
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) or another failure that retrying at
                // once would only repeat: pause, and say so once a minute at most.
                accept_failures += 1;
                if last_accept_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(target: "csel_auth::service", "accept failed ({accept_failures} times so far): {e}; retrying in 100 ms");
                    last_accept_warning = Some(Instant::now());
                }
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                }
            }
        };
        let app = Arc::clone(&app);
        let service = service_fn(move |request| {
            let app = Arc::clone(&app);
            async move { Ok::<_, std::convert::Infallible>(app.handle(request).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .max_buf_size(64 * 1024)
            .serve_connection(stream, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    tracing::info!(target: "csel_auth::service", "shutting down: finishing requests in flight");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(target: "csel_auth::service", "some connections were still open after 10 s");
    }
    if let Listen::Unix(path) = &config.listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Tells systemd (`Type=notify`) that the service is ready: the rules and
/// htpasswd files loaded and the listener is bound. Without `NOTIFY_SOCKET`
/// (not started by systemd) it does nothing.
fn notify_ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let datagram = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket.as_os_str());
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(&socket))?,
        };
        datagram.send_to_addr(b"READY=1\n", &address)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(target: "csel_auth::service", "cannot tell systemd the service is ready (NOTIFY_SOCKET): {e}");
    }
}

/// The config file's settings are read once, at start: on SIGHUP, say which
/// changes wait for a restart rather than applying half of them.
fn warn_about_config_changes(path: &std::path::Path, at_start: &crate::config::ConfigFile) {
    match crate::config::ConfigFile::load(path) {
        Err(e) => {
            tracing::warn!(target: "csel_auth::service", "SIGHUP: {e}; the settings from the start stay in force")
        }
        Ok(now) => {
            let changed = at_start.changed_keys(&now);
            if !changed.is_empty() {
                tracing::warn!(
                    target: "csel_auth::service",
                    config = %path.display(),
                    changed = %changed.join(", "),
                    "SIGHUP: the config file changed; these settings take effect at the next restart"
                );
            }
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// A connection of either kind.
type Stream = TokioIo<Box<dyn AsyncStream>>;
trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

impl Listener {
    async fn bind(listen: &Listen, mode: u32) -> Result<Listener, StartError> {
        match listen {
            Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|source| StartError::Listen {
                    address: addr.to_string(),
                    source,
                }),
            Listen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                // A socket left by a previous run is replaced; any other file is not.
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    } else {
                        return Err(StartError::NotASocket(path.clone()));
                    }
                }
                let listener = tokio::net::UnixListener::bind(path).map_err(|source| StartError::Listen {
                    address: path.display().to_string(),
                    source,
                })?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
                    StartError::SocketMode {
                        mode,
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(TokioIo::new(Box::new(stream)))
            }
            Listener::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                Ok(TokioIo::new(Box::new(stream)))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}
