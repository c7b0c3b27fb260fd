//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer that terminates
//! the client's TCP connection sends one header with the client's real address before
//! the client's bytes. A listener with `proxy_protocol = true` requires it: a
//! connection without a valid header is closed (guessing would let any client claim
//! any address).
//!
//! Bytes are read exactly as far as the header goes, so that what follows (MQTT, or a
//! TLS handshake) is untouched.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("the connection closed before the PROXY header ended")]
    Closed,
    #[error("no PROXY protocol header (this listener requires one)")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(String),
    #[error("malformed PROXY v2 header: {0}")]
    V2(String),
}

/// Reads the header; returns the client's address, or `None` when the proxy says the
/// connection is its own (v1 `UNKNOWN`, v2 `LOCAL`, an address family other than IP):
/// the caller keeps the socket's peer address then.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // 12 bytes: shorter than any v1 header ("PROXY UNKNOWN\r\n" is 15) and the v2
    // signature's length, so nothing after the header is read.
    let mut start = [0u8; 12];
    read_exact(stream, &mut start).await?;
    if start == V2_SIGNATURE {
        return read_v2(stream).await;
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::V1("longer than 107 bytes".into()));
        }
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        line.push(byte[0]);
    }
    parse_v1(&line[..line.len() - 2])
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyHeaderError> {
    stream
        .read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| ProxyHeaderError::Closed)
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 1883` (without CRLF).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = |why: &str| ProxyHeaderError::V1(why.to_string());
    let text = std::str::from_utf8(line).map_err(|_| bad("not ASCII"))?;
    let mut parts = text.split(' ');
    let _proxy = parts.next();
    match parts.next() {
        Some("UNKNOWN") => return Ok(None),
        Some("TCP4") | Some("TCP6") => {}
        Some(other) => return Err(bad(&format!("unknown protocol {other:?}"))),
        None => return Err(bad("no protocol")),
    }
    let source = parts.next().ok_or_else(|| bad("no source address"))?;
    let _destination = parts.next().ok_or_else(|| bad("no destination address"))?;
    let port = parts.next().ok_or_else(|| bad("no source port"))?;
    let _destination_port = parts.next().ok_or_else(|| bad("no destination port"))?;
    if parts.next().is_some() {
        return Err(bad("more fields than a header has"));
    }
    let ip = source
        .parse()
        .map_err(|_| bad(&format!("source {source:?} is not an IP address")))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| bad(&format!("source port {port:?} is not a port")))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = |why: String| ProxyHeaderError::V2(why);
    let mut fixed = [0u8; 4];
    read_exact(stream, &mut fixed).await?;
    let [version_command, family, len_hi, len_lo] = fixed;
    if version_command >> 4 != 2 {
        return Err(bad(format!(
            "version {} (only 2 is defined)",
            version_command >> 4
        )));
    }
    let command = version_command & 0x0f;
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let mut body = vec![0u8; len];
    read_exact(stream, &mut body).await?;
    match command {
        // LOCAL: the proxy's own connection (a health check).
        0 => return Ok(None),
        1 => {}
        other => return Err(bad(format!("unknown command {other}"))),
    }
    let need = |n: usize| {
        if body.len() < n {
            Err(bad(format!("{} address bytes, {n} needed", body.len())))
        } else {
            Ok(())
        }
    };
    // The high nibble is the address family, the low one the transport (TCP or UDP).
    match family >> 4 {
        1 => {
            need(12)?;
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(ip.into(), port)))
        }
        2 => {
            need(36)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)))
        }
        // UNSPEC or UNIX sockets: no IP address to report.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut stream = bytes;
        let result = read_header(&mut stream).await;
        (result, stream.to_vec())
    }

    #[tokio::test]
    async fn v1_gives_the_source_and_leaves_what_follows() {
        let (addr, rest) = read(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1883\r\n\x10\x0c").await;
        assert_eq!(addr, Ok(Some("192.0.2.7:56324".parse().unwrap())));
        assert_eq!(rest, b"\x10\x0c");
        let (addr, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n").await;
        assert_eq!(addr, Ok(Some("[2001:db8::1]:4000".parse().unwrap())));
        let (addr, rest) = read(b"PROXY UNKNOWN\r\n\x10").await;
        assert_eq!((addr, rest), (Ok(None), b"\x10".to_vec()));
    }

    #[tokio::test]
    async fn v2_gives_the_source_and_leaves_what_follows() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 12]);
        header.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x07, 0x5b]);
        header.extend_from_slice(b"\x10\x0c");
        let (addr, rest) = read(&header).await;
        assert_eq!(addr, Ok(Some("192.0.2.7:56324".parse().unwrap())));
        assert_eq!(rest, b"\x10\x0c");

        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.0, Ok(None));
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        assert_eq!(
            read(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c").await.0,
            Err(ProxyHeaderError::Missing)
        );
        assert!(matches!(
            read(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n").await.0,
            Err(ProxyHeaderError::V1(_))
        ));
        assert!(matches!(
            read(&[b'P'; 200]).await.0,
            Err(ProxyHeaderError::Missing)
        ));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend_from_slice(&[b'1'; 200]);
        assert!(matches!(read(&long).await.0, Err(ProxyHeaderError::V1(_))));
        assert_eq!(
            read(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyHeaderError::Closed)
        );
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(read(&short).await.0, Err(ProxyHeaderError::V2(_))));
    }
}
