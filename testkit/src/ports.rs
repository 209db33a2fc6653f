//! Free loopback ports.

use std::net::TcpListener;

use crate::{Error, Result};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0); the listener is closed before returning so the server
/// can bind it. Another process may grab it in between, which is why callers retry a failed
/// start on a new port. Tests use it for `encore-flow`'s metrics address and hostfiles too.
pub fn free_port() -> Result<u16> {
    free_port_on("127.0.0.1")
}

/// A TCP port on `host` (an address of this machine, e.g. `127.0.0.2`) that was free a moment
/// ago; see [`free_port`].
pub fn free_port_on(host: &str) -> Result<u16> {
    let io_error = |source| Error::Io { action: "binding a free port on", path: format!("{host}:0").into(), source };
    let listener = TcpListener::bind((host, 0)).map_err(io_error)?;
    Ok(listener.local_addr().map_err(io_error)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_free_port_can_be_bound_again() {
        // Another program (or a parallel test's outgoing connection) may take a port between
        // its release and our bind, as the function's docs say; what must hold is that the
        // listener is released, so one of a few fresh ports binds.
        let mut errors = Vec::new();
        for _ in 0..5 {
            let port = free_port().expect("a free port");
            assert_ne!(port, 0);
            match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(_) => return,
                Err(error) => errors.push(format!("{port}: {error}")),
            }
        }
        panic!("no port was free after release: {errors:?}");
    }
}
