//! What the I/O thread asks of the socket that neither the standard library nor `mio`
//! reaches. The only `unsafe` code in the crate is here. Linux only: elsewhere the
//! setter does nothing and the questions have no answer, and the I/O thread works as it
//! would without them.
//!
//! - The receive low-water mark (`SO_RCVLOWAT`): how many bytes must be waiting before
//!   the socket reports itself readable. The I/O thread raises it while it is in the
//!   middle of a large frame, so that it sleeps until a good part of the rest has come
//!   instead of waking for every segment; see `ReadAhead::read_large` in the transport.
//! - The send queue (`SIOCOUTQ`): how many bytes written are not yet acknowledged by the
//!   server. A ping behind a large frame can sit there for seconds while a slow server
//!   takes the frame: the pong timer waits for it to leave (see `Io::ping_on_its_way`).

use std::io;

use mio::net::TcpStream;

/// Sets the low-water mark to `bytes` (1 is the default: readable at the first byte).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set_low_water(tcp: &TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes from a pointer to a live
    // `c_int` for the duration of the call; the descriptor belongs to `tcp`, which is
    // borrowed for that time.
    let result = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Elsewhere: nothing (see the module's documentation).
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_low_water(_tcp: &TcpStream, _bytes: usize) -> io::Result<()> {
    Ok(())
}

/// The socket's receive buffer, in bytes (`SO_RCVBUF`; Linux counts its bookkeeping in
/// it, so somewhat more than the data it can hold).
#[cfg(target_os = "linux")]
pub(crate) fn receive_buffer(tcp: &TcpStream) -> io::Result<usize> {
    get(tcp, libc::SO_RCVBUF).map(|value| usize::try_from(value).unwrap_or(0))
}

/// The value of a socket-level option that is an `int`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn get(tcp: &TcpStream, option: libc::c_int) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `getsockopt` writes at most `len` bytes (the size of `value`) through a
    // pointer to `value`, and the new length through a pointer to `len`; both live for
    // the duration of the call, and the descriptor belongs to `tcp`.
    let result = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match result {
        0 => Ok(value),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Elsewhere: unknown.
#[cfg(not(target_os = "linux"))]
pub(crate) fn receive_buffer(_tcp: &TcpStream) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The bytes written to the socket that the server has not acknowledged yet: those not
/// sent, and those sent and not yet in the server's receive buffer (`SIOCOUTQ`).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn unsent(tcp: &TcpStream) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` (the same request as `TIOCOUTQ`) writes one `c_int` through the
    // pointer, which points to `value`, live for the duration of the call; the descriptor
    // belongs to `tcp`, borrowed for that time.
    let result = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut value) };
    match result {
        0 => Ok(usize::try_from(value).unwrap_or(0)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Elsewhere: unknown.
#[cfg(not(target_os = "linux"))]
pub(crate) fn unsent(_tcp: &TcpStream) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn mark(tcp: &TcpStream) -> libc::c_int {
        get(tcp, libc::SO_RCVLOWAT).expect("SO_RCVLOWAT")
    }

    #[test]
    fn the_mark_is_set_and_read_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(mark(&tcp), 1);
        set_low_water(&tcp, 64 << 10).unwrap();
        assert_eq!(mark(&tcp), 64 << 10);
        set_low_water(&tcp, 1).unwrap();
        assert_eq!(mark(&tcp), 1);
        assert!(receive_buffer(&tcp).unwrap() > 0);
    }

    #[test]
    fn the_send_queue_holds_what_the_server_has_not_taken() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(false).unwrap();
        assert_eq!(unsent(&tcp).unwrap(), 0);
        // More than the server's receive buffer can take: the rest stays queued here.
        let chunk = vec![1u8; 64 << 10];
        let mut written = 0;
        while written < 16 << 20 {
            match tcp.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let queued = unsent(&tcp).unwrap();
        assert!(queued > 0 && queued <= written, "{queued} of {written}");
        // Once the server has read everything, nothing is left.
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0;
        while read < written {
            read += server.read(&mut buf).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while unsent(&tcp).unwrap() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "acknowledgements lost"
            );
            std::thread::yield_now();
        }
    }
}
