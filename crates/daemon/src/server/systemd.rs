//! systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1) over $NOTIFY_SOCKET, without
//! libsystemd: one datagram per message.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send `msg` to $NOTIFY_SOCKET; a no-op outside systemd.
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&path, msg) {
        tracing::warn!(error = %e, msg, "systemd notification failed");
    }
}

/// Send `msg` to the notify socket at `path` (`@name` for the abstract namespace).
pub fn notify_to(path: &std::ffi::OsStr, msg: &str) -> std::io::Result<()> {
    {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract namespace socket.
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?;
        } else {
            sock.send_to(msg.as_bytes(), path)?;
        }
        Ok(())
    }
}

/// While it lives, start-up tells systemd every 10 s that it is still going (30 s more from
/// then): hashing a large model, a GPU collateral round up to its deadline, a slow first quote
/// and the PCCS each take their own bounded time, and together they can pass the unit's
/// `TimeoutStartSec`, after which systemd would kill the agent and start it again, to do it
/// all again. Every step has its own limit, so a start that hangs still ends, on that limit.
/// Dropped (the task stops) when start-up ends, with READY=1 or an error.
pub struct StillStarting(tokio::task::JoinHandle<()>);

impl StillStarting {
    pub const EVERY: Duration = Duration::from_secs(10);
    pub const MESSAGE: &'static str = "EXTEND_TIMEOUT_USEC=30000000";

    pub fn spawn() -> Self {
        Self::spawn_with(notify)
    }

    fn spawn_with(send: fn(&str)) -> Self {
        StillStarting(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Self::EVERY).await;
                send(Self::MESSAGE);
            }
        }))
    }
}

impl Drop for StillStarting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Half of $WATCHDOG_USEC, if systemd asked for watchdog pings (and they are for us).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Ping the watchdog from the async runtime, so a wedged runtime stops the pings.
pub async fn watchdog(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    loop {
        notify("WATCHDOG=1");
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[tokio::test(start_paused = true)]
    async fn start_up_extends_the_start_timeout_until_it_ends() {
        use std::sync::Mutex;
        static SENT: Mutex<Vec<String>> = Mutex::new(Vec::new());
        fn record(msg: &str) {
            SENT.lock().unwrap().push(msg.to_string());
        }
        let sent = || SENT.lock().unwrap().clone();
        let starting = StillStarting::spawn_with(record);
        tokio::time::sleep(StillStarting::EVERY * 3 + Duration::from_secs(1)).await;
        assert_eq!(sent(), vec![StillStarting::MESSAGE; 3]);
        drop(starting);
        tokio::time::sleep(StillStarting::EVERY * 3).await;
        assert_eq!(sent().len(), 3, "extended after start-up ended");
    }

    #[test]
    fn abstract_sockets() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("tdx-agent-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
