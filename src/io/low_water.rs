//! The socket's receive low-water mark (`SO_RCVLOWAT`): how many bytes must be waiting
//! before the socket reports itself readable.
//!
//! The I/O thread raises it while it is in the middle of a large frame, so that it
//! sleeps until a good part of the rest has come instead of waking for every segment;
//! see `ReadAhead::read_large` in the transport. The only `unsafe` code in the crate is
//! here: neither the standard library nor `mio` sets this option.
//!
//! Linux only. Elsewhere [`set`] does nothing and the I/O thread wakes as before.

use std::io;

use mio::net::TcpStream;

/// Sets the low-water mark to `bytes` (1 is the default: readable at the first byte).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set(tcp: &TcpStream, bytes: usize) -> io::Result<()> {
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
pub(crate) fn set(_tcp: &TcpStream, _bytes: usize) -> io::Result<()> {
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
        set(&tcp, 64 << 10).unwrap();
        assert_eq!(mark(&tcp), 64 << 10);
        set(&tcp, 1).unwrap();
        assert_eq!(mark(&tcp), 1);
        assert!(receive_buffer(&tcp).unwrap() > 0);
    }
}
