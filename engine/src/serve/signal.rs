//! The shutdown signal of a server run from a terminal or a service
//! manager: Ctrl-C (SIGINT) or SIGTERM, whichever comes first.

/// Completes on SIGINT or (on Unix) SIGTERM.
pub async fn interrupted() {
    let ctrl_c = Box::pin(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    });
    #[cfg(unix)]
    let term = Box::pin(async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    });
    #[cfg(not(unix))]
    let term = Box::pin(std::future::pending::<()>());
    futures_util::future::select(ctrl_c, term).await;
}
