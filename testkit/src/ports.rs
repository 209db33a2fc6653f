//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

use crate::{Error, Result};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0); the listener is closed before returning so the server
/// can bind it. Another process may grab it in between, which is why callers retry a failed
/// start on a new port.
pub(crate) fn free_port() -> Result<u16> {
    let io_error = |source| Error::Io {
        action: "binding a free port on",
        path: "127.0.0.1:0".into(),
        source,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error)?;
    Ok(listener.local_addr().map_err(io_error)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

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
